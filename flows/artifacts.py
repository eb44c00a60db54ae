"""The Prefect artifacts each stage leaves on its run: what a user checks in the UI.

Artifacts carry counts, codes, metrics and storage locations only: never patient data, and
never inbox paths (users sometimes name folders after patients).
"""

from __future__ import annotations

import json
from typing import Any

from prefect.artifacts import create_markdown_artifact, create_table_artifact

from lungcls.io.storage import Storage


def _rows(table: list[dict[str, Any]], empty: str) -> list[dict[str, Any]]:
    # Prefect renders an empty table as nothing at all; say that there is nothing instead.
    return table or [{"result": empty}]


def ingest_artifacts(summary: dict[str, Any], storage: Storage) -> None:
    lines = [
        f"# Ingest {summary['run_id']}"
        + (" (inbox unchanged since this run: nothing to do)" if summary.get("cached") else ""),
        "",
        "| archives seen | ingested | already done | rejected | new series | quarantined items |",
        "|---|---|---|---|---|---|",
        f"| {summary['archives_seen']} | {summary['archives_ingested']} | "
        f"{summary['archives_skipped']} | {summary['archives_rejected']} | "
        f"{summary['series_ingested']} | {len(summary['quarantined'])} |",
        "",
        f"Series store: `{storage.url('series')}`; ledger: `{storage.url('ledger')}`; "
        f"{summary['bytes_read'] / 1e6:.1f} MB read in {summary['seconds']:.1f} s.",
    ]
    create_markdown_artifact("\n".join(lines), key="ingest-summary", description="Ingest run")
    quarantine = [
        {
            "level": q.get("level"),
            "code": q.get("code"),
            "reason": q.get("message"),
            "series": q.get("series_id", ""),
            "record": storage.url(f"quarantine/{summary['run_id']}"),
        }
        for q in summary["quarantined"]
    ]
    create_table_artifact(
        _rows(quarantine, "nothing quarantined"),
        key="ingest-quarantine",
        description="What this ingest quarantined, with the reason",
    )


def dataset_artifacts(built: dict[str, Any], storage: Storage) -> None:
    folder = built["manifest_path"].rsplit("/", 1)[0]
    manifest = json.loads(storage.read_bytes(built["manifest_path"]))
    build = json.loads(storage.read_bytes(f"{folder}/build.json"))
    state = "built now" if built["created"] else "unchanged (no new series)"
    contracts = [
        f"| {c['name']} | {c['version']} | {c['evaluated_expectations']} | {c['rows']} | "
        f"{c['rows_rejected']} |"
        for c in manifest["contracts"].values()
    ]
    docs = storage.url(f"runs/{build['run_id']}/validation/data_docs")
    lines = [
        f"# Validation of {manifest['name']} v{manifest['version']} ({state})",
        "",
        "| contract | version | expectations | rows | rejected |",
        "|---|---|---|---|---|",
        *contracts,
        "",
        f"Quarantined at this build: {len(built['quarantined'])}; excluded: "
        + ", ".join(f"{k} {v}" for k, v in manifest["excluded"].items())
        + ".",
        "",
        f"Data Docs: `{docs}/<contract>/index.html`",
    ]
    create_markdown_artifact(
        "\n".join(lines), key="validation-summary", description="Data contracts"
    )
    table = [
        {
            "split": split,
            "negative (0)": counts["0"],
            "positive (1)": counts["1"],
            "total": counts["0"] + counts["1"],
        }
        for split, counts in manifest["counts"].items()
    ]
    create_table_artifact(
        table,
        key="dataset-version",
        description=f"{manifest['name']} v{manifest['version']}: samples by split and label "
        f"({len(manifest['shards'])} shards, parent v{manifest['parent']}, "
        f"{built['reused_shards']} shards reused); manifest {storage.url(built['manifest_path'])}",
    )


def training_artifacts(trained: dict[str, Any]) -> None:
    table = [
        {
            "epoch": int(h["epoch"]) + 1,
            "train loss": round(h["train_loss"], 4),
            "val loss": round(h["val_loss"], 4),
            "val AUC": _rounded(h["val_auc"]),
            "seconds": round(h.get("epoch_seconds", 0.0), 1),
            "best": "*" if int(h["epoch"]) == trained["best_epoch"] else "",
        }
        for h in trained["history"]
    ]
    create_table_artifact(
        _rows(table, "no epochs"),
        key="training-history",
        description=f"{trained['model_name']} v{trained['model_version']} ({trained['run_id']}): "
        f"best val AUC {trained['best_val_auc']:.3f} at epoch {trained['best_epoch'] + 1}, "
        f"{trained['seconds']:.0f} s",
    )


def evaluation_artifacts(evaluation: dict[str, Any], storage: Storage) -> None:
    report_md = storage.read_text(f"{evaluation['folder']}/report.md")
    location = storage.url(f"{evaluation['folder']}/report.html")
    create_markdown_artifact(
        f"{report_md}\n\nFull report with plots: `{location}`",
        key="evaluation-report",
        description="Evaluation report",
    )
    at_op = evaluation["metrics"]["at_operating_point"]
    table = []
    for name, value in at_op["values"].items():
        low, high = at_op["ci95"].get(name, [None, None])
        table.append(
            {
                "metric": name,
                "value": _rounded(value),  # NaN -> empty cell
                "95% CI low": _rounded(low),
                "95% CI high": _rounded(high),
            }
        )
    create_table_artifact(
        table,
        key="evaluation-metrics",
        description=f"Test split at the operating point (threshold {at_op['threshold']:.3f}, "
        "chosen on val)",
    )


def _rounded(value: float | None) -> float | None:
    return None if value is None or value != value else round(value, 4)


def promotion_artifacts(decision: dict[str, Any]) -> None:
    gates = [
        {
            "gate": g["name"],
            "passed": "pass" if g["passed"] else "FAIL",
            "value": _rounded(g["value"]),
            "limit": _rounded(g["limit"]),
            "detail": g["detail"],
        }
        for g in decision["gates"]
    ]
    create_table_artifact(
        _rows(gates, "no gates evaluated"),
        key="promotion-decision",
        description=f"{decision['model']} v{decision['candidate_version']}: "
        f"{decision['outcome']}; champion v{decision['champion_before']} -> "
        f"v{decision['champion_after']} (decision {decision['id']})",
    )
