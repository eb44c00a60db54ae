"""`report.json`: a model version measured on a dataset version, as one typed record.

    models/<name>/v<N>/evaluations/<dataset>-v<D>/report.json

The report is the evaluation's commit point (written last) and what the promotion gate, the
prediction threshold, `lungcls evaluate` and the Prefect artifacts read. Numbers a sample
cannot support (sensitivity without positives, an interval no resample defined) are None,
written as null. `headline`, `key_metrics_rows` and `key_metrics_caption` are the one
rendering of the key results that both the CLI and the Prefect artifacts show; `render`
writes the full Markdown and HTML documents.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal, Protocol

from pydantic import Field, SerializerFunctionWrapHandler, model_serializer

from lungcls.dataset.manifest import ContractSummary, DatasetRef
from lungcls.evaluate.metrics import METRIC_NAMES
from lungcls.io.artifacts import Artifact, number, rounded
from lungcls.io.records import Part, Record
from lungcls.io.storage import Storage
from lungcls.registry.records import model_dir

CONFUSION_COUNTS = ("tp", "fp", "tn", "fn")
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
    """Where the evaluation of a model version on a dataset version lives."""
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
    """`report.json`; `external` is present only for a dataset other than the model's own."""

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

    @model_serializer(mode="wrap")
    def _external_only_when_external(self, handler: SerializerFunctionWrapHandler) -> object:
        data = handler(self)
        if self.external is None:
            data.pop("external", None)
        return data

    @property
    def folder(self) -> str:
        return evaluation_dir(self.model, self.dataset)

    @property
    def scope(self) -> str:
        """What the metrics were measured on."""
        return "every sample the model did not see" if self.external else "test"

    def headline(self) -> str:
        point, model = self.operating_point, self.model
        return (
            f"model {model.name} v{model.version} on {self.dataset} {self.scope}; operating "
            f"point {point.threshold:.3f} chosen on {point.chosen_on} (val sensitivity "
            f"{number(point.val_sensitivity, 2)}, target {point.target_sensitivity:.2f})"
        )

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
