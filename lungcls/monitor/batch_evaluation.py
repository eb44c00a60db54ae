"""The champion measured on one new batch (`BatchEvaluation`), and the history of them.

    monitoring/<model>/batches/<seq>.claim                    the row's number, claimed first
    monitoring/<model>/batches/<seq>-<batch-pseudonym>.json   the row, committed last
    monitoring/<model>/history.md, history.png                derived from the rows (rewritten)

Each evaluation of a batch by a champion version is one immutable file, like a decision:
its number is claimed by an exclusive create of `<seq>.claim` (one above every number
claimed or committed, so two writers never share one and none is reused), then the row is
created exclusively. A claim without a row is a run that died between the two: a gap in
the numbers, never a half-written row. `read_batch_history` lists the rows, oldest first.

One row per batch and champion version: a writer that finds the row already committed
returns it. Two writers of the same pair at the same moment can both commit; the lower
number then counts and every reader ignores the other (`read_batch_history` and
`find_batch_evaluation` keep the first), so all readers agree without anything removed.

A row holds counts, metrics, the threshold and the batch's scores: no patient, series or
study pseudonym, no UID and no inbox folder name (the batch is named by its pseudonym).
"""

from __future__ import annotations

import re
from typing import ClassVar

from pydantic import Field

from lungcls.dataset.manifest import DatasetRef
from lungcls.errors import LungclsError
from lungcls.evaluate.report import ClassSupport
from lungcls.io.artifacts import Artifact, number
from lungcls.io.records import Part, Record
from lungcls.io.storage import Storage
from lungcls.io.versions import claim_bytes

MONITORING_DIR = "monitoring"
CLAIM_SUFFIX = ".claim"
_ROW = re.compile(r"^(\d+)-(.+)\.json$")


class MonitoringError(LungclsError):
    """A batch cannot be evaluated or its history not written; the message says why."""

    code = "monitoring"


def monitoring_dir(model: str) -> str:
    """`monitoring/<model>`: a model's batch history, its plot and its drift reports."""
    return f"{MONITORING_DIR}/{model}"


def batches_dir(model: str) -> str:
    return f"{monitoring_dir(model)}/batches"


def monitoring_drift_folder(model: str, batch: str, reference: DatasetRef) -> str:
    """Where `lungcls drift` writes a batch's report (`batch`: its pseudonym) against a
    reference version: one folder per pair, so other references never overwrite it."""
    return f"{monitoring_dir(model)}/drift/{batch}/{reference.name}-v{reference.version}"


class BatchMetric(Part):
    """One metric of the champion on a batch: the value and its patient-bootstrap 95 % CI,
    or None with `not_estimable` saying why (too few patients of a class, or no labels)."""

    value: float | None = None
    ci95: tuple[float | None, float | None] = (None, None)
    not_estimable: str | None = None

    def text(self, digits: int = 3, short: bool = False) -> str:
        """E.g. "0.912 [0.850–0.961]", or why there is no number ("not estimable" only,
        with `short`: a table cell beside one that says why)."""
        if self.value is None:
            return "not estimable" if short else self.not_estimable or "not estimable"
        low, high = self.ci95
        if low is None or high is None:
            return f"{number(self.value, digits)} (CI not estimable)"
        return f"{number(self.value, digits)} [{number(low, digits)}–{number(high, digits)}]"


class BatchCounts(Part):
    """What the batch held and what was scored. Series the champion trained or validated on
    (`excluded_seen`) and series whose patch could not be made (`not_preprocessed`) are not
    scored; a scored series without a label (`unlabelled`) is in the score distribution
    only."""

    series_in_batch: int
    excluded_seen: int
    not_preprocessed: int
    samples: int
    unlabelled: int
    patients: int
    positives: int
    negatives: int


class BatchEvaluation(Record):
    """`monitoring/<model>/batches/<seq>-<batch>.json`: the champion on one new batch, as an
    external evaluation (its own calibration and operating point, unchanged).

    `alerts` holds one sentence per alert: the ROC AUC point estimate below
    `monitoring.min_batch_auc` (the point estimate, not the CI's lower end: a small batch's
    wide interval alone raises nothing, and a batch whose AUC is not estimable raises no AUC
    alert). `scores` are the calibrated probabilities of every scored sample, ascending, and
    `labels` the label of each (None: unlabelled): the score distribution, with nothing that
    links a score to a series. `patient_scores`, ascending, are each scored patient's mean
    score: the unit the drift report compares (a patient's samples are not independent);
    empty in rows written before the field (their drift reports compare samples).
    """

    SCHEMA: ClassVar[str] = "lungcls.batch-evaluation/1"

    seq: int = 0  # the row's number in the model's history (set on commit)
    created_at: str
    batch: str  # the batch's pseudonym (`batch-…`), never its inbox folder name
    model: str
    model_version: int
    trained_on: DatasetRef
    counts: BatchCounts
    class_support: ClassSupport | None = None  # None: no labelled sample
    threshold: float
    calibration_from: str  # where the calibration and operating point were chosen
    roc_auc: BatchMetric
    sensitivity: BatchMetric
    specificity: BatchMetric
    ece: BatchMetric
    internal_test_auc: float | None  # the champion's ROC AUC on its own test split
    min_batch_auc: float
    alerts: list[str] = Field(default_factory=list)
    scores: list[float] = Field(default_factory=list)
    labels: list[int | None] = Field(default_factory=list)
    patient_scores: list[float] = Field(default_factory=list)

    @property
    def file_name(self) -> str:
        return f"{self.seq:05d}-{self.batch}.json"

    def headline(self) -> str:
        alert = f"; ALERT: {'; '.join(self.alerts)}" if self.alerts else "; no alert"
        return (
            f"batch {self.batch} scored by {self.model} v{self.model_version} "
            f"(external: its own calibration and threshold {self.threshold:.3f}): "
            f"ROC AUC {self.roc_auc.text()}{alert}"
        )

    def summary_lines(self) -> list[str]:
        """What `lungcls monitor --batch` prints."""
        c = self.counts
        lines = [
            self.headline(),
            f"  samples: {c.samples} scored of {c.series_in_batch} series in the batch "
            f"({c.excluded_seen} seen in training left out, {c.not_preprocessed} not "
            f"preprocessed, {c.unlabelled} unlabelled); patients: {c.patients}; "
            f"positives {c.positives}, negatives {c.negatives}",
            f"  sensitivity {self.sensitivity.text()}, specificity {self.specificity.text()} "
            f"at threshold {self.threshold:.3f}; ECE {self.ece.text()}",
            f"  the champion's internal test ROC AUC: {number(self.internal_test_auc)}; "
            f"alert below {self.min_batch_auc:.2f} (monitoring.min_batch_auc)",
        ]
        if self.class_support is not None and not self.class_support.estimable:
            lines.append(f"  labelled patients: {self.class_support.counts()}")
        return lines

    def table_row(self) -> dict[str, str | int | None]:
        """The row of the history table (also the Prefect table artifact's)."""
        return {
            "#": self.seq,
            "date": self.created_at[:10],
            "batch": self.batch,
            "model version": self.model_version,
            "samples": self.counts.samples,
            "ROC AUC [95% CI]": self.roc_auc.text(),  # why not estimable, in full
            "sensitivity": self.sensitivity.text(short=True),
            "specificity": self.specificity.text(short=True),
            "ECE": self.ece.text(short=True),
            "alerts": "; ".join(self.alerts) or "none",
        }

    def artifacts(self) -> list[Artifact]:
        """The row as Markdown (for the Prefect UI); the history has its own
        (`lungcls.monitor.history.history_artifacts`)."""
        text = "\n".join(f"- {line.strip()}" for line in self.summary_lines())
        return [
            Artifact(
                key="batch-evaluation",
                description=self.headline(),
                markdown=f"# The champion on batch {self.batch}\n\n{text}\n",
            )
        ]


def _rows(storage: Storage, model: str) -> list[tuple[int, str]]:
    """(seq, path) of every committed row, by number."""
    found = []
    for info in storage.list_files(batches_dir(model)):
        match = _ROW.match(info.path.rsplit("/", 1)[-1])
        if match:
            found.append((int(match.group(1)), info.path))
    return sorted(found)


def read_batch_history(storage: Storage, model: str) -> list[BatchEvaluation]:
    """Every committed batch evaluation of `model`, oldest (lowest number) first; of two
    rows of one batch and model version (a race), the first."""
    rows, seen = [], set()
    for _, path in _rows(storage, model):
        row = BatchEvaluation.load(storage, path)
        if (row.batch, row.model_version) not in seen:
            seen.add((row.batch, row.model_version))
            rows.append(row)
    return rows


def find_batch_evaluation(
    storage: Storage, model: str, batch: str, version: int
) -> BatchEvaluation | None:
    """The committed row of `batch` (its pseudonym) scored by `model` v`version`, if any
    (the first of them); reads only that batch's rows."""
    suffix = f"-{batch}.json"
    for _, path in _rows(storage, model):
        if path.endswith(suffix):
            row = BatchEvaluation.load(storage, path)
            if row.model_version == version:
                return row
    return None


def _next_number(storage: Storage, model: str) -> int:
    taken = [0]
    for info in storage.list_files(batches_dir(model)):
        head = info.path.rsplit("/", 1)[-1].split("-", 1)[0].removesuffix(CLAIM_SUFFIX)
        if head.isdigit():
            taken.append(int(head))
    return max(taken) + 1


def commit_batch_evaluation(
    storage: Storage, row: BatchEvaluation, run_id: str, attempts: int = 50
) -> BatchEvaluation:
    """Claim the next number, then create the row; returns the committed row.

    When a row of the same batch and model version is committed already, that row is
    returned and nothing is written; when one is committed at the same moment, the first
    of the two is returned (see the module docstring).
    """
    folder = batches_dir(row.model)
    claim = claim_bytes(run_id)
    for _ in range(attempts):
        existing = find_batch_evaluation(storage, row.model, row.batch, row.model_version)
        if existing is not None:
            return existing
        seq = _next_number(storage, row.model)
        if not storage.create(f"{folder}/{seq:05d}{CLAIM_SUFFIX}", claim):
            continue  # another writer claimed this number first: count again
        numbered = row.model_copy(update={"seq": seq})
        if numbered.save(storage, f"{folder}/{numbered.file_name}", exclusive=True):
            first = find_batch_evaluation(storage, row.model, row.batch, row.model_version)
            return first or numbered
    raise MonitoringError(
        f"could not commit a batch evaluation under {storage.url(folder)} in {attempts} attempts"
    )
