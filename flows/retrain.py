"""Flow `retrain`: the whole pipeline, doing only what new data calls for.

ingest -> build_dataset -> train -> evaluate_and_promote, each a subflow. Training runs when
the current dataset version has no model yet (new series made a new version, or an earlier
run died before finishing), or with `force`; gating runs when the candidate has no decision
yet. Everything finished by an earlier run comes back from the cache.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from flows.build_dataset import build_dataset_flow
from flows.evaluate_and_promote import evaluate_and_promote_flow
from flows.ingest import ingest_flow
from flows.parameters import (
    EvaluateParameters,
    IngestParameters,
    RetrainParameters,
    RunParameters,
    TrainParameters,
)
from flows.train import train_flow
from lungcls.io.storage import Storage
from lungcls.registry.store import read_decisions, versions_trained_on


@flow(name="retrain", log_prints=True)
def retrain(params: RetrainParameters = RetrainParameters()) -> dict[str, Any]:
    """Ingest new scan batches, build the next dataset version, train a candidate on it,
    evaluate it and promote it if it passes the gates. Skips what has nothing new."""
    logger = get_run_logger()
    where = RunParameters(config_file=params.config_file, root=params.root)
    settings = where.settings()
    storage = Storage.from_settings(settings)
    model = settings.model.name

    ingested = ingest_flow(IngestParameters(**where.model_dump(), batch=params.batch))
    built = build_dataset_flow(where)
    dataset = {"name": built["name"], "version": built["version"]}

    trained_before = versions_trained_on(storage, model, dataset)
    trained: dict[str, Any] | None = None
    if params.force or not trained_before:
        train_parameters = TrainParameters(
            **where.model_dump(), dataset_version=built["version"], force=params.force
        )
        trained = train_flow(train_parameters)
        candidate = trained["model_version"]
    else:
        candidate = trained_before[-1]
        logger.info(
            "no new series: %s v%d already has model v%d; training skipped (force=true trains)",
            dataset["name"],
            dataset["version"],
            candidate,
        )

    decisions = [
        d
        for d in read_decisions(storage, model)
        if d["action"] == "promote" and d["candidate_version"] == candidate
    ]
    gated: dict[str, Any] | None = None
    if params.force or not decisions:
        gated = evaluate_and_promote_flow(
            EvaluateParameters(**where.model_dump(), model_version=str(candidate))
        )
        decision = gated["decision"]
    else:
        decision = decisions[-1]
        logger.info("model v%d was already gated: %s", candidate, decision["outcome"])

    summary = {
        "ingest": {k: ingested[k] for k in ("run_id", "archives_ingested", "series_ingested")},
        "dataset": {**dataset, "created": built["created"]},
        "trained": trained is not None,
        "candidate": candidate,
        "gated": gated is not None,
        "outcome": decision["outcome"],
        "champion": decision["champion_after"],
        "report": storage.url(f"{decision['evaluation']}/report.html"),
    }
    _summary_artifact(summary, model)
    logger.info(
        "retrain: model %s v%d %s; champion is v%s; report at %s",
        model,
        candidate,
        decision["outcome"],
        decision["champion_after"],
        summary["report"],
    )
    return summary


def _summary_artifact(summary: dict[str, Any], model: str) -> None:
    dataset = summary["dataset"]
    lines = [
        f"# Retrain: {model} v{summary['candidate']} {summary['outcome']}",
        "",
        "| stage | result |",
        "|---|---|",
        f"| ingest | {summary['ingest']['archives_ingested']} archives, "
        f"{summary['ingest']['series_ingested']} new series |",
        f"| dataset | {dataset['name']} v{dataset['version']} "
        f"({'new' if dataset['created'] else 'unchanged'}) |",
        f"| train | {'trained' if summary['trained'] else 'skipped (nothing new)'} |",
        f"| evaluate + gate | {'done' if summary['gated'] else 'already decided'} |",
        f"| champion | v{summary['champion']} |",
        "",
        f"Report: `{summary['report']}`",
    ]
    create_markdown_artifact("\n".join(lines), key="retrain-summary", description="Retrain run")
