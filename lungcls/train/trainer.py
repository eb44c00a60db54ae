"""Training: a Ray Train `TorchTrainer` (DDP) fed by Ray Data from a dataset version's shards.

    lungcls train [--dataset NAME] [--version N] [--resume]

The driver builds Ray Datasets over the train and val shards, starts N workers, and when
they finish publishes the best checkpoint (by validation AUC) as a candidate model version.
Each epoch every worker streams its share of the training shards (decoded by Ray Data,
augmented on the worker with a seeded generator), then the val shards; scores are gathered
so every rank computes the same AUC and takes the same early-stopping decision. Rank 0
reports a checkpoint every epoch to `<root>/ray-train/<run>/`, so a worker killed mid-epoch
resumes from the last epoch (FailureConfig), and a driver killed mid-run resumes with
`--resume` (same run name and storage path: Ray Train restores the run).
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from torch import nn

from lungcls.config import ModelSettings, Settings, TrainSettings
from lungcls.dataset.build import load_manifest
from lungcls.errors import LungclsError
from lungcls.io.compute import ensure_ray
from lungcls.io.runs import new_run_id
from lungcls.io.storage import Storage
from lungcls.registry.store import publish_model, serialise_model
from lungcls.train.augment import augment
from lungcls.train.models import build_model

log = logging.getLogger(__name__)

TRAIN_RUNS = "runs"
CHECKPOINT_FILE = "state.pt"


class TrainError(LungclsError):
    """Training cannot start or did not produce a model; the message says why."""


@dataclass
class TrainResult:
    run_id: str
    model_name: str
    model_version: int
    best_epoch: int
    best_val_auc: float
    epochs_run: int
    seconds: float
    history: list[dict[str, float]] = field(default_factory=list)


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


def learning_rate(epoch: int, train: TrainSettings) -> float:
    """Linear warmup, then cosine decay to zero over the remaining epochs."""
    if epoch < train.warmup_epochs:
        return train.learning_rate * (epoch + 1) / train.warmup_epochs
    span = max(1, train.epochs - train.warmup_epochs)
    progress = (epoch - train.warmup_epochs) / span
    return train.learning_rate * 0.5 * (1 + math.cos(math.pi * progress))


def _gather(values: list[float]) -> list[float]:
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized():
        return values
    gathered: list[list[float]] = [[] for _ in range(dist.get_world_size())]
    dist.all_gather_object(gathered, values)
    return [v for part in gathered for v in part]


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """The Ray Train worker function: resumable epochs of DDP training and validation."""
    import ray.train
    import ray.train.torch

    train = TrainSettings(**config["train"])
    model_settings = ModelSettings(**config["model"])
    context = ray.train.get_context()
    rank = context.get_world_rank()
    torch.set_num_threads(max(1, int(config["threads"])))
    torch.manual_seed(train.seed)
    np.random.seed(train.seed)

    model = build_model(model_settings, config["tensor_shape"], train.seed)
    state: dict[str, Any] = {
        "epoch": -1,
        "history": [],
        "best_auc": -1.0,
        "stale": 0,
        "resumes": 0,
    }
    checkpoint = ray.train.get_checkpoint()
    optimizer_state = None
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            saved = torch.load(Path(folder) / CHECKPOINT_FILE, weights_only=False)
        model.load_state_dict(saved["model"])
        optimizer_state = saved["optimizer"]
        state = saved["state"]
        state["resumes"] += 1  # a worker failed, or the driver was restarted
    model = ray.train.torch.prepare_model(model)
    device = ray.train.torch.get_device()
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=train.learning_rate, weight_decay=train.weight_decay
    )
    if optimizer_state is not None:
        optimizer.load_state_dict(optimizer_state)
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=torch.tensor(config["pos_weight"], device=device))
    use_amp = train.amp and device.type == "cuda"
    train_shard = ray.train.get_dataset_shard("train")
    val_shard = ray.train.get_dataset_shard("val")

    for epoch in range(state["epoch"] + 1, train.epochs):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(epoch, train)
        generator = torch.Generator().manual_seed(train.seed * 100_003 + epoch * 101 + rank)
        model.train()
        started = time.perf_counter()
        waiting, samples, loss_sum = 0.0, 0, 0.0
        batches = train_shard.iter_torch_batches(
            batch_size=train.batch_size,
            local_shuffle_buffer_size=config["shuffle_buffer"],
            local_shuffle_seed=train.seed + epoch,
            prefetch_batches=4,
        )
        iterator = iter(batches)
        while True:
            tick = time.perf_counter()
            batch = next(iterator, None)
            waiting += time.perf_counter() - tick
            if batch is None:
                break
            x = augment(batch["x"], generator, train.augment_strength).to(device)
            y = batch["label"].to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                loss = loss_fn(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), train.grad_clip_norm)
            optimizer.step()
            samples += len(y)
            loss_sum += float(loss) * len(y)
        train_seconds = time.perf_counter() - started

        model.eval()
        scores, labels, val_loss = [], [], 0.0
        with torch.no_grad():
            for batch in val_shard.iter_torch_batches(batch_size=train.batch_size):
                logits = model(batch["x"].to(device)).float()
                val_loss += float(loss_fn(logits, batch["label"].to(device))) * len(logits)
                scores += torch.sigmoid(logits).cpu().tolist()
                labels += batch["label"].tolist()
        scores, labels = _gather(scores), _gather(labels)
        totals = _gather([loss_sum, float(samples), val_loss, waiting, train_seconds])
        pids = [int(p) for p in _gather([float(os.getpid())])]  # which processes ran it
        world = len(totals) // 5
        loss_sum, samples_all, val_loss = (sum(totals[i::5]) for i in range(3))
        val_auc = float(roc_auc_score(labels, scores)) if len(set(labels)) == 2 else float("nan")
        improved = val_auc > state["best_auc"]
        state["best_auc"] = max(state["best_auc"], val_auc)
        state["stale"] = 0 if improved else state["stale"] + 1
        metrics = {
            "epoch": epoch,
            "train_loss": loss_sum / max(samples_all, 1),
            "val_loss": val_loss / max(len(labels), 1),
            "val_auc": val_auc,
            "samples_per_s": samples_all / max(train_seconds, 1e-9),
            "data_wait_fraction": sum(totals[3::5]) / max(sum(totals[4::5]), 1e-9),
            "learning_rate": learning_rate(epoch, train),
            "epoch_seconds": train_seconds,
            "workers": world,
            "resumes": state["resumes"],
            "worker_pids": pids,
        }
        state["history"].append(metrics)
        state["epoch"] = epoch
        stop = state["stale"] > train.early_stopping_patience or epoch == train.epochs - 1
        with tempfile.TemporaryDirectory() as folder:
            checkpoint = None
            if rank == 0:
                torch.save(
                    {
                        "model": model.module.state_dict()
                        if hasattr(model, "module")
                        else model.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "state": state,
                    },
                    Path(folder) / CHECKPOINT_FILE,
                )
                checkpoint = ray.train.Checkpoint.from_directory(folder)
            ray.train.report({**metrics, "stop": stop}, checkpoint=checkpoint)
        if rank == 0:
            # After the report: an epoch in this file has its checkpoint persisted. The driver
            # prints progress from it (see _fit_with_progress).
            history = json.dumps(state["history"]).encode()
            config["storage"].write_atomic(f"{TRAIN_RUNS}/{config['run_id']}/history.json", history)
        if stop:
            break


def _ray_storage(storage: Storage) -> tuple[Any, str]:
    filesystem, root = storage.arrow_filesystem()
    return filesystem, f"{root}/ray-train"


def _datasets(storage: Storage, manifest: dict[str, Any], train: TrainSettings) -> dict[str, Any]:
    """Ray Datasets over the train and val shards, decoded to float32.

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
    filesystem, root = storage.arrow_filesystem()
    decoded_mb = 4 * math.prod(manifest["tensor"]["shape"]) * manifest["samples"] / 2**20
    columns = ["tensor", "dtype", "shape", "label"]
    out = {}
    for split in ("train", "val"):
        paths = [f"{root}/{s['path']}" for s in manifest["shards"] if s["split"] == split]
        if not paths:
            raise TrainError(
                f"dataset {manifest['name']} v{manifest['version']} has no {split} shards"
            )
        shuffle = ray.data.FileShuffleConfig(seed=train.seed) if split == "train" else None
        dataset = ray.data.read_parquet(
            paths, filesystem=filesystem, columns=columns, shuffle=shuffle
        ).map_batches(decode_batch, batch_format="numpy")
        out[split] = dataset.materialize() if decoded_mb <= train.cache_max_mb else dataset
    return out


def make_trainer(
    settings: Settings,
    manifest: dict[str, Any],
    run_id: str,
    callbacks: list[Any] | None = None,
) -> Any:
    """The TorchTrainer for one run of `settings.train` on a dataset version."""
    import ray.train
    from ray.train.torch import TorchTrainer

    train = settings.train
    storage = Storage.from_settings(settings)
    counts = manifest["counts"]["train"]
    negatives, positives = counts.get("0", 0), counts.get("1", 0)
    if not negatives or not positives:
        raise TrainError(f"the train split needs both classes; it has {counts}")
    filesystem, storage_path = _ray_storage(storage)
    loop_config = {
        "train": train.model_dump(),
        "model": settings.model.model_dump(),
        "tensor_shape": manifest["tensor"]["shape"],
        "pos_weight": negatives / positives if train.class_balance == "weights" else 1.0,
        "threads": max(1, int(train.cpus_per_worker)),
        "shuffle_buffer": 4 * train.batch_size,
        "storage": storage,
        "run_id": run_id,
    }
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        scaling_config=ray.train.ScalingConfig(
            num_workers=train.num_workers,
            use_gpu=_use_gpu(train),
            resources_per_worker={"CPU": train.cpus_per_worker},
        ),
        run_config=ray.train.RunConfig(
            name=run_id,
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
        datasets=_datasets(storage, manifest, train),
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
    manifest: dict[str, Any],
    run_id: str,
    result: Any,
    extra: dict[str, Any] | None = None,
) -> TrainResult:
    """Publish the best checkpoint of a finished Ray Train run as a new model version."""
    if result.error is not None:
        raise TrainError(f"training run {run_id} failed: {result.error}")
    storage = Storage.from_settings(settings)
    # Best val AUC; among ties (small val sets saturate), the lowest val loss.
    best_checkpoint, best_metrics = max(
        result.best_checkpoints,
        key=lambda pair: (_finite(pair[1]["val_auc"]), -pair[1]["val_loss"]),
    )
    model = build_model(settings.model, manifest["tensor"]["shape"], settings.train.seed)
    model.load_state_dict(_load_checkpoint(best_checkpoint)["model"])
    history = _load_checkpoint(result.checkpoint)["state"]["history"]  # the latest: every epoch
    best = {"epoch": int(best_metrics["epoch"]), "val_auc": best_metrics["val_auc"]}
    record = {**model_record(settings, manifest, run_id, history, best), **(extra or {})}
    files = serialise_model(model, record["tensor_shape"])
    version = publish_model(storage, settings.model.name, files, record)
    return TrainResult(
        run_id=run_id,
        model_name=settings.model.name,
        model_version=version,
        best_epoch=int(best_metrics["epoch"]),
        best_val_auc=float(best_metrics["val_auc"]),
        epochs_run=len(history),
        seconds=0.0,
        history=history,
    )


def model_record(
    settings: Settings,
    manifest: dict[str, Any],
    run_id: str,
    history: list[dict[str, Any]],
    best: dict[str, Any],
) -> dict[str, Any]:
    """What `model.json` says of a trained model: data, preprocessing, settings, history."""
    return {
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "train_run": run_id,
        "dataset": {"name": manifest["name"], "version": manifest["version"]},
        "preprocess": manifest["preprocess"],
        "tensor_shape": manifest["tensor"]["shape"],
        "tensor_dtype": manifest["tensor"]["dtype"],
        "model": settings.model.model_dump(),
        "train": settings.train.model_dump(),
        "best": best,
        "history": history,
        "environment": _environment(_use_gpu(settings.train), settings.train.num_workers),
        "settings": settings.masked(),
    }


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
    reference = {"name": manifest["name"], "version": manifest["version"]}
    run_id, settings, reference = _run_identity(storage, settings, reference, resume)
    manifest = load_manifest(storage, reference["name"], reference["version"])
    ensure_ray(settings)
    trainer = make_trainer(settings, manifest, run_id)
    result = _fit_with_progress(trainer, storage, run_id, settings.train.epochs)
    outcome = publish_best(settings, manifest, run_id, result)
    finished = {**_read_run(storage, run_id), "status": "finished"}
    _write_run(storage, run_id, {**finished, "model_version": outcome.model_version})
    outcome.seconds = time.monotonic() - started
    return outcome


def _ordered() -> Any:
    from ray.data import ExecutionOptions

    options = ExecutionOptions()
    options.preserve_order = True
    return options


def _fit_with_progress(trainer: Any, storage: Storage, run_id: str, epochs: int) -> Any:
    """Run `trainer.fit()` and print a line per epoch as the workers report them."""
    outcome: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: outcome.update(result=trainer.fit()), daemon=True)
    thread.start()
    printed = 0
    started = time.monotonic()
    while True:
        finished = not thread.is_alive()
        path = f"{TRAIN_RUNS}/{run_id}/history.json"
        history = json.loads(storage.read_bytes(path)) if storage.exists(path) else []
        for metrics in history[printed:]:
            done = metrics["epoch"] + 1
            eta = (
                (time.monotonic() - started) / max(done - history[0]["epoch"], 1) * (epochs - done)
            )
            print(
                f"epoch {done}/{epochs}  loss {metrics['train_loss']:.4f}  "
                f"val AUC {metrics['val_auc']:.4f}  {metrics['samples_per_s']:.1f} samples/s  "
                f"data wait {metrics['data_wait_fraction']:.1%}  ETA {eta:.0f} s",
                flush=True,
            )
        printed = max(printed, len(history))
        if finished:
            return outcome["result"]
        thread.join(timeout=1.0)


def _finite(value: float) -> float:
    return value if value == value else -1.0  # NaN (one-class val split) ranks last


def unfinished_runs(storage: Storage, dataset: dict[str, Any] | None = None) -> list[str]:
    """Training runs that started and never finished (killed, crashed), newest first;
    with `dataset`, only those on that dataset version."""
    runs = []
    for info in reversed(storage.list_files(TRAIN_RUNS)):
        if info.path.endswith("/train.json"):
            run = json.loads(storage.read_bytes(info.path))
            if run.get("status") == "running" and dataset in (None, run["dataset"]):
                runs.append(run["run_id"])
    return runs


def resumable_run(storage: Storage, settings: Settings, dataset: dict[str, Any]) -> str | None:
    """The newest unfinished run on `dataset` with these very training and model settings
    (its checkpoints fit, and finishing it is what a new run would do), if any."""
    for run_id in unfinished_runs(storage, dataset):
        run = _read_run(storage, run_id)
        if run["train"] == settings.train.model_dump() and run["model"] == (
            settings.model.model_dump()
        ):
            return run_id
    return None


def _run_identity(
    storage: Storage, settings: Settings, dataset: dict[str, Any], resume: bool | str
) -> tuple[str, Settings, dict[str, Any]]:
    """A new run, or with `resume` an unfinished one: its own model, training settings and
    dataset version win, so the restored checkpoints fit."""
    if resume:
        candidates = unfinished_runs(storage)
        if resume is not True:
            candidates = [r for r in candidates if r == resume]
        if not candidates:
            which = "" if resume is True else f" {resume}"
            raise TrainError(f"no unfinished training run{which} to resume")
        run = _read_run(storage, candidates[0])
        log.info("resuming training run %s", run["run_id"])
        update = {"train": TrainSettings(**run["train"]), "model": ModelSettings(**run["model"])}
        return run["run_id"], settings.model_copy(update=update), run["dataset"]
    run_id = new_run_id("train")
    record = {
        "run_id": run_id,
        "status": "running",
        "dataset": dataset,
        "train": settings.train.model_dump(),
        "model": settings.model.model_dump(),
    }
    _write_run(storage, run_id, record)
    return run_id, settings, dataset


def _read_run(storage: Storage, run_id: str) -> dict[str, Any]:
    return json.loads(storage.read_bytes(f"{TRAIN_RUNS}/{run_id}/train.json"))


def _write_run(storage: Storage, run_id: str, record: dict[str, Any]) -> None:
    storage.write_atomic(f"{TRAIN_RUNS}/{run_id}/train.json", json.dumps(record, indent=2).encode())


def _load_checkpoint(checkpoint: Any) -> dict[str, Any]:
    with checkpoint.as_directory() as folder:
        return torch.load(Path(folder) / CHECKPOINT_FILE, weights_only=False)


def _environment(use_gpu: bool, workers: int) -> dict[str, Any]:
    import ray

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "ray": ray.__version__,
        "platform": platform.platform(),
        "device": torch.cuda.get_device_name(0) if use_gpu and torch.cuda.is_available() else "cpu",
        "workers": workers,
        "cpu_count": os.cpu_count(),
    }
