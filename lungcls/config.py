"""One typed settings model for every stage.

Values come, highest priority first, from keyword overrides, environment variables
(`LUNGCLS_ROOT`, `LUNGCLS_PSEUDONYM_KEY`, nested fields as `LUNGCLS_INGEST__MAX_MEMBERS`),
a YAML file (`--config`, `LUNGCLS_CONFIG`, or `./lungcls.yaml` when present), then the
defaults below. S3 credentials never pass through here: s3fs takes them from the standard
AWS chain (env, profile, instance role).

    lungcls config            # print the resolved settings, secrets masked
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, SecretStr, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

# The settings that judge a model live in their own module; every settings class is still
# importable from here.
from lungcls.config_quality import EvaluationSettings, MonitoringSettings, PromotionSettings

CONFIG_ENV = "LUNGCLS_CONFIG"
DEFAULT_CONFIG_FILE = "lungcls.yaml"

GiB = 1024**3
MiB = 1024**2


class ConfigError(RuntimeError):
    """The configuration cannot work; the message says which setting and what to do."""


class IngestLimits(BaseModel):
    """Limits that keep hostile or broken archives (bombs, floods) from exhausting a worker."""

    max_archive_bytes: int = Field(20 * GiB, description="Largest archive accepted, as stored.")
    max_members: int = Field(100_000, description="Most files in one archive or folder.")
    max_member_bytes: int = Field(2 * GiB, description="Largest single uncompressed member.")
    max_uncompressed_bytes: int = Field(
        60 * GiB, description="Most uncompressed bytes read from one archive."
    )
    max_compression_ratio: float = Field(
        200.0, description="Uncompressed/compressed ratio above which an archive is a bomb."
    )
    ratio_check_after_bytes: int = Field(
        16 * MiB, description="Ratios are only judged past this many uncompressed bytes."
    )


class IngestSettings(BaseModel):
    inbox: str = Field("inbox", description="Folder under the root that receives batches.")
    limits: IngestLimits = IngestLimits()
    slice_position_tolerance_mm: float = Field(
        0.05, description="Largest deviation of a slice step from the series' median step."
    )


class ContractSettings(BaseModel):
    """Which contract versions apply, and the parameters their suites leave open."""

    series_metadata_version: str = Field("latest", description="e.g. 'v1'; latest = highest.")
    tensor_version: str = Field("latest", description="e.g. 'v1'; latest = highest.")
    max_slice_thickness_mm: float = 5.0
    min_pixel_spacing_mm: float = 0.2
    max_pixel_spacing_mm: float = 5.0
    min_matrix: int = Field(32, description="Fewest rows/columns a series may have.")
    max_matrix: int = 2048
    min_slices: int = Field(1, description="Fewest slices (1 admits single-slice 2D series).")
    max_slices: int = 3000
    max_rejected_share: float = Field(
        0.25, description="A build fails when contracts reject more than this share of rows."
    )


class PreprocessSettings(BaseModel):
    """Series -> fixed-shape tensor. Hashed: any change makes a new dataset version."""

    mode: Literal["3d", "2d"] = Field("3d", description="3D patches or 2D slices.")
    spacing_mm: tuple[float, float, float] = Field(
        (1.0, 1.0, 1.0),
        description="Target spacing (z, y, x); in 2D, z is the step between "
        "the slices taken as channels.",
    )
    shape: tuple[int, int, int] = Field(
        (48, 48, 48), description="Target shape (z, y, x); 2D: (slices, rows, columns)."
    )
    windows: list[tuple[float, float]] = Field(
        [(-600.0, 1500.0)], description="(center, width) HU windows, one channel each."
    )
    crop_center: Literal["nodule", "image"] = Field(
        "nodule",
        description="Where the patch is centered: the labelled nodule, else the largest lung; "
        "or the center of the image (whole slices with image-level labels).",
    )


class DatasetSettings(BaseModel):
    name: str = Field("lung-nodules", description="Dataset name under datasets/.")
    split_fractions: tuple[float, float, float] = Field(
        (0.7, 0.15, 0.15), description="train/val/test shares of patients."
    )
    shard_target_mb: float = Field(64.0, description="Target shard size before compression.")
    compression: Literal["zstd", "none"] = Field("zstd", description="Shard compression.")
    tensor_dtype: Literal["float16", "float32"] = "float16"
    require_both_classes: bool = Field(
        True, description="Fail a build in which a split that holds samples lacks a class."
    )
    batches: list[str] | None = Field(
        None, description="Build only from series of these inbox batches; None: every batch."
    )


class ModelSettings(BaseModel):
    name: str = Field("lung-nodule-cnn", description="Model name under models/.")
    width: int = Field(16, description="Channels of the first stage (doubled each stage).")
    depth: int = Field(3, description="Stages; each halves the resolution.")
    blocks_per_stage: int = 1
    dropout: float = 0.2
    test_time_flips: bool = Field(
        False,
        description="Score every input as the mean logit over all flips of its spatial axes "
        "(2D: 4 views, 3D: 8). Training's augmentation flips, so each view is one the model "
        "knows; out-of-fold scores, evaluation and serving all see the averaged network.",
    )


class TrainSettings(BaseModel):
    num_workers: int = Field(2, description="Ray Train workers (DDP ranks).")
    cpus_per_worker: float = Field(
        0.5, description="Fractional on small machines: Ray Data needs CPU too."
    )
    use_gpu: Literal["auto", "yes", "no"] = Field(
        "auto", description="auto: if the cluster has one."
    )
    batch_size: int = Field(8, description="Per worker.")
    epochs: int = 40
    learning_rate: float = 2e-3
    weight_decay: float = 1e-4
    warmup_epochs: int = 2
    grad_clip_norm: float = 1.0
    augment_strength: float = Field(1.0, description="0 = no augmentation; scales all of it.")
    augment_quarter_turns: bool = Field(
        False,
        description="Also rotate by random multiples of 90 degrees in-plane (nodule patches "
        "have no preferred direction; needs a square in-plane shape).",
    )
    class_balance: Literal["weights", "none"] = "weights"
    early_stopping_patience: int = Field(10, description="Epochs without a better val AUC.")
    select_epoch: Literal["best", "last"] = Field(
        "best",
        description="Publish the epoch with the best val AUC, or the last one (a fixed epoch "
        "count: small, noisy validation folds pick erratic epochs; see configs/lidc.yaml).",
    )
    folds: int = Field(
        5,
        ge=1,
        description="Patient-grouped folds over train+val: each fold's model stops early on "
        "its held-out patients, their out-of-fold scores choose the operating point, and the "
        "published model averages the fold models. 1: train on train, stop on val.",
    )
    seed: int = 0
    max_failures: int = Field(3, description="Worker failures survived by resuming.")
    amp: bool = Field(True, description="Mixed precision, on GPU only.")
    cache_max_mb: float = Field(
        2048,
        description="Datasets up to this size (decoded) are held in Ray's object store, and "
        "each rank's share in its worker after the first epoch (no data wait after it).",
    )


class TuneSettings(BaseModel):
    trials: int = Field(8, description="Hyperparameter trials (Ray Tune, ASHA).")
    max_epochs: int = Field(20, description="Epochs of the longest trial.")
    grace_period: int = Field(4, description="Epochs before ASHA may stop a trial.")


class RaySettings(BaseModel):
    """Where the parallel work of ingest, preprocessing and training runs."""

    executor: Literal["ray", "local"] = Field(
        "ray", description="'ray' fans work out as Ray tasks; 'local' runs it in this process."
    )
    address: str | None = Field(
        None, description="Ray cluster address; unset uses RAY_ADDRESS or starts Ray here."
    )
    num_cpus: int | None = Field(None, description="CPUs for a Ray started here; None = all.")
    dashboard: bool = Field(
        False,
        description="Start Ray's dashboard with a Ray started here (ten more processes; runs "
        "are watched in the Prefect UI). A cluster keeps its own setting.",
    )


class StorageSettings(BaseModel):
    """How overlapping runs are kept apart on the storage root."""

    lease_only: bool = Field(
        False,
        description="The store ignores conditional writes (If-None-Match): run anyway, "
        "keeping overlapping runs apart by leases alone (runs refuse such a store otherwise).",
    )
    gc_grace_hours: float = Field(
        24.0,
        ge=0,
        description="`lungcls gc` never deletes a file written less than this long ago: a run "
        "still writing (an ingest, a build, a training run) is far younger.",
    )
    gc_keep_checkpoints: int = Field(
        1,
        ge=0,
        description="Ray Train checkpoints `lungcls gc` keeps of each finished training run "
        "(the newest; its model version holds the weights). Unfinished runs keep all.",
    )
    gc_cache_days: float = Field(
        30.0,
        gt=0,
        description="Cached Prefect stage results (prefect-results/) older than this expire: "
        "`lungcls gc` deletes them, and the next run recomputes what it needs.",
    )


class Settings(BaseSettings):
    """Everything lungcls reads; the resolved copy is saved with every dataset and model."""

    model_config = SettingsConfigDict(
        env_prefix="LUNGCLS_",
        env_nested_delimiter="__",
        extra="forbid",
        validate_default=True,
    )

    root: str = Field("./lungcls-data", description="Storage root: a folder, file://, s3://.")
    s3_endpoint_url: str | None = Field(
        None, description="S3-compatible endpoint (MinIO, moto); unset = AWS."
    )
    pseudonym_key: SecretStr | None = Field(
        None, description="Key for patient/study/series pseudonyms (LUNGCLS_PSEUDONYM_KEY)."
    )
    work_dir: str = Field(
        ".lungcls-work", description="Local scratch for Ray and Prefect state (never ~ or /tmp)."
    )
    ingest: IngestSettings = IngestSettings()
    contracts: ContractSettings = ContractSettings()
    preprocess: PreprocessSettings = PreprocessSettings()
    dataset: DatasetSettings = DatasetSettings()
    model: ModelSettings = ModelSettings()
    train: TrainSettings = TrainSettings()
    tune: TuneSettings = TuneSettings()
    evaluation: EvaluationSettings = EvaluationSettings()
    promotion: PromotionSettings = PromotionSettings()
    monitoring: MonitoringSettings = MonitoringSettings()
    ray: RaySettings = RaySettings()
    storage: StorageSettings = StorageSettings()

    @field_validator("root", "work_dir")
    @classmethod
    def _absolute_local_path(cls, value: str) -> str:
        # Resolved once, where the settings are read: Ray Tune trials and Ray workers run in
        # other working directories.
        if "://" in value:
            return value
        return str(Path(value).expanduser().resolve())

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = config_file_path()
        if config_file is not None:
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=config_file))
        return tuple(sources)

    def masked(self) -> dict[str, Any]:
        """The resolved settings as plain data, secrets masked: safe to save or print."""
        data = self.model_dump(mode="json")
        if self.pseudonym_key is not None:
            data["pseudonym_key"] = "**********"
        return data

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.masked(), sort_keys=False)


def config_file_path() -> Path | None:
    """The YAML file in effect: `$LUNGCLS_CONFIG`, else `./lungcls.yaml` if it exists."""
    explicit = os.environ.get(CONFIG_ENV)
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise ConfigError(f"config file {path} (from ${CONFIG_ENV}) does not exist")
        return path
    default = Path(DEFAULT_CONFIG_FILE)
    return default if default.is_file() else None


def load_settings(config_file: str | Path | None = None, **overrides: Any) -> Settings:
    """Resolve the settings; `config_file` wins over `$LUNGCLS_CONFIG` for this call."""
    if config_file is None:
        return Settings(**overrides)
    previous = os.environ.get(CONFIG_ENV)
    os.environ[CONFIG_ENV] = str(config_file)
    try:
        return Settings(**overrides)
    finally:
        if previous is None:
            del os.environ[CONFIG_ENV]
        else:
            os.environ[CONFIG_ENV] = previous
