"""The retrain pipeline's decisions, taken from storage alone.

`retrain` (the Prefect flow) runs ingest -> build -> train -> evaluate + gate, each only when
new data calls for it. What "calls for it" means lives here, so that the flows only wire and
the CLI cannot decide differently:

- cache keys: a stage's result is a function of its inputs' content (listing ETags, the
  ledger, the manifest's and model record's bytes, the settings that matter), never of a run
  id or a storage path, so a new run after a crash, on any worker, finds the work done;
- `candidate_for`: has this dataset version a model already, or does it need training?
- `train_or_resume`: finish an unfinished run from its checkpoint rather than start over;
- `decision_for`: was this candidate gated already?
- `RetrainSummary`: what a retrain run did, rendered the same in the terminal and the UI.
"""

from __future__ import annotations

import hashlib
import json
import logging

from lungcls.config import Settings
from lungcls.dataset.build import dataset_fingerprint
from lungcls.dataset.manifest import DatasetRef
from lungcls.dataset.summary import BuildSummary
from lungcls.ingest.run import inbox_fingerprint
from lungcls.ingest.summary import IngestSummary
from lungcls.io.artifacts import Artifact
from lungcls.io.records import Part
from lungcls.io.storage import Storage
from lungcls.registry.decisions import Decision, read_decisions
from lungcls.registry.store import model_dir, versions_trained_on
from lungcls.train.runs import TrainResult, resumable_run
from lungcls.train.trainer import train_model

log = logging.getLogger(__name__)


def content_key(*parts: object) -> str:
    """A cache key over JSON-able parts (order matters, dict order does not)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def ingest_key(settings: Settings, batch: str | None, retry_rejected: bool = False) -> str:
    """Ingest is a function of the inbox listing (and the ingest settings)."""
    return content_key("ingest", inbox_fingerprint(settings, batch), retry_rejected)


def dataset_key(settings: Settings) -> str:
    """A build is a function of the ledger's series, the contracts and the settings."""
    return content_key("dataset", settings.dataset.name, dataset_fingerprint(settings))


def train_key(settings: Settings, dataset: DatasetRef) -> str:
    """Training is a function of the manifest's bytes and the model and training settings."""
    storage = Storage.from_settings(settings)
    return content_key(
        "train",
        storage.sha256(dataset.manifest_path),
        settings.train.model_dump(mode="json"),
        settings.model.model_dump(mode="json"),
    )


def evaluation_key(settings: Settings, version: int) -> str:
    """An evaluation is a function of the model record's bytes and the evaluation settings."""
    storage = Storage.from_settings(settings)
    record = storage.sha256(f"{model_dir(settings.model.name, version)}/model.json")
    return content_key("evaluate", record, settings.evaluation.model_dump(mode="json"))


def candidate_for(settings: Settings, dataset: DatasetRef) -> int | None:
    """The newest model version trained on `dataset`; None when it still needs training
    (new series made a new version, or an earlier run died before publishing)."""
    storage = Storage.from_settings(settings)
    versions = versions_trained_on(storage, settings.model.name, dataset)
    return versions[-1] if versions else None


def train_or_resume(settings: Settings, dataset: DatasetRef) -> TrainResult:
    """Train a candidate on `dataset`; a run on it with the same settings that was killed
    (crash, lost node, retried task) is finished from its last checkpoint instead."""
    resume = resumable_run(Storage.from_settings(settings), settings, dataset)
    if resume:
        log.info("resuming unfinished training run %s", resume)
    return train_model(settings, dataset.name, dataset.version, resume=resume or False)


def decision_for(settings: Settings, candidate: int) -> Decision | None:
    """The latest promotion decision on `candidate`; None when it still needs gating."""
    storage = Storage.from_settings(settings)
    decisions = [
        d
        for d in read_decisions(storage, settings.model.name)
        if d.action == "promote" and d.candidate_version == candidate
    ]
    return decisions[-1] if decisions else None


class RetrainSummary(Part):
    """What one retrain run did, stage by stage (`retrain`'s result)."""

    model: str
    archives_ingested: int
    series_ingested: int
    dataset: DatasetRef
    dataset_created: bool
    trained: bool
    candidate: int | None
    gated: bool
    outcome: str
    champion: int | None
    report_url: str

    @classmethod
    def collect(
        cls,
        settings: Settings,
        ingested: IngestSummary,
        built: BuildSummary,
        trained: bool,
        decision: Decision,
        gated: bool,
    ) -> RetrainSummary:
        storage = Storage.from_settings(settings)
        return cls(
            model=settings.model.name,
            archives_ingested=ingested.archives_ingested,
            series_ingested=ingested.series_ingested,
            dataset=built.ref,
            dataset_created=built.created,
            trained=trained,
            candidate=decision.candidate_version,
            gated=gated,
            outcome=decision.outcome,
            champion=decision.champion_after,
            report_url=storage.url(f"{decision.evaluation}/report.html"),
        )

    def outcome_lines(self) -> list[str]:
        """The last lines of `lungcls run` and `lungcls demo`: what happened, where to look."""
        return [
            f"retrain: candidate v{self.candidate} {self.outcome}; champion is v{self.champion}",
            f"report: {self.report_url}",
        ]

    def artifacts(self) -> list[Artifact]:
        return [Artifact(key="retrain-summary", description="Retrain", markdown=self.markdown())]

    def markdown(self) -> str:
        """The `retrain-summary` artifact."""
        return "\n".join(
            [
                f"# Retrain: {self.model} v{self.candidate} {self.outcome}",
                "",
                "| stage | result |",
                "|---|---|",
                f"| ingest | {self.archives_ingested} archives, {self.series_ingested} new "
                "series |",
                f"| dataset | {self.dataset.name} v{self.dataset.version} "
                f"({'new' if self.dataset_created else 'unchanged'}) |",
                f"| train | {'trained' if self.trained else 'skipped (nothing new)'} |",
                f"| evaluate + gate | {'done' if self.gated else 'already decided'} |",
                f"| champion | v{self.champion} |",
                "",
                f"Report: `{self.report_url}`",
            ]
        )
