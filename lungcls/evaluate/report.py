"""`report.json`: a model version measured on a dataset version, as one typed record.

    models/<name>/v<N>/evaluations/<dataset>-v<D>/report.json

The report is the evaluation's commit point (written last) and what the promotion gate, the
prediction threshold, `lungcls evaluate` and the Prefect artifacts read. Numbers a sample
cannot support (sensitivity without positives, an interval from fewer patients of a class
than `evaluation.min_patients_per_class`) are None, written as null, and `class_support`
says which patients are missing. `headline`, `key_metrics_rows` and `key_metrics_caption`
are the one rendering of the key results that both the CLI and the Prefect artifacts show;
`render` writes the full Markdown and HTML documents.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal, Protocol

import numpy as np
from pydantic import Field, SerializerFunctionWrapHandler, model_serializer

from lungcls.config import PromotionSettings
from lungcls.dataset.manifest import ContractSummary, DatasetRef
from lungcls.evaluate.metrics import CLASS_NAMES, METRIC_CLASSES, METRIC_NAMES, patients_per_class
from lungcls.io.artifacts import Artifact, number, rounded
from lungcls.io.records import Part, Record
from lungcls.io.storage import Storage
from lungcls.registry.records import model_dir

REPORT = "report.json"
CONFUSION_COUNTS = ("tp", "fp", "tn", "fn")
# Above this spread of the folds' ROC AUCs the report says the folds disagree: the promotion
# gate's default limit, also when the gate is switched off (`promotion.max_fold_spread` null).
DEFAULT_FOLD_SPREAD_LIMIT: float = PromotionSettings.model_fields["max_fold_spread"].default
MODEL_CARD_TEXT = {
    "intended_use": "Research on lung-nodule malignancy classification from CT patches centered "
    "on a given nodule location. Not a medical device; not for diagnosis or patient care.",
    "not_intended_for": "Clinical decisions, screening programmes, finding nodules (the model "
    "scores a location it is given), populations or scanners unlike the training data.",
    "limitations": [
        "Trained and evaluated on the dataset versions named above only; performance on other "
        "sites, scanners, protocols or populations is unknown.",
        "Small validation and test splits give wide confidence intervals: read the intervals, "
        "not only the point estimates.",
        "The operating point is chosen on validation to reach the target sensitivity; the test "
        "sensitivity at that point can fall below the target.",
        "Synthetic data (phantoms) prove the pipeline, not clinical validity.",
    ],
    "ethical_considerations": "De-identified inputs (keyed pseudonyms, allow-listed "
    "attributes). False negatives delay cancer care: the operating point favours sensitivity.",
}


class NamedVersion(Protocol):
    name: str
    version: int


def evaluation_dir(model: NamedVersion, dataset: NamedVersion) -> str:
    """Where the evaluations of a model version on a dataset version live: one numbered
    folder `v<K>/` each (`io.versions`), `report.json` its commit record; lungcls 0.1 wrote
    a single evaluation into this folder itself."""
    return f"{model_dir(model.name, model.version)}/evaluations/{dataset.name}-v{dataset.version}"


class ModelInfo(Part):
    """The evaluated model version and what it was trained on."""

    name: str
    version: int
    train_run: str
    trained_on: DatasetRef


class SplitSummary(Part):
    samples: int
    positives: int
    patients: int


class Calibration(Part):
    """Platt scaling fitted on validation: p = sigmoid(slope * logit(raw score) + intercept)."""

    method: Literal["platt"]
    fitted_on: str
    slope: float
    intercept: float


class OperatingPoint(Part):
    """The decision threshold, chosen on `chosen_on` (validation), applied unchanged."""

    target_sensitivity: float
    threshold: float
    chosen_on: str
    confidence: float
    val_threshold_at_target: float
    val_sensitivity: float | None
    val_specificity: float | None


class MetricsBlock(Part):
    """Every metric at one threshold: `values` by name (confusion counts as ints) and their
    patient-bootstrap 95 % intervals, (None, None) where no resample defined the metric."""

    threshold: float
    values: dict[str, int | float | None]
    ci95: dict[str, tuple[float | None, float | None]]


class MetricsAtThresholds(Part):
    at_half: MetricsBlock = Field(alias="at_0.5")
    at_operating_point: MetricsBlock


class SubgroupRow(Part):
    attribute: str
    value: str
    n: int
    positives: int
    sensitivity: float | None
    specificity: float | None
    roc_auc: float | None


class ModelCard(Part):
    intended_use: str
    not_intended_for: str
    limitations: list[str]
    ethical_considerations: str
    data: str

    @classmethod
    def standard(cls, data: str) -> ModelCard:
        """The card of every lungcls model; `data` names what it was trained and tested on."""
        return cls.model_validate({**MODEL_CARD_TEXT, "data": data})


class ClassSupport(Part):
    """Patients of each class in the measured samples, and the fewest of each class that a
    bootstrap interval needs (`evaluation.min_patients_per_class`).

    A patient with nodules of both classes counts for both. A metric's interval is not
    estimable when a class it is measured on (`METRIC_CLASSES`) has fewer patients than
    needed; the promotion gate `test_split_too_small` rejects such a candidate.
    """

    patients_with_cancer: int
    patients_without_cancer: int
    needed_per_class: int

    @classmethod
    def of(
        cls, labels: np.ndarray, groups: Sequence[str] | np.ndarray, needed: int
    ) -> ClassSupport:
        have = patients_per_class(labels, groups)
        return cls(
            patients_with_cancer=have[1], patients_without_cancer=have[0], needed_per_class=needed
        )

    def patients(self, label: int) -> int:
        return self.patients_with_cancer if label == 1 else self.patients_without_cancer

    def missing(self, label: int) -> int:
        """How many more patients of a class (1: with cancer) the intervals need."""
        return max(0, self.needed_per_class - self.patients(label))

    @property
    def estimable(self) -> bool:
        """Whether every metric's interval is estimable."""
        return self.missing(0) == 0 and self.missing(1) == 0

    def shortfall(self, classes: Sequence[int] = (1, 0)) -> str | None:
        """E.g. "needs 4 more patients with cancer and 2 more without cancer"; None when the
        given classes have enough patients."""
        short = [
            f"{self.missing(c)} more {CLASS_NAMES[c]}"
            for c in (1, 0)  # with cancer first, whatever order `classes` lists them in
            if c in classes and self.missing(c)
        ]
        if not short:
            return None
        return "needs " + " and ".join(short).replace("more", "more patients", 1)

    def not_estimable(self, metric: str | None = None) -> str:
        """Why a number is missing, with the shortfall of the classes `metric` is measured on
        (all classes for None), e.g. "not estimable (needs 4 more patients without cancer)"."""
        why = self.shortfall(METRIC_CLASSES.get(metric, (1, 0)) if metric else (1, 0))
        return f"not estimable ({why})" if why else "not estimable"

    def counts(self) -> str:
        """E.g. "1 patient with cancer and 6 without cancer (5 of each needed)"."""
        with_cancer = self.patients_with_cancer
        return (
            f"{with_cancer} patient{'' if with_cancer == 1 else 's'} with cancer and "
            f"{self.patients_without_cancer} without cancer ({self.needed_per_class} of each "
            "needed)"
        )


class FoldScore(Part):
    """One cross-validation fold: its held-out patients and the ROC AUC on them."""

    fold: int  # 0-based
    patients: int
    positives: int  # samples with label 1 in the fold's held-out part
    negatives: int
    roc_auc: float | None  # None: not estimable (a class missing)
    best_epoch: int


class CrossValidationSummary(Part):
    """Patient-grouped k-fold cross-validation over train+val: the folds' AUCs and the AUC of
    all out-of-fold scores pooled, with its patient-bootstrap 95 % interval."""

    folds: list[FoldScore]
    oof_roc_auc: float | None  # AUC of all out-of-fold scores pooled
    oof_roc_auc_ci95: tuple[float | None, float | None]  # patient bootstrap

    @property
    def spread(self) -> float | None:
        """max - min of the estimable fold AUCs; None with fewer than two."""
        aucs = [f.roc_auc for f in self.folds if f.roc_auc is not None]
        return max(aucs) - min(aucs) if len(aucs) >= 2 else None

    def why_no_spread(self) -> str:
        """Why `spread` is None, e.g. "1 of 5 folds has an estimable ROC AUC"."""
        estimable = sum(f.roc_auc is not None for f in self.folds)
        return (
            f"{estimable} of {len(self.folds)} folds {'has' if estimable == 1 else 'have'} an "
            "estimable ROC AUC (a fold without both classes has none); a spread needs two"
        )

    def disagreement(self, limit: float | None = None) -> str | None:
        """The sentence a report shows when the spread exceeds `limit` (the promotion gate's,
        `DEFAULT_FOLD_SPREAD_LIMIT` for None); None when the folds agree well enough."""
        limit = DEFAULT_FOLD_SPREAD_LIMIT if limit is None else limit
        spread = self.spread
        if spread is None or spread <= limit:
            return None
        return (
            f"The folds disagree widely (spread {spread:.3f} > {limit:.3f}): the test numbers "
            "depend on which patients were held out."
        )


class BootstrapSettings(Part):
    rounds: int
    seed: int
    unit: Literal["patient"]
    level: float


class ExternalFacts(Part):
    """An evaluation on a dataset other than the model's own (say, another site)."""

    samples_scored: int
    excluded_seen_in_training: int
    calibration_and_operating_point_from: str


class EvaluationReport(Record):
    """`report.json`; `external` is present only for a dataset other than the model's own,
    `cross_validation` only for a model trained with folds, and `class_support` in reports
    of lungcls versions that count patients per class."""

    SCHEMA: ClassVar[str] = "lungcls.evaluation/1"

    created_at: str
    model: ModelInfo
    dataset: DatasetRef
    external: ExternalFacts | None = None
    splits: dict[str, SplitSummary]
    calibration: Calibration
    operating_point: OperatingPoint
    contracts: dict[str, ContractSummary]
    model_card: ModelCard
    metrics: MetricsAtThresholds
    subgroups: list[SubgroupRow]
    bootstrap: BootstrapSettings
    plots: list[str]
    class_support: ClassSupport | None = None
    cross_validation: CrossValidationSummary | None = None
    # The evaluation's own version under `evaluation_dir` and its files' SHA-256s (absent in
    # reports of lungcls 0.1, written straight into that folder and read unverified).
    version: int | None = None
    files: dict[str, str] = Field(default_factory=dict)

    @model_serializer(mode="wrap")
    def _optional_parts_only_when_present(self, handler: SerializerFunctionWrapHandler) -> object:
        data = handler(self)
        if isinstance(data, dict):
            for part in ("external", "class_support", "cross_validation", "version", "files"):
                if getattr(self, part) in (None, {}):
                    data.pop(part, None)
        return data

    @property
    def folder(self) -> str:
        base = evaluation_dir(self.model, self.dataset)
        return base if self.version is None else f"{base}/v{self.version}"

    @property
    def scope(self) -> str:
        """What the metrics were measured on."""
        return "every sample the model did not see" if self.external else "test"

    def headline(self, fold_spread_limit: float | None = None) -> str:
        """One line: model, data, operating point, what is not estimable and why, and the
        cross-validation spread (the folds disagree above `fold_spread_limit`)."""
        point, model = self.operating_point, self.model
        parts = [
            f"model {model.name} v{model.version} on {self.dataset} {self.scope}; operating "
            f"point {point.threshold:.3f} chosen on {point.chosen_on} (val sensitivity "
            f"{number(point.val_sensitivity, 2)}, target {point.target_sensitivity:.2f})"
        ]
        support = self.class_support
        if support is not None and not support.estimable:
            parts.append(
                f"{self.scope} has {support.counts()}: intervals {support.not_estimable()}"
            )
        cv = self.cross_validation
        if cv is not None:
            low, high = cv.oof_roc_auc_ci95
            parts.append(
                f"cross-validation: {len(cv.folds)} folds, ROC AUC spread {number(cv.spread)}, "
                f"pooled out-of-fold {number(cv.oof_roc_auc)} (95 % CI {number(low)}-"
                f"{number(high)})"
            )
            if cv.disagreement(fold_spread_limit):
                parts.append("the folds disagree widely")
        return "; ".join(parts)

    def key_metrics_caption(self) -> str:
        point = self.operating_point
        return (
            f"{self.dataset} {self.scope} at the operating point (threshold "
            f"{point.threshold:.3f}, chosen on {point.chosen_on})"
        )

    def key_metrics(self) -> list[KeyMetric]:
        """Every metric at the operating point with its 95 % CI, then the confusion counts."""
        block = self.metrics.at_operating_point
        return [
            KeyMetric(name, block.values[name], block.ci95.get(name))
            for name in [*METRIC_NAMES, *CONFUSION_COUNTS]
            if name in block.values
        ]

    def key_metrics_rows(self) -> list[dict[str, str | float | None]]:
        """`key_metrics` as table rows, numbers to 4 decimals, None when not estimable."""
        return [
            {
                "metric": m.name,
                "value": rounded(m.value),
                "95% CI low": rounded(m.ci95[0]) if m.ci95 else None,
                "95% CI high": rounded(m.ci95[1]) if m.ci95 else None,
            }
            for m in self.key_metrics()
        ]

    def artifacts(self, storage: Storage) -> list[Artifact]:
        """The Markdown report (pointing at the full HTML one) and the key metrics table."""
        report_md = storage.read_text(f"{self.folder}/report.md")
        location = storage.url(f"{self.folder}/report.html")
        markdown = f"{report_md}\n\nFull report with plots: `{location}`"
        return [
            Artifact(key="evaluation-report", description="Evaluation report", markdown=markdown),
            Artifact.of_table(
                "evaluation-metrics", self.key_metrics_caption(), self.key_metrics_rows(), "none"
            ),
        ]


@dataclass(frozen=True)
class KeyMetric:
    """One metric at the operating point; `ci95` is None for counts, which have none."""

    name: str
    value: float | None
    ci95: tuple[float | None, float | None] | None
