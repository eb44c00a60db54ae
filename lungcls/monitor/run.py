"""Monitoring of the batches an ingest run brought in, before they join a dataset version.

    summary = monitor_ingested(settings, ingest_run_id)

For every inbox batch with series that ingest run recorded, while a champion exists: the
champion scores the batch's series it never saw (`prospective.evaluate_batch`: one row of the
model's history), and the batch's drift from the champion's training data is measured
(`gather.drift_report`, with the champion's scores and penultimate-layer embeddings on
both sides: `embeddings.drift_embeddings`) and written under
`runs/<monitor run>/drift/<batch pseudonym>/`. The summary names what raised an alert: a
batch AUC below `monitoring.min_batch_auc`, or a drifted feature. Nothing here fails a run:
monitoring informs, the promotion gate decides. Batches are named by their pseudonyms only
(inbox folder names can name patients), so the summary can travel to Prefect.
"""

from __future__ import annotations

import logging
from typing import ClassVar

from pydantic import Field

from lungcls.config import Settings
from lungcls.ingest.deid import pseudonym_key
from lungcls.ingest.label_table import batch_pseudonym
from lungcls.ingest.ledger import Ledger
from lungcls.io.artifacts import Artifact
from lungcls.io.records import Part, Record
from lungcls.io.runs import new_run_id
from lungcls.io.storage import Storage
from lungcls.monitor.batch_evaluation import (
    BatchEvaluation,
    MonitoringError,
    batches_dir,
    monitoring_dir,
)
from lungcls.monitor.embeddings import drift_embeddings
from lungcls.monitor.gather import drift_report
from lungcls.monitor.history import history_artifacts
from lungcls.monitor.prospective import drift_scores, evaluate_batch
from lungcls.monitor.report import DriftReport, drift_folder, write_drift_report
from lungcls.monitor.statistics import DriftError
from lungcls.registry.aliases import read_alias
from lungcls.registry.promote import CHAMPION

log = logging.getLogger(__name__)


class MonitoredBatch(Part):
    """One batch as monitored: where its history row and drift report are (paths under the
    root; None when there is none, `note` says why), and what raised an alert."""

    batch: str  # the pseudonym
    evaluation: str | None = None
    drift: str | None = None
    alerts: list[str] = Field(default_factory=list)
    note: str = ""


class MonitoringSummary(Record):
    """What monitoring did for the batches of one ingest run."""

    SCHEMA: ClassVar[str] = "lungcls.monitoring/1"

    run_id: str
    model: str
    batches: list[MonitoredBatch] = Field(default_factory=list)
    note: str = ""  # why nothing was monitored, when nothing was

    @property
    def alerts(self) -> list[str]:
        return [f"{b.batch}: {alert}" for b in self.batches for alert in b.alerts]

    def summary_lines(self) -> list[str]:
        if not self.batches:
            return [f"monitoring: {self.note or 'no new batch'}"]
        lines = [
            f"monitoring of {len(self.batches)} new batch(es) against the {self.model} champion"
        ]
        for b in self.batches:
            state = "; ".join(b.alerts) if b.alerts else (b.note or "no alert")
            lines.append(f"  {b.batch}: {state}")
        return lines

    def artifacts(self, storage: Storage) -> list[Artifact]:
        """Each batch's history row and drift report, the model's history (plot and table),
        and, when anything raised an alert, a `monitoring-alert` artifact naming it."""
        out: list[Artifact] = []
        for b in self.batches:
            if b.evaluation:
                row = BatchEvaluation.from_json(storage.read_bytes(b.evaluation))
                out += row.artifacts()
            if b.drift:
                report = DriftReport.from_json(storage.read_bytes(f"{b.drift}/drift.json"))
                out += report.artifacts(storage.url(f"{b.drift}/drift.html"))
        if any(b.evaluation for b in self.batches):
            out += history_artifacts(storage, self.model)
        if self.alerts:
            markdown = "\n".join(f"- {alert}" for alert in self.alerts) + "\n"
            out.append(
                Artifact(key="monitoring-alert", description="Monitoring alert", markdown=markdown)
            )
        return out


def ingested_batches(ledger: Ledger, run_id: str) -> list[str]:
    """The inbox batches (folder names) in which ingest run `run_id` recorded series."""
    return sorted(
        {e.batch for e in ledger.entries if e.run_id == run_id and e.status == "ingested"}
    )


def monitor_batch(settings: Settings, storage: Storage, batch: str, run_id: str) -> MonitoredBatch:
    """The champion's row for one batch and its drift report (see the module's docstring)."""
    pseudonym = batch_pseudonym(pseudonym_key(settings, storage), batch)
    monitored = MonitoredBatch(batch=pseudonym)
    scores = embeddings = None
    try:
        row = evaluate_batch(settings, batch)
        monitored.evaluation = f"{batches_dir(row.model)}/{row.file_name}"
        monitored.alerts += row.alerts
        scores = drift_scores(settings, row)
    except MonitoringError as error:  # nothing unseen in it, or no evaluation to compare
        monitored.note = str(error)
    try:
        embeddings = drift_embeddings(settings, batch)
    except MonitoringError as error:  # no ingested series: the drift report says so too
        log.info("monitor: no embeddings of batch %s: %s", pseudonym, error)
    try:
        report = drift_report(settings, batch, scores=scores, embeddings=embeddings)
    except DriftError as error:
        monitored.note = "; ".join(filter(None, [monitored.note, str(error)]))
        return monitored
    folder = f"{drift_folder(run_id)}/{pseudonym}"
    write_drift_report(storage, report, folder)
    monitored.drift = folder
    if report.drifted:
        monitored.alerts.append(report.verdict())
    return monitored


def monitoring_record(model: str, ingest_run_id: str) -> str:
    """Where the summary of monitoring an ingest run's batches is, once it is done."""
    return f"{monitoring_dir(model)}/ingests/{ingest_run_id}.json"


def monitor_ingested(settings: Settings, ingest_run_id: str) -> MonitoringSummary:
    """Monitor every batch ingest run `ingest_run_id` brought in (see the module), once:
    the summary is saved last, and a later call (a retrain run again after a crash, or on
    an unchanged inbox) returns it without monitoring again."""
    storage = Storage.from_settings(settings)
    done = monitoring_record(settings.model.name, ingest_run_id)
    if storage.exists(done):
        return MonitoringSummary.from_json(storage.read_bytes(done), storage.url(done))
    run_id = new_run_id("monitor")
    summary = MonitoringSummary(run_id=run_id, model=settings.model.name)
    batches = ingested_batches(Ledger.load(storage), ingest_run_id)
    if not batches:
        summary.note = "no batch brought new series"
    elif not _has_champion(storage, settings.model.name):
        summary.note = "no champion yet: the first model is trained on these batches"
    else:
        summary.batches = [monitor_batch(settings, storage, b, run_id) for b in batches]
    for alert in summary.alerts:
        log.warning("monitoring alert for batch %s", alert)
    summary.save(storage, done)
    return summary


def _has_champion(storage: Storage, model: str) -> bool:
    return read_alias(storage, model, CHAMPION).version is not None
