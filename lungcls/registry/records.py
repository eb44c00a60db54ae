"""`model.json`: what a model version is, what it was trained on, how, and how well.

The record is written last with an exclusive create (`store.publish_model`): it is the commit
point of a version. Everything downstream (evaluation, promotion, prediction) reads the
network's shape, preprocessing and training data from here, never from settings of today.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field, SerializerFunctionWrapHandler, model_serializer

from lungcls.config import ModelSettings, TrainSettings
from lungcls.dataset.manifest import DatasetRef, PreprocessInfo
from lungcls.io.records import Part, Record
from lungcls.train.runs import CrossValidation, EpochMetrics, trained_before_folds


class BestEpoch(Part):
    """The epoch whose weights were published; its val AUC is None when not estimable."""

    epoch: int
    val_auc: float | None


class TrainingEnvironment(Part):
    """Library versions and hardware of the training run, to explain differences later."""

    python: str
    torch: str
    ray: str
    platform: str
    device: str
    workers: int
    cpu_count: int | None


class TuneTrial(Part):
    """One hyperparameter trial: its sampled configuration (free-form) and result."""

    config: dict[str, Any]
    val_auc: float | None
    epochs: int


class TuneSummary(Part):
    """The hyperparameter search a tuned model came out of."""

    search: str
    space: str
    trials: list[TuneTrial]
    best_trial: str
    best_config: dict[str, Any]


class ModelRecord(Record):
    """`models/<name>/v<N>/model.json`.

    `settings` is the resolved configuration of the run, secrets masked: kept as plain data,
    since it documents the run and nothing reads it back as settings. `tune` is present only
    for a model published by a hyperparameter search, `cross_validation` only for a model
    trained with folds. `name` and `version` are set by
    `publish_model` when it claims the version number (0 until then).
    """

    SCHEMA: ClassVar[str] = "lungcls.model/1"

    created_at: str
    train_run: str
    dataset: DatasetRef
    preprocess: PreprocessInfo  # scoring new data must repeat it exactly
    tensor_shape: list[int]
    tensor_dtype: str
    model: ModelSettings
    train: TrainSettings
    best: BestEpoch
    history: list[EpochMetrics]
    environment: TrainingEnvironment
    settings: dict[str, Any]
    tune: TuneSummary | None = None
    # Present for a cross-validated model (`train.folds` > 1): the network is the average of
    # the fold models, and `oof_scores.parquet` beside it holds their out-of-fold scores.
    cross_validation: CrossValidation | None = None
    # Every file of the version with its SHA-256, set at commit (`store.publish_model`);
    # empty in records written before files were hashed (read unverified).
    files: dict[str, str] = Field(default_factory=dict)
    name: str = ""
    version: int = 0

    @classmethod
    def upgrade(cls, raw: object) -> object:
        return trained_before_folds(raw)

    @model_serializer(mode="wrap")
    def _optional_parts_only_when_present(self, handler: SerializerFunctionWrapHandler) -> Any:
        data = handler(self)
        for part in ("tune", "cross_validation", "files"):
            if not getattr(self, part):
                data.pop(part, None)
        return data

    @property
    def members(self) -> int:
        """Networks averaged by the model: one per fold, or one."""
        return len(self.cross_validation.folds) if self.cross_validation else 1

    @property
    def folder(self) -> str:
        """The version's folder under the storage root."""
        return model_dir(self.name, self.version)

    def __str__(self) -> str:
        return f"{self.name} v{self.version}"


def model_dir(name: str, version: int) -> str:
    return f"models/{name}/v{version}"
