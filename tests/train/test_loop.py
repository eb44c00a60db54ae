"""The epoch loop without Ray: learning on separable data, repeatable augmentation, the
per-epoch summary, early stopping and the checkpointed state."""

from __future__ import annotations

import itertools
import math
import os

import pytest
import torch
from torch import nn

from lungcls.config import ModelSettings, TrainSettings
from lungcls.train.loop import (
    EarlyStopping,
    StepOptions,
    TrainingState,
    learning_rate,
    summarise_epoch,
    train_epoch,
    validate,
)
from lungcls.train.models import build_model
from lungcls.train.runs import EpochMetrics

SHAPE = [1, 8, 8]


def _separable(n: int, seed: int) -> list[dict[str, torch.Tensor]]:
    """Batches of 8 noisy 8x8 images; the positives have a bright center."""
    generator = torch.Generator().manual_seed(seed)
    labels = (torch.arange(n) % 2).float()
    x = 0.3 + 0.1 * torch.randn(n, *SHAPE, generator=generator)
    x[labels == 1, :, 2:6, 2:6] += 0.5
    x = x.clamp(0, 1)
    return [{"x": x[i : i + 8], "label": labels[i : i + 8]} for i in range(0, n, 8)]


def _model(seed: int = 0) -> nn.Module:
    return build_model(ModelSettings(width=4, depth=1), SHAPE, seed)


def test_the_loop_learns_separable_data() -> None:
    torch.manual_seed(0)
    model, train, val = _model(), _separable(64, seed=1), _separable(32, seed=2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-2)
    loss_fn = nn.BCEWithLogitsLoss()
    before = validate(model, val, loss_fn)
    losses = [train_epoch(model, train, optimizer, loss_fn).mean_loss for _ in range(8)]
    after = validate(model, val, loss_fn)
    assert losses[-1] < 0.6 * losses[0], losses
    assert after.loss < before.loss
    assert after.auc is not None and after.auc >= 0.95, after.auc
    assert len(after.scores) == len(after.labels) == 32


def test_epoch_stats_count_samples_and_time() -> None:
    model, batches = _model(), _separable(24, seed=3)
    stats = train_epoch(model, batches, torch.optim.SGD(model.parameters(), lr=0.1), nn.MSELoss())
    assert stats.samples == 24
    assert stats.seconds >= stats.data_wait_s >= 0


def test_augmented_steps_repeat_with_the_same_generator_seed() -> None:
    def run() -> dict[str, torch.Tensor]:
        torch.manual_seed(5)  # dropout draws from the global generator
        model = _model(seed=5)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
        options = StepOptions(
            augment_strength=1.0, generator=torch.Generator().manual_seed(7), grad_clip_norm=1.0
        )
        train_epoch(model, _separable(16, seed=4), optimizer, nn.BCEWithLogitsLoss(), options)
        return model.state_dict()

    first, second = run(), run()
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_augmentation_without_a_generator_is_refused() -> None:
    model = _model()
    optimizer = torch.optim.AdamW(model.parameters())
    with pytest.raises(ValueError, match="generator"):
        train_epoch(
            model,
            _separable(8, 0),
            optimizer,
            nn.BCEWithLogitsLoss(),
            StepOptions(augment_strength=1.0),
        )


def test_an_epoch_alone_is_summarised_as_one_worker() -> None:
    model, loss_fn = _model(), nn.BCEWithLogitsLoss()
    optimizer = torch.optim.AdamW(model.parameters())
    stats = train_epoch(model, _separable(16, seed=6), optimizer, loss_fn)
    one_class = [{"x": b["x"], "label": torch.zeros_like(b["label"])} for b in _separable(8, 7)]
    metrics = summarise_epoch(3, stats, validate(model, one_class, loss_fn), 1e-3, resumes=1)
    assert metrics.epoch == 3 and metrics.workers == 1 and metrics.worker_pids == [os.getpid()]
    assert metrics.val_auc is None  # one class: not estimable, and null (not NaN) in JSON
    assert metrics.train_loss == pytest.approx(stats.mean_loss)
    assert metrics.resumes == 1 and metrics.learning_rate == 1e-3


def test_learning_rate_warms_up_then_decays_to_zero() -> None:
    train = TrainSettings(learning_rate=1.0, warmup_epochs=2, epochs=12)
    rates = [learning_rate(e, train) for e in range(12)]
    assert rates[:3] == [0.5, 1.0, 1.0]
    assert all(a >= b for a, b in itertools.pairwise(rates[1:]))
    assert rates[-1] == pytest.approx(0.5 * (1 + math.cos(math.pi * 9 / 10)))


def _epoch(epoch: int, val_auc: float | None) -> EpochMetrics:
    return EpochMetrics(
        epoch=epoch,
        train_loss=0.5,
        val_loss=0.6,
        val_auc=val_auc,
        samples_per_s=10.0,
        data_wait_fraction=0.1,
        learning_rate=1e-3,
        epoch_seconds=1.0,
        workers=2,
        resumes=0,
        worker_pids=[1, 2],
    )


def test_training_stops_after_patience_epochs_without_a_better_auc() -> None:
    state = TrainingState(EarlyStopping(patience=2))
    aucs = [0.6, 0.7, None, 0.7, 0.65, 0.9]
    stops = [state.record(_epoch(e, auc), epochs=10) for e, auc in enumerate(aucs)]
    assert stops == [False, False, False, False, True, False]
    assert state.stopping.best_auc == 0.9 and state.epoch == 5
    assert TrainingState(EarlyStopping(100)).record(_epoch(9, 0.5), epochs=10)  # the last


def test_the_checkpointed_state_round_trips_and_reads_old_payloads() -> None:
    state = TrainingState(EarlyStopping(3), resumes=1)
    state.record(_epoch(0, 0.8), epochs=5)
    state.record(_epoch(1, None), epochs=5)
    restored = TrainingState.from_payload(state.to_payload(), patience=3)
    assert restored == state
    # lungcls 0.1.0 checkpoints held NaN where the AUC was not estimable
    old = state.to_payload()
    old["history"][1]["val_auc"] = float("nan")
    assert TrainingState.from_payload(old, patience=3).history[1].val_auc is None


def test_quarter_turns_rotate_in_plane_by_multiples_of_90_degrees() -> None:
    from itertools import product

    from lungcls.train.augment import augment

    x = torch.rand(32, 1, 4, 8, 8)
    # A vanishing strength leaves only the flips and the quarter turns, which it does not scale.
    out = augment(x, torch.Generator().manual_seed(3), 1e-9, quarter_turns=True)
    turns = set()
    for sample, moved in zip(x, out, strict=True):
        found = [
            k
            for k, flips in product(range(4), product((False, True), repeat=3))
            if torch.allclose(
                torch.rot90(sample.flip([d + 1 for d, f in enumerate(flips) if f]), k, (2, 3)),
                moved,
                atol=1e-4,
            )
        ]
        assert found, "every output is a flipped and quarter-turned copy of its input"
        turns.update(k % 2 for k in found)
    assert turns == {0, 1}  # some outputs need an odd quarter turn: no flip gives those
    plain = augment(x, torch.Generator().manual_seed(3), 1e-9)
    assert torch.equal(plain, augment(x, torch.Generator().manual_seed(3), 1e-9))
