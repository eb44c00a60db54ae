"""The epoch loop, without Ray: one pass of training, one of validation, early stopping.

The Ray Train worker (`lungcls.train.worker`) wires Ray's dataset shards, DDP and
checkpoints around these functions; the tests run them on tensors in memory. A batch is what
Ray Data's `iter_torch_batches` yields: `{"x": float32 (N, C, ...), "label": float32 (N,)}`.

    stats = train_epoch(model, batches, optimizer, loss_fn)
    validation = validate(model, val_batches, loss_fn)
    metrics = summarise_epoch(epoch, stats, validation, learning_rate(epoch, train), resumes)
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TypedDict

import torch
from sklearn.metrics import roc_auc_score
from torch import nn

from lungcls.config import TrainSettings
from lungcls.train.augment import augment
from lungcls.train.runs import EpochMetrics

Batch = Mapping[str, torch.Tensor]
CPU = torch.device("cpu")


def learning_rate(epoch: int, train: TrainSettings) -> float:
    """Linear warmup, then cosine decay to zero over the remaining epochs."""
    if epoch < train.warmup_epochs:
        return train.learning_rate * (epoch + 1) / train.warmup_epochs
    span = max(1, train.epochs - train.warmup_epochs)
    progress = (epoch - train.warmup_epochs) / span
    return train.learning_rate * 0.5 * (1 + math.cos(math.pi * progress))


def set_learning_rate(optimizer: torch.optim.Optimizer, rate: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = rate


@dataclass(frozen=True, kw_only=True)
class StepOptions:
    """How a training step treats a batch. The defaults are a plain step: no augmentation,
    no gradient clipping, full precision, on the CPU."""

    device: torch.device = CPU
    augment_strength: float = 0.0
    quarter_turns: bool = False  # also random in-plane multiples of 90 degrees
    generator: torch.Generator | None = None  # required when augment_strength > 0
    grad_clip_norm: float | None = None
    amp: bool = False  # bf16 autocast: worth it on GPUs only


@dataclass
class EpochStats:
    """One worker's training pass: what it saw, its summed loss, and where its time went."""

    samples: int = 0
    loss_sum: float = 0.0
    data_wait_s: float = 0.0  # waiting for the next batch (input pipeline too slow)
    seconds: float = 0.0

    @property
    def mean_loss(self) -> float:
        return self.loss_sum / max(self.samples, 1)


@dataclass
class Validation:
    """One worker's validation pass: a score per sample, the labels, and the summed loss."""

    scores: list[float] = field(default_factory=list)
    labels: list[float] = field(default_factory=list)
    loss_sum: float = 0.0

    @property
    def loss(self) -> float:
        return self.loss_sum / max(len(self.labels), 1)

    @property
    def auc(self) -> float | None:
        return roc_auc(self.labels, self.scores)


def roc_auc(labels: list[float], scores: list[float]) -> float | None:
    """ROC AUC, or None when the labels hold one class only (not estimable)."""
    return float(roc_auc_score(labels, scores)) if len(set(labels)) == 2 else None


def train_step(
    model: nn.Module,
    batch: Batch,
    optimizer: torch.optim.Optimizer,
    loss_fn: nn.Module,
    options: StepOptions,
) -> float:
    """One optimiser step on a batch; returns the batch's mean loss."""
    x = batch["x"]
    if options.augment_strength > 0:
        if options.generator is None:
            raise ValueError("augmentation needs a seeded generator (StepOptions.generator)")
        x = augment(
            x, options.generator, options.augment_strength, quarter_turns=options.quarter_turns
        )
    x, y = x.to(options.device), batch["label"].to(options.device)
    with torch.autocast(options.device.type, dtype=torch.bfloat16, enabled=options.amp):
        loss = loss_fn(model(x), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if options.grad_clip_norm is not None:
        nn.utils.clip_grad_norm_(model.parameters(), options.grad_clip_norm)
    optimizer.step()
    return float(loss.detach())


def train_epoch(
    model: nn.Module,
    batches: Iterable[Batch],
    optimizer: torch.optim.Optimizer,
    loss_fn: nn.Module,
    options: StepOptions | None = None,
) -> EpochStats:
    """One pass over `batches`, timing the waits for data apart from the steps."""
    options = options or StepOptions()
    model.train()
    stats = EpochStats()
    started = time.perf_counter()
    iterator = iter(batches)
    while True:
        tick = time.perf_counter()
        batch = next(iterator, None)
        stats.data_wait_s += time.perf_counter() - tick
        if batch is None:
            break
        loss = train_step(model, batch, optimizer, loss_fn, options)
        stats.samples += len(batch["label"])
        stats.loss_sum += loss * len(batch["label"])
    stats.seconds = time.perf_counter() - started
    return stats


def validate(
    model: nn.Module,
    batches: Iterable[Batch],
    loss_fn: nn.Module,
    device: torch.device = CPU,
) -> Validation:
    """Scores (sigmoid of the logit), labels and summed loss over `batches`, in eval mode."""
    model.eval()
    result = Validation()
    with torch.no_grad():
        for batch in batches:
            logits = model(batch["x"].to(device)).float()
            result.loss_sum += float(loss_fn(logits, batch["label"].to(device))) * len(logits)
            result.scores += torch.sigmoid(logits).cpu().tolist()
            result.labels += batch["label"].tolist()
    return result


def gather(values: list[float]) -> list[float]:
    """Every rank's `values`, concatenated in rank order (DDP); alone, `values` itself."""
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized():
        return values
    gathered: list[list[float]] = [[] for _ in range(dist.get_world_size())]
    dist.all_gather_object(gathered, values)
    return [v for part in gathered for v in part]


def summarise_epoch(
    epoch: int, stats: EpochStats, validation: Validation, rate: float, resumes: int
) -> EpochMetrics:
    """The epoch over all ranks: every rank calls this (the gathers are collective) and gets
    the same scores, so all take the same early-stopping decision."""
    scores, labels = gather(validation.scores), gather(validation.labels)
    fields = [stats.loss_sum, float(stats.samples), validation.loss_sum]
    totals = gather([*fields, stats.data_wait_s, stats.seconds])
    pids = [int(p) for p in gather([float(os.getpid())])]  # which processes ran it
    width = len(fields) + 2
    loss_sum, samples, val_loss_sum = (sum(totals[i::width]) for i in range(len(fields)))
    return EpochMetrics(
        epoch=epoch,
        train_loss=loss_sum / max(samples, 1),
        val_loss=val_loss_sum / max(len(labels), 1),
        val_auc=roc_auc(labels, scores),
        samples_per_s=samples / max(stats.seconds, 1e-9),
        data_wait_fraction=sum(totals[3::width]) / max(sum(totals[4::width]), 1e-9),
        learning_rate=rate,
        epoch_seconds=stats.seconds,
        workers=len(totals) // width,
        resumes=resumes,
        worker_pids=pids,
    )


@dataclass
class EarlyStopping:
    """Stop after more than `patience` epochs without a better validation AUC (an epoch whose
    AUC is not estimable never counts as better)."""

    patience: int
    best_auc: float = -1.0
    stale: int = 0

    def update(self, val_auc: float | None) -> None:
        if val_auc is not None and val_auc > self.best_auc:
            self.best_auc, self.stale = val_auc, 0
        else:
            self.stale += 1

    @property
    def should_stop(self) -> bool:
        return self.stale > self.patience


class StatePayload(TypedDict):
    """`TrainingState` as stored in a checkpoint: plain values only."""

    epoch: int
    history: list[dict[str, object]]
    best_auc: float
    stale: int
    resumes: int


@dataclass
class TrainingState:
    """Where a run stands; saved with every checkpoint so that a restarted worker carries on
    from the epoch after the last one checkpointed."""

    stopping: EarlyStopping
    epoch: int = -1  # the last epoch done
    history: list[EpochMetrics] = field(default_factory=list)
    resumes: int = 0  # how often a worker failure or a restarted driver resumed the run

    def record(self, metrics: EpochMetrics, epochs: int) -> bool:
        """Add a finished epoch; True when training stops after it (no better AUC for too
        long, or it was the last of `epochs`)."""
        self.stopping.update(metrics.val_auc)
        self.history.append(metrics)
        self.epoch = metrics.epoch
        return self.stopping.should_stop or metrics.epoch == epochs - 1

    def to_payload(self) -> StatePayload:
        return StatePayload(
            epoch=self.epoch,
            history=[m.model_dump(mode="json") for m in self.history],
            best_auc=self.stopping.best_auc,
            stale=self.stopping.stale,
            resumes=self.resumes,
        )

    @classmethod
    def from_payload(cls, payload: StatePayload, patience: int) -> TrainingState:
        """The state saved in a checkpoint (written by this or an earlier lungcls)."""
        return cls(
            stopping=EarlyStopping(patience, payload["best_auc"], payload["stale"]),
            epoch=payload["epoch"],
            history=[EpochMetrics.model_validate(m) for m in payload["history"]],
            resumes=payload["resumes"],
        )
