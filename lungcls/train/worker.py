"""The Ray Train worker: the epoch loop of `lungcls.train.loop`, wired to Ray.

Each rank restores the last checkpoint (if any), then per epoch streams its share of the
train shards (augmented with a generator seeded by seed, epoch and rank; a small dataset's
share is kept in the worker after the first epoch, `rank_cache`), validates on its share of
the val shards, and gathers the scores so every rank computes the same AUC and
takes the same early-stopping decision. Rank 0 reports a checkpoint every epoch and, after
the report, rewrites `runs/<run>/history.json`: an epoch in that file is checkpointed.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict

import numpy as np
import torch
from torch import nn

from lungcls.config import ModelSettings, TrainSettings
from lungcls.io.storage import Storage
from lungcls.train.loop import (
    EarlyStopping,
    StatePayload,
    StepOptions,
    TrainingState,
    learning_rate,
    set_learning_rate,
    summarise_epoch,
    train_epoch,
    validate,
)
from lungcls.train.models import build_model
from lungcls.train.rank_cache import RankCache
from lungcls.train.runs import EpochMetrics, write_history

CHECKPOINT_FILE = "state.pt"
PREFETCH_BATCHES = 4


@dataclass(frozen=True)
class WorkerConfig:
    """Everything a worker needs, fixed for the run (pickled to every worker by Ray)."""

    train: TrainSettings
    model: ModelSettings
    tensor_shape: list[int]
    pos_weight: float  # negatives / positives with class_balance "weights", else 1
    threads: int  # torch threads per worker
    shuffle_buffer: int  # rows in Ray Data's local shuffle buffer
    cache_in_worker: bool  # keep each rank's rows after its first pass (`RankCache`)
    storage: Storage
    run_id: str


class CheckpointPayload(TypedDict):
    """`state.pt` in every checkpoint: weights, optimiser and `TrainingState.to_payload()`."""

    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]  # torch's optimizer state_dict: its own nested layout
    state: StatePayload


def save_checkpoint(
    folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer, state: TrainingState
) -> None:
    network = model.module if hasattr(model, "module") else model  # unwrap DDP
    payload = CheckpointPayload(
        model=network.state_dict(), optimizer=optimizer.state_dict(), state=state.to_payload()
    )
    torch.save(payload, folder / CHECKPOINT_FILE)


def load_checkpoint(checkpoint: Any) -> CheckpointPayload:
    """The payload of a `ray.train.Checkpoint` (typed `Any`: Ray is imported lazily)."""
    with checkpoint.as_directory() as folder:
        # weights_only: a checkpoint holds tensors and plain values only, and whoever can
        # write to the bucket must not run code on the workers (which hold the key).
        return torch.load(Path(folder) / CHECKPOINT_FILE, weights_only=True)


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """The Ray Train worker function: resumable epochs of DDP training and validation.

    Ray Train hands each worker its `train_loop_config` as a dict (Ray's API): it holds one
    typed `WorkerConfig` under "worker"."""
    import ray.train

    job: WorkerConfig = config["worker"]
    torch.set_num_threads(max(1, job.threads))
    torch.manual_seed(job.train.seed)
    np.random.seed(job.train.seed)
    worker = _Worker.start(job, ray.train.get_context().get_world_rank())
    for epoch in range(worker.state.epoch + 1, job.train.epochs):
        metrics = worker.run_epoch(epoch)
        stop = worker.state.record(metrics, job.train.epochs)
        worker.report(metrics, stop)
        if stop:
            break


@dataclass
class _Worker:
    """One rank's model, optimiser, data shards and state, for the length of a run."""

    job: WorkerConfig
    rank: int
    model: nn.Module
    optimizer: torch.optim.Optimizer
    loss_fn: nn.Module
    device: torch.device
    state: TrainingState
    shards: dict[str, Any]  # split -> Ray DataIterator
    cache: RankCache

    @classmethod
    def start(cls, job: WorkerConfig, rank: int) -> _Worker:
        """Build the model, restore the last checkpoint if the run has one, wrap for DDP."""
        import ray.train
        import ray.train.torch

        model = build_model(job.model, job.tensor_shape, job.train.seed)
        state = TrainingState(EarlyStopping(job.train.early_stopping_patience))
        checkpoint = ray.train.get_checkpoint()
        saved = load_checkpoint(checkpoint) if checkpoint is not None else None
        if saved is not None:
            model.load_state_dict(saved["model"])
            state = TrainingState.from_payload(saved["state"], job.train.early_stopping_patience)
            state.resumes += 1  # a worker failed, or the driver was restarted
        model = ray.train.torch.prepare_model(model)
        device = ray.train.torch.get_device()
        optimizer = torch.optim.AdamW(
            model.parameters(), lr=job.train.learning_rate, weight_decay=job.train.weight_decay
        )
        if saved is not None:
            optimizer.load_state_dict(saved["optimizer"])
        loss_fn = nn.BCEWithLogitsLoss(pos_weight=torch.tensor(job.pos_weight, device=device))
        shards = {split: ray.train.get_dataset_shard(split) for split in ("train", "val")}
        cache = RankCache(job.cache_in_worker)
        return cls(job, rank, model, optimizer, loss_fn, device, state, shards, cache)

    def run_epoch(self, epoch: int) -> EpochMetrics:
        """Train on this rank's share of the train split, validate, gather over all ranks."""
        train = self.job.train
        rate = learning_rate(epoch, train)
        set_learning_rate(self.optimizer, rate)
        seed = train.seed * 100_003 + epoch * 101 + self.rank
        options = StepOptions(
            device=self.device,
            augment_strength=train.augment_strength,
            quarter_turns=train.augment_quarter_turns,
            generator=torch.Generator().manual_seed(seed),
            grad_clip_norm=train.grad_clip_norm,
            amp=train.amp and self.device.type == "cuda",
        )
        batches = self.cache.batches(
            "train",
            lambda: self.shards["train"].iter_torch_batches(
                batch_size=train.batch_size,
                local_shuffle_buffer_size=self.job.shuffle_buffer,
                local_shuffle_seed=train.seed + epoch,
                prefetch_batches=PREFETCH_BATCHES,
            ),
            train.batch_size,
            shuffle_seed=train.seed + epoch,
        )
        stats = train_epoch(self.model, batches, self.optimizer, self.loss_fn, options)
        val_batches = self.cache.batches(
            "val",
            lambda: self.shards["val"].iter_torch_batches(batch_size=train.batch_size),
            train.batch_size,
        )
        validation = validate(self.model, val_batches, self.loss_fn, self.device)
        return summarise_epoch(epoch, stats, validation, rate, self.state.resumes)

    def report(self, metrics: EpochMetrics, stop: bool) -> None:
        """Report the epoch to Ray Train, with a checkpoint from rank 0; then (rank 0) the
        history, which the driver prints progress from."""
        import ray.train

        # Ray ranks checkpoints by val_auc and Tune's ASHA compares it: NaN, not None, sorts.
        reported = {k: math.nan if v is None else v for k, v in metrics.model_dump().items()}
        with tempfile.TemporaryDirectory() as folder:
            checkpoint = None
            if self.rank == 0:
                save_checkpoint(Path(folder), self.model, self.optimizer, self.state)
                checkpoint = ray.train.Checkpoint.from_directory(folder)
            ray.train.report({**reported, "stop": stop}, checkpoint=checkpoint)
        if self.rank == 0:
            write_history(self.job.storage, self.job.run_id, self.state.history)
