"""Training: a Ray Train `TorchTrainer` (DDP) fed by Ray Data from a dataset version's shards.

    lungcls train [--dataset NAME] [--version N] [--resume]

The driver records the run (`runs.py`), builds Ray Datasets over the train and val shards,
starts N workers (`worker.py`, which run the epoch loop of `loop.py`), prints a line per
epoch as the workers checkpoint it, and when they finish publishes the best checkpoint (by
validation AUC) as a candidate model version. Rank 0 reports a checkpoint every epoch to
`<root>/ray-train/<run>/`, so a worker killed mid-epoch resumes from the last epoch
(FailureConfig), and a driver killed mid-run resumes with `--resume` (same run name and
storage path: Ray Train restores the run).
"""

from __future__ import annotations

import logging
import math
import os
import platform
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from lungcls.config import Settings, TrainSettings
from lungcls.dataset.manifest import Manifest, load_manifest
from lungcls.dataset.shards import verify_shards
from lungcls.io.compute import ensure_ray
from lungcls.io.storage import Storage
from lungcls.registry.records import BestEpoch, ModelRecord, TrainingEnvironment
from lungcls.registry.store import publish_model, serialise_model
from lungcls.train.ensemble import for_inference
from lungcls.train.loop import TrainingState
from lungcls.train.models import build_model
from lungcls.train.runs import (
    CrossValidation,
    EpochMetrics,
    TrainError,
    TrainResult,
    finish_run,
    read_history,
    start_or_resume_run,
)
from lungcls.train.worker import CHECKPOINT_FILE as CHECKPOINT_FILE
from lungcls.train.worker import WorkerConfig, load_checkpoint, train_loop_per_worker

if TYPE_CHECKING:
    from ray.data import Dataset, ExecutionOptions
    from ray.train import Result
    from ray.train.torch import TorchTrainer

    from lungcls.registry.records import TuneSummary


def decode_batch(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Ray Data map: shard rows -> float32 tensors and labels (runs in Ray Data tasks)."""
    tensors = [
        np.frombuffer(data, dtype=str(dtype)).reshape([int(n) for n in shape])
        for data, dtype, shape in zip(batch["tensor"], batch["dtype"], batch["shape"], strict=True)
    ]
    return {
        "x": np.stack(tensors).astype(np.float32),
        "label": batch["label"].astype(np.float32),
    }


def fits_in_memory(manifest: Manifest, train: TrainSettings) -> bool:
    """Whether the dataset, decoded to float32, is small enough (`train.cache_max_mb`) to be
    held in Ray's object store for the run, and each rank's share in its worker."""
    return 4 * math.prod(manifest.tensor_shape) * manifest.samples / 2**20 <= train.cache_max_mb


def _ray_storage(storage: Storage) -> tuple[Any, str]:
    filesystem, root = storage.arrow_filesystem()
    return filesystem, f"{root}/ray-train"


@dataclass(frozen=True)
class Holdout:
    """One fold of cross-validation: its held-out patients validate, every other patient of
    the train and val splits trains (class counts of that training part)."""

    patients: frozenset[str]
    negatives: int
    positives: int


def select_patients(
    batch: dict[str, np.ndarray], patients: frozenset[str], held_out: bool
) -> dict[str, np.ndarray]:
    """Ray Data map: the rows of `patients` (held_out) or of every other patient."""
    keep = np.isin(batch["patient_id"], list(patients)) == held_out
    return {column: values[keep] for column, values in batch.items()}


def _datasets(
    storage: Storage, manifest: Manifest, train: TrainSettings, holdout: Holdout | None = None
) -> dict[str, Dataset]:
    """Ray Datasets over the train and val shards, decoded to float32; with a `holdout`,
    over its training and held-out patients of both splits.

    A dataset small enough for `train.cache_max_mb` is materialised once in the object store:
    re-reading a few files every epoch costs seconds of start-up that small data cannot hide.
    """
    import ray.data

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    # Ray 2.60's new Parquet datasource spends seconds listing a few files and reads them in
    # one task; the previous one reads them in parallel (bench/shards.py: about 3x faster).
    context.use_datasource_v2 = False
    context.execution_options.preserve_order = True
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    verify_shards(storage, [s for split in ("train", "val") for s in manifest.shards_of(split)])
    filesystem, root = storage.arrow_filesystem()
    columns = ["tensor", "dtype", "shape", "label", "patient_id"]
    out = {}
    for split in ("train", "val"):
        splits = (split,) if holdout is None else ("train", "val")
        paths = [f"{root}/{s.path}" for name in splits for s in manifest.shards_of(name)]
        if not paths:
            raise TrainError(f"dataset {manifest.ref} has no {split} shards")
        shuffle = ray.data.FileShuffleConfig(seed=train.seed) if split == "train" else None
        dataset = ray.data.read_parquet(
            paths, filesystem=filesystem, columns=columns, shuffle=shuffle
        )
        if holdout is not None:
            dataset = dataset.map_batches(
                select_patients,
                fn_kwargs={"patients": holdout.patients, "held_out": split == "val"},
                batch_format="numpy",
            )
        dataset = dataset.map_batches(decode_batch, batch_format="numpy")
        out[split] = dataset.materialize() if fits_in_memory(manifest, train) else dataset
    return out


def make_trainer(
    settings: Settings,
    manifest: Manifest,
    run_id: str,
    callbacks: list[Any] | None = None,
    holdout: Holdout | None = None,
) -> TorchTrainer:
    """The TorchTrainer for one run of `settings.train` on a dataset version (`holdout`:
    on one fold of it; `run_id` then names the fold, `<run>/fold-<k>`)."""
    import ray.train
    from ray.train.torch import TorchTrainer

    train = settings.train
    storage = Storage.from_settings(settings)
    if holdout is None:
        counts = manifest.counts["train"]
        negatives, positives = counts.get("0", 0), counts.get("1", 0)
    else:
        negatives, positives = holdout.negatives, holdout.positives
        counts = {"0": negatives, "1": positives}
    if not negatives or not positives:
        raise TrainError(f"the train split needs both classes; it has {counts}")
    filesystem, storage_path = _ray_storage(storage)
    worker = WorkerConfig(
        train=train,
        model=settings.model,
        tensor_shape=manifest.tensor_shape,
        pos_weight=negatives / positives if train.class_balance == "weights" else 1.0,
        threads=max(1, int(train.cpus_per_worker)),
        shuffle_buffer=4 * train.batch_size,
        cache_in_worker=fits_in_memory(manifest, train),
        storage=storage,
        run_id=run_id,
    )
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"worker": worker},  # a dict by Ray's API; one typed value in it
        scaling_config=ray.train.ScalingConfig(
            num_workers=train.num_workers,
            use_gpu=_use_gpu(train),
            resources_per_worker={"CPU": train.cpus_per_worker},
        ),
        run_config=ray.train.RunConfig(
            name=run_id.replace("/", "-"),  # a folder of its own under ray-train/
            storage_path=storage_path,
            storage_filesystem=filesystem,
            failure_config=ray.train.FailureConfig(max_failures=train.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=2,
                checkpoint_score_attribute="val_auc",
                checkpoint_score_order="max",
            ),
            logging_config=ray.train.LoggingConfig(log_level="WARNING"),
            callbacks=callbacks,
        ),
        datasets=_datasets(storage, manifest, train, holdout),
        # Blocks in a fixed order: with one worker and one seed, runs repeat exactly.
        dataset_config=ray.train.DataConfig(execution_options=_ordered()),
    )


def _use_gpu(train: TrainSettings) -> bool:
    import ray

    if train.use_gpu == "auto":
        if not ray.is_initialized():
            return torch.cuda.is_available()
        return ray.cluster_resources().get("GPU", 0) > 0
    return train.use_gpu == "yes"


def publish_best(
    settings: Settings,
    manifest: Manifest,
    run_id: str,
    result: Result,
    tune: TuneSummary | None = None,
) -> TrainResult:
    """Publish the best checkpoint of a finished Ray Train run as a new model version
    (`tune`: the search it came out of, recorded beside it)."""
    storage = Storage.from_settings(settings)
    model = build_model(settings.model, manifest.tensor_shape, settings.train.seed)
    weights, best, history = best_epoch(result, settings.train, run_id)
    model.load_state_dict(weights)
    record = model_record(settings, manifest, run_id, history, best, tune)
    files = serialise_model(for_inference(settings.model, model), record.tensor_shape)
    version = publish_model(
        storage, settings.model.name, files, record, settings.storage.lease_only
    )
    return TrainResult(
        run_id=run_id,
        model_name=settings.model.name,
        model_version=version,
        best_epoch=best.epoch,
        best_val_auc=best.val_auc,
        epochs_run=len(history),
        seconds=0.0,
        history=history,
    )


def best_epoch(
    result: Result, train: TrainSettings, run_id: str
) -> tuple[dict[str, torch.Tensor], BestEpoch, list[EpochMetrics]]:
    """The weights of the epoch a finished run publishes, that epoch, and the run's whole
    history. `train.select_epoch` "best": the best val AUC (among ties, which small val sets
    make common, the lowest val loss); "last": the last epoch run."""
    if result.error is not None:
        raise TrainError(f"training run {run_id} failed: {result.error}")
    latest = load_checkpoint(result.checkpoint)  # the latest has every epoch's metrics
    history = TrainingState.from_payload(latest["state"], train.early_stopping_patience).history
    if train.select_epoch == "last":
        last = history[-1]
        return latest["model"], BestEpoch(epoch=last.epoch, val_auc=last.val_auc), history
    best_checkpoint, best_metrics = max(
        result.best_checkpoints,
        key=lambda pair: (_finite(pair[1]["val_auc"]), -pair[1]["val_loss"]),
    )
    auc = best_metrics["val_auc"]
    best = BestEpoch(epoch=int(best_metrics["epoch"]), val_auc=None if auc != auc else auc)
    return load_checkpoint(best_checkpoint)["model"], best, history


def model_record(
    settings: Settings,
    manifest: Manifest,
    run_id: str,
    history: list[EpochMetrics],
    best: BestEpoch,
    tune: TuneSummary | None = None,
    cross_validation: CrossValidation | None = None,
) -> ModelRecord:
    """What `model.json` says of a trained model: data, preprocessing, settings, history
    (`publish_model` adds its name and version)."""
    return ModelRecord(
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        train_run=run_id,
        dataset=manifest.ref,
        preprocess=manifest.preprocess,
        tensor_shape=manifest.tensor.shape,
        tensor_dtype=manifest.tensor.dtype,
        model=settings.model,
        train=settings.train,
        best=best,
        history=history,
        environment=_environment(_use_gpu(settings.train), settings.train.num_workers),
        settings=settings.masked(),
        tune=tune,
        cross_validation=cross_validation,
    )


def train_model(
    settings: Settings,
    dataset: str | None = None,
    version: int | None = None,
    resume: bool | str = False,
) -> TrainResult:
    """Train on a dataset version and publish the best epoch as a new model version.

    `resume`: True continues the latest unfinished run, a run id continues that run.
    """
    started = time.monotonic()
    storage = Storage.from_settings(settings)
    manifest = load_manifest(storage, dataset or settings.dataset.name, version)
    run = start_or_resume_run(storage, settings, manifest.ref, resume)
    settings = run.settings_over(settings)
    manifest = load_manifest(storage, run.dataset.name, run.dataset.version)
    ensure_ray(settings)
    if settings.train.folds > 1:
        from lungcls.train.folds import train_folds

        outcome = train_folds(settings, manifest, run.run_id)
    else:
        trainer = make_trainer(settings, manifest, run.run_id)
        result = fit_with_progress(trainer, storage, run.run_id, settings.train.epochs)
        outcome = publish_best(settings, manifest, run.run_id, result)
    finish_run(storage, run.run_id, outcome.model_version)
    return outcome.model_copy(update={"seconds": time.monotonic() - started})


def _ordered() -> ExecutionOptions:
    from ray.data import ExecutionOptions

    options = ExecutionOptions()
    options.preserve_order = True
    return options


def fit_with_progress(
    trainer: TorchTrainer, storage: Storage, run_id: str, epochs: int, prefix: str = ""
) -> Result:
    """Run `trainer.fit()` and print a line per epoch as the workers checkpoint them."""
    outcome: dict[str, Any] = {}

    def fit() -> None:
        try:
            outcome["result"] = trainer.fit()
        except BaseException as error:  # re-raised in the caller's thread
            outcome["error"] = error

    thread = threading.Thread(target=fit, daemon=True)
    thread.start()
    printed = 0
    started = time.monotonic()
    while True:
        finished = not thread.is_alive()
        history = read_history(storage, run_id)
        for metrics in history[printed:]:
            done = metrics.epoch + 1
            eta_s = (time.monotonic() - started) / max(done - history[0].epoch, 1) * (epochs - done)
            print(prefix + metrics.progress_line(epochs, eta_s), flush=True)
        printed = max(printed, len(history))
        if finished:
            if "error" in outcome:
                raise outcome["error"]
            return outcome["result"]
        thread.join(timeout=1.0)


def _finite(value: float) -> float:
    return value if value == value else -1.0  # NaN (one-class val split) ranks last


def _environment(use_gpu: bool, workers: int) -> TrainingEnvironment:
    import ray

    return TrainingEnvironment(
        python=platform.python_version(),
        torch=torch.__version__,
        ray=ray.__version__,
        platform=platform.platform(),
        device=torch.cuda.get_device_name(0) if use_gpu and torch.cuda.is_available() else "cpu",
        workers=workers,
        cpu_count=os.cpu_count(),
    )
