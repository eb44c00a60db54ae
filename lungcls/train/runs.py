"""Training runs on the storage root: `runs/<run>/train.json`, `history.json`, and resume.

`train.json` (`TrainRun`) is written before any worker starts: which dataset version, which
training and model settings, and whether the run finished (then with the model version it
published). Rank 0 rewrites `history.json` (`History`) after each checkpointed epoch, so it
is both the driver's progress feed and the record of what a killed run had done. A run that
never finished can be resumed: its own settings and dataset version win, so that the
restored checkpoints fit.

    run = start_or_resume_run(storage, settings, manifest.ref, resume=False)
    read_history(storage, run.run_id)          # the epochs done so far
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar, Literal

from pydantic import Field, SerializerFunctionWrapHandler, model_serializer

from lungcls.config import ModelSettings, Settings, TrainSettings
from lungcls.dataset.manifest import DatasetRef
from lungcls.errors import LungclsError
from lungcls.io.artifacts import Artifact, number, rounded
from lungcls.io.records import Part, Record
from lungcls.io.runs import new_run_id
from lungcls.io.storage import Storage

log = logging.getLogger(__name__)

TRAIN_RUNS = "runs"

# A row of the training-history table: column name -> value (None: not estimable).
Row = dict[str, int | float | str | None]


class TrainError(LungclsError):
    """Training cannot start or did not produce a model; the message says why."""


class EpochMetrics(Part):
    """One epoch of a run, over all workers. Losses and AUC are None when not estimable
    (one class in the val split, or a diverged loss)."""

    epoch: int  # from 0
    train_loss: float | None
    val_loss: float | None
    val_auc: float | None
    samples_per_s: float
    data_wait_fraction: float  # of the training time spent waiting for the next batch
    learning_rate: float
    epoch_seconds: float  # the training pass, without validation
    workers: int
    resumes: int  # resumes of the run before this epoch ran
    worker_pids: list[int]  # the processes that ran it, in rank order

    def progress_line(self, epochs: int, eta_s: float) -> str:
        """The line `lungcls train` prints as each epoch is checkpointed."""
        return (
            f"epoch {self.epoch + 1}/{epochs}  loss {number(self.train_loss, 4)}  "
            f"val AUC {number(self.val_auc, 4)}  {self.samples_per_s:.1f} samples/s  "
            f"data wait {self.data_wait_fraction:.1%}  ETA {eta_s:.0f} s"
        )


class History(Record):
    """`runs/<run>/history.json`: the epochs of a run so far, in order."""

    SCHEMA: ClassVar[str] = "lungcls.train-history/1"

    epochs: list[EpochMetrics]

    @classmethod
    def upgrade(cls, raw: object) -> object:
        """lungcls 0.1.0 wrote a bare JSON list of epochs, without a tag."""
        return {"schema": cls.SCHEMA, "epochs": raw} if isinstance(raw, list) else raw


def trained_before_folds(raw: object) -> object:
    """A record's `train` settings from before cross-validation existed: they trained one
    model on the train split and stopped on val, which is `folds: 1` (the default now is 5)."""
    if isinstance(raw, dict) and isinstance(raw.get("train"), dict):
        raw = {**raw, "train": {"folds": 1, **raw["train"]}}
    return raw


def history_path(run_id: str) -> str:
    return f"{TRAIN_RUNS}/{run_id}/history.json"


def read_history(storage: Storage, run_id: str) -> list[EpochMetrics]:
    """The epochs of a run checkpointed so far (none before the first)."""
    path = history_path(run_id)
    return History.load(storage, path).epochs if storage.exists(path) else []


def write_history(storage: Storage, run_id: str, epochs: list[EpochMetrics]) -> None:
    History(epochs=epochs).save(storage, history_path(run_id))


class TrainRun(Record):
    """`runs/<run>/train.json`: one training run, from its start to the version it published."""

    SCHEMA: ClassVar[str] = "lungcls.train-run/1"
    LEGACY_UNTAGGED: ClassVar[bool] = True  # lungcls 0.1.0 wrote it without a tag

    run_id: str
    status: Literal["running", "finished"]
    dataset: DatasetRef
    train: TrainSettings
    model: ModelSettings
    model_version: int | None = None  # once finished

    @model_serializer(mode="wrap")
    def _version_once_finished(self, handler: SerializerFunctionWrapHandler) -> Any:
        data = handler(self)
        if self.model_version is None:  # as 0.1.0 wrote it: no key until there is a version
            data.pop("model_version", None)
        return data

    @classmethod
    def upgrade(cls, raw: object) -> object:
        return trained_before_folds(raw)

    def fits(self, settings: Settings) -> bool:
        """Whether the run's checkpoints fit `settings` (same training and model settings)."""
        return (
            self.train.model_dump() == settings.train.model_dump()
            and self.model.model_dump() == settings.model.model_dump()
        )

    def settings_over(self, settings: Settings) -> Settings:
        """`settings` with this run's training and model settings (what resuming it uses)."""
        return settings.model_copy(update={"train": self.train, "model": self.model})


def run_path(run_id: str) -> str:
    return f"{TRAIN_RUNS}/{run_id}/train.json"


def load_run(storage: Storage, run_id: str) -> TrainRun:
    return TrainRun.load(storage, run_path(run_id))


def unfinished_runs(storage: Storage, dataset: DatasetRef | None = None) -> list[str]:
    """Training runs that started and never finished (killed, crashed), newest first;
    with `dataset`, only those on that dataset version."""
    runs = []
    for info in reversed(storage.list_files(TRAIN_RUNS)):
        if info.path.endswith("/train.json"):
            run = TrainRun.load(storage, info.path)
            if run.status == "running" and dataset in (None, run.dataset):
                runs.append(run.run_id)
    return runs


def resumable_run(storage: Storage, settings: Settings, dataset: DatasetRef) -> str | None:
    """The newest unfinished run on `dataset` with these very training and model settings
    (its checkpoints fit, and finishing it is what a new run would do), if any."""
    for run_id in unfinished_runs(storage, dataset):
        if load_run(storage, run_id).fits(settings):
            return run_id
    return None


def start_or_resume_run(
    storage: Storage, settings: Settings, dataset: DatasetRef, resume: bool | str
) -> TrainRun:
    """A new run on `dataset` (recorded before it starts), or with `resume` an unfinished
    one: True takes the newest, a run id that run. A resumed run keeps its own settings and
    dataset version (`TrainRun.settings_over`), so the restored checkpoints fit."""
    if not resume:
        run = TrainRun(
            run_id=new_run_id("train"),
            status="running",
            dataset=dataset,
            train=settings.train.model_copy(),
            model=settings.model.model_copy(),
        )
        run.save(storage, run_path(run.run_id))
        return run
    candidates = unfinished_runs(storage)
    if resume is not True:
        candidates = [r for r in candidates if r == resume]
    if not candidates:
        which = "" if resume is True else f" {resume}"
        raise TrainError(f"no unfinished training run{which} to resume")
    run = load_run(storage, candidates[0])
    log.info("resuming training run %s", run.run_id)
    return run


def finish_run(storage: Storage, run_id: str, model_version: int) -> None:
    run = load_run(storage, run_id)
    finished = run.model_copy(update={"status": "finished", "model_version": model_version})
    finished.save(storage, run_path(run_id))


class FoldResult(Record):
    """`runs/<run>/folds/<k>.json`: one fold of a cross-validated run, written once its
    weights and out-of-fold scores are stored (a resumed run skips the folds that have one).
    Counts are of the fold's held-out part; `val_auc` is that part's AUC at `best_epoch`
    (None: not estimable)."""

    SCHEMA: ClassVar[str] = "lungcls.train-fold/1"

    fold: int  # from 0
    patients: int
    positives: int
    negatives: int
    best_epoch: int
    epochs_run: int
    val_auc: float | None
    history: list[EpochMetrics]
    # The fold's weights and scores with their SHA-256 (empty: recorded before files were
    # hashed), verified when the folds are published.
    files: dict[str, str] = Field(default_factory=dict)


class CrossValidation(Part):
    """The folds of a cross-validated model, and the AUC of their out-of-fold scores pooled
    (`oof_scores.parquet` beside the model)."""

    folds: list[FoldResult]
    oof_auc: float | None

    @property
    def spread(self) -> float | None:
        """Highest minus lowest fold AUC (None: fewer than two folds estimable)."""
        aucs = [f.val_auc for f in self.folds if f.val_auc is not None]
        return max(aucs) - min(aucs) if len(aucs) >= 2 else None


class TrainResult(Record):
    """What a training run (or a search, through its best trial) produced: the model version
    it published and the history behind it. `lungcls train` prints `summary_lines()`, the
    `train` flow's artifact shows `history_rows()`: one rendering for both."""

    SCHEMA: ClassVar[str] = "lungcls.train-result/1"
    # Prefect cached task results of lungcls 0.1.0 without a tag: they read as version 1.
    LEGACY_UNTAGGED: ClassVar[bool] = True

    run_id: str
    model_name: str
    model_version: int
    best_epoch: int
    best_val_auc: float | None
    epochs_run: int
    seconds: float
    history: list[EpochMetrics]
    cross_validation: CrossValidation | None = None

    def headline(self) -> str:
        if self.cross_validation is not None:
            cv = self.cross_validation
            return (
                f"{self.run_id}: model {self.model_name} v{self.model_version} (candidate), "
                f"{len(cv.folds)} folds, out-of-fold AUC {number(cv.oof_auc, 4)} (folds "
                f"{' '.join(number(f.val_auc, 3) for f in cv.folds)}), {self.seconds:.0f} s"
            )
        return (
            f"{self.run_id}: model {self.model_name} v{self.model_version} (candidate), best "
            f"val AUC {number(self.best_val_auc, 4)} at epoch {self.best_epoch + 1} of "
            f"{self.epochs_run}, {self.seconds:.0f} s"
        )

    def history_rows(self) -> list[Row]:
        """A row per epoch (and fold); the published ones are marked best."""
        if self.cross_validation is None:
            return [_epoch_row(e, self.best_epoch) for e in self.history]
        return [
            {"fold": f.fold + 1, **_epoch_row(e, f.best_epoch)}
            for f in self.cross_validation.folds
            for e in f.history
        ]

    def summary_lines(self) -> list[str]:
        """The headline, then the history as a text table."""
        return [self.headline(), *text_table(self.history_rows())]

    def artifacts(self) -> list[Artifact]:
        """The epochs of the run, for the Prefect UI."""
        return [
            Artifact.of_table("training-history", self.headline(), self.history_rows(), "no epochs")
        ]


def _epoch_row(e: EpochMetrics, best_epoch: int) -> Row:
    return {
        "epoch": e.epoch + 1,
        "train loss": rounded(e.train_loss),
        "val loss": rounded(e.val_loss),
        "val AUC": rounded(e.val_auc),
        "seconds": round(e.epoch_seconds, 1),
        "best": "*" if e.epoch == best_epoch else "",
    }


def text_table(rows: list[Row]) -> list[str]:
    """`rows` as aligned text columns under a header (None shows as `-`)."""
    if not rows:
        return []
    columns = list(rows[0])
    cells = [columns, *[["-" if r[c] is None else str(r[c]) for c in columns] for r in rows]]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    return [
        "  ".join(v.rjust(w) for v, w in zip(line, widths, strict=True)).rstrip() for line in cells
    ]
