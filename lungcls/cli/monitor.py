"""`lungcls drift | monitor`: how new batches differ from the champion's training data, and
how the champion does on them (see lungcls.monitor)."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING

from lungcls.cli.common import Commands, add_command, settings_from, show
from lungcls.config import ConfigError, Settings

if TYPE_CHECKING:
    from lungcls.io.storage import Storage
    from lungcls.monitor.report import ModelScores


def cmd_drift(args: argparse.Namespace) -> int:
    from lungcls.dataset.manifest import load_manifest
    from lungcls.io.storage import Storage
    from lungcls.monitor.batch_evaluation import monitoring_drift_folder
    from lungcls.monitor.embeddings import drift_embeddings
    from lungcls.monitor.gather import drift_report
    from lungcls.monitor.report import write_drift_report

    settings = settings_from(args)
    storage = Storage.from_settings(settings)
    if args.dataset_version is not None and not args.dataset:
        raise ConfigError("--dataset-version needs --dataset")
    dataset = None
    if args.dataset:
        dataset = load_manifest(storage, args.dataset, args.dataset_version).ref
    scores = embeddings = None
    if dataset is None:  # against the champion's training data: its view of both sides too
        scores = _champion_scores(settings, storage, args.batch)
        embeddings = drift_embeddings(settings, args.batch)
    report = drift_report(
        settings, args.batch, dataset=dataset, scores=scores, embeddings=embeddings
    )
    folder = monitoring_drift_folder(settings.model.name, report.batch, report.reference)
    urls = write_drift_report(storage, report, folder)
    if args.json:
        data = {"drifted": report.drifted, "report": json.loads(report.to_json()), "files": urls}
        print(json.dumps(data, indent=2))
        return 0
    print(f"{'DRIFTED' if report.drifted else 'no drift'}: batch {report.batch}")
    print("\n".join(report.summary_lines()))
    print(f"report: {urls['drift.html']}")
    return 0


def _champion_scores(settings: Settings, storage: Storage, batch: str) -> ModelScores | None:
    """The champion's scores on its test split and on the batch, once `lungcls monitor
    --batch` scored it (else None: the report then has no score row). No champion: the
    error says to promote one, before any work."""
    from lungcls.ingest.deid import pseudonym_key
    from lungcls.ingest.label_table import batch_pseudonym
    from lungcls.monitor.batch_evaluation import find_batch_evaluation
    from lungcls.monitor.prospective import champion_record, drift_scores

    record = champion_record(storage, settings.model.name)
    pseudonym = batch_pseudonym(pseudonym_key(settings, storage), batch)
    row = find_batch_evaluation(storage, record.name, pseudonym, record.version)
    return drift_scores(settings, row) if row is not None else None


def cmd_monitor(args: argparse.Namespace) -> int:
    from lungcls.io.storage import Storage
    from lungcls.monitor.batch_evaluation import read_batch_history
    from lungcls.monitor.history import history_lines, write_history
    from lungcls.monitor.prospective import champion_record, evaluate_batch

    settings = settings_from(args)
    storage = Storage.from_settings(settings)
    if args.batch:
        row = evaluate_batch(settings, args.batch)
        return show(row, args.json, row.summary_lines())
    name = champion_record(storage, settings.model.name).name
    rows = read_batch_history(storage, name)
    urls = write_history(storage, name) if rows else {}
    if args.json:
        print(json.dumps({"rows": [json.loads(r.to_json()) for r in rows], "files": urls}))
        return 0
    print(f"the champion of {name} on each new batch (external tests, oldest first):")
    print("\n".join("  " + line for line in history_lines(rows)))
    if urls:
        print(f"plot: {urls['history.png']}")
        print(f"table: {urls['history.md']}")
    return 0


def register(commands: Commands) -> None:
    drift = add_command(
        commands,
        "drift",
        cmd_drift,
        "compare an ingested batch with the champion's training data (or a dataset "
        "version): acquisition metadata, image statistics, the champion's penultimate-layer "
        "embeddings (against its test split) and, once `lungcls monitor --batch` scored "
        "it, the champion's scores; writes an HTML report under "
        "monitoring/<model>/drift/ and exits 0 also when the batch drifted",
    )
    drift.add_argument("--batch", required=True, help="the batch's folder under the inbox")
    drift.add_argument("--dataset", help="compare with this dataset (default: the champion's)")
    drift.add_argument(
        "--dataset-version", type=int, help="its version (default: the latest; needs --dataset)"
    )
    drift.add_argument("--json", action="store_true", help="print the report as JSON")
    monitor = add_command(
        commands,
        "monitor",
        cmd_monitor,
        "the champion on each new labelled batch, as an external test (its own calibration "
        "and threshold, nothing it trained on): with --batch, score that batch and add a "
        "row to the history; without, print the history and where its plot is",
    )
    monitor.add_argument(
        "--batch", help="score this ingested batch (its inbox folder) with the champion"
    )
    monitor.add_argument("--json", action="store_true", help="print the row or rows as JSON")
