"""Patient-level bootstrap: intervals for every metric, a paired AUC difference, a ROC band.

Each round resamples the patients with replacement and keeps all samples of each drawn
patient, so samples of one patient, which are correlated, never count as independent
evidence. An interval needs `min_patients_per_class` patients of each class its metric is
measured on (`METRIC_CLASSES`); with fewer it is not estimable (nan), and a round that drew
no patient of such a class is left out for that metric rather than scored 0.

The bootstrap cannot call scikit-learn once per round and metric (about 15 ms per round, so
15 s for 1000 rounds), so it draws every round's patient multiplicities at once and evaluates
the same definitions as weighted sums over the original samples (`_weighted_metrics`); the
tests check it against `binary_metrics` on materialised resamples.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve

from lungcls.evaluate.metrics import (
    ECE_BINS,
    METRIC_CLASSES,
    METRIC_NAMES,
    check_predictions,
    has_both_classes,
    patients_per_class,
    weighted_ece,
)

# Rounds evaluated together: bounds the (rounds x samples) weight matrices to ~32 MB each.
_CHUNK_ELEMENTS = 4_000_000


def patient_index(groups: Sequence[str] | np.ndarray, n: int) -> np.ndarray:
    """Index of each sample's group (patient) into the sorted unique groups."""
    g = np.asarray(groups)
    if g.shape != (n,):
        raise ValueError(f"groups has shape {g.shape}, expected ({n},)")
    return np.unique(g, return_inverse=True)[1].reshape(n)


def patient_resamples(
    groups: Sequence[str] | np.ndarray, n: int, rounds: int, seed: int
) -> Iterator[np.ndarray]:
    """Sample weights of the bootstrap rounds, a chunk of rounds at a time.

    Each round draws as many patients as there are, with replacement; a sample's weight is how
    often its patient was drawn.

    Yields:
        (rounds in chunk, n) float arrays; all chunks together cover `rounds` rounds.
    """
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    index = patient_index(groups, n)
    n_groups = int(index.max()) + 1
    drawn = np.random.default_rng(seed).integers(0, n_groups, size=(rounds, n_groups))
    offsets = np.arange(rounds)[:, None] * n_groups
    counts = np.bincount((drawn + offsets).ravel(), minlength=rounds * n_groups)
    counts = counts.reshape(rounds, n_groups).astype(float)
    size = max(1, _CHUNK_ELEMENTS // n)
    for start in range(0, rounds, size):
        yield counts[start : start + size][:, index]


def cumulative_counts(
    y: np.ndarray, s: np.ndarray, weights: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Weighted true and false positives at each distinct score as threshold, descending.

    Returns:
        (tps, fps), each (rounds, distinct scores): column k counts the samples with a score
        >= the k-th highest distinct score, as in scikit-learn's ROC and PR curves.
    """
    order = np.argsort(-s, kind="stable")
    ranked = s[order]
    starts = np.flatnonzero(np.r_[True, ranked[1:] != ranked[:-1]])
    w = weights[:, order]
    tps = np.cumsum(np.add.reduceat(w * y[order], starts, axis=1), axis=1)
    fps = np.cumsum(np.add.reduceat(w * (1 - y[order]), starts, axis=1), axis=1)
    return tps, fps


def _divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator, nan where the denominator is 0 (the metric is undefined)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, numerator / denominator, np.nan)


def _weighted_auc(tps: np.ndarray, fps: np.ndarray) -> np.ndarray:
    """Trapezoidal ROC AUC per round from `cumulative_counts`; nan without both classes."""
    tp_prev = np.pad(tps[:, :-1], ((0, 0), (1, 0)))
    fp_prev = np.pad(fps[:, :-1], ((0, 0), (1, 0)))
    area = ((fps - fp_prev) * (tps + tp_prev) / 2).sum(axis=1)
    return _divide(area, tps[:, -1] * fps[:, -1])


def _weighted_metrics(
    y: np.ndarray, s: np.ndarray, weights: np.ndarray, threshold: float
) -> dict[str, np.ndarray]:
    """Every `METRIC_NAMES` entry per row of sample weights (bootstrap multiplicities).

    Unlike `binary_metrics`, a ratio with a zero denominator is nan: a resample without
    positives says nothing about sensitivity, so the round is skipped rather than counted as 0.
    """
    predicted = s >= threshold
    tp = weights @ (predicted & (y == 1))
    fp = weights @ (predicted & (y == 0))
    fn = weights @ (~predicted & (y == 1))
    tn = weights @ (~predicted & (y == 0))
    sensitivity = _divide(tp, tp + fn)
    specificity = _divide(tn, tn + fp)
    tps, fps = cumulative_counts(y, s, weights)
    positives = tps[:, -1]
    gained = np.diff(tps, axis=1, prepend=0.0)
    precision_at = _divide(tps, tps + fps)
    pr_auc = _divide(np.nansum(gained * precision_at, axis=1), positives)
    total = weights.sum(axis=1)
    return {
        "accuracy": (tp + tn) / total,
        "sensitivity": sensitivity,
        "specificity": specificity,
        "ppv": _divide(tp, tp + fp),
        "npv": _divide(tn, tn + fn),
        "f1": _divide(2 * tp, 2 * tp + fp + fn),
        "balanced_accuracy": (sensitivity + specificity) / 2,
        "roc_auc": _weighted_auc(tps, fps),
        # Without negatives PR AUC is trivially 1; undefined, as in `binary_metrics`.
        "pr_auc": np.where(fps[:, -1] > 0, pr_auc, np.nan),
        "brier": (weights @ (s - y) ** 2) / total,
        "ece": weighted_ece(y, s, weights, ECE_BINS),
    }


def _percentile_interval(values: np.ndarray, level: float) -> tuple[float, float]:
    """Percentile interval of the defined (non-nan) values; (nan, nan) if there are none."""
    defined = values[~np.isnan(values)]
    if defined.size == 0:
        return (math.nan, math.nan)
    tail = (1.0 - level) / 2 * 100
    low, high = np.percentile(defined, [tail, 100 - tail])
    return (float(low), float(high))


def check_level(level: float) -> None:
    if not 0.0 < level < 1.0:
        raise ValueError(f"level {level} is not in (0, 1)")


def bootstrap_intervals(
    labels: np.ndarray,
    scores: np.ndarray,
    groups: Sequence[str] | np.ndarray,
    threshold: float,
    rounds: int,
    seed: int,
    level: float = 0.95,
    min_patients_per_class: int = 1,
) -> dict[str, tuple[float, float]]:
    """Patient-level percentile bootstrap intervals for every `METRIC_NAMES` entry.

    Each round resamples the patients with replacement and keeps all samples of each drawn
    patient, so samples of one patient, which are correlated, never count as independent
    evidence. Rounds where a metric is undefined or that drew no patient of a class the metric
    is measured on (`METRIC_CLASSES`: a resample of negatives only says nothing about PPV or
    AUC) are left out for that metric only.

    Args:
        labels: True classes, 0 or 1.
        scores: Predicted probabilities of class 1.
        groups: Patient pseudonym of each sample.
        threshold: A sample is predicted positive iff its score is >= threshold.
        rounds: Bootstrap rounds.
        seed: Seed of the resampling; equal inputs and seed give equal intervals.
        level: Coverage of the intervals.
        min_patients_per_class: Fewest patients of each class a metric is measured on for
            its interval to be estimable (`evaluation.min_patients_per_class`).

    Returns:
        Metric name -> (lower, upper); (nan, nan) where the patients of a class the metric is
        measured on are fewer than `min_patients_per_class`, or no round defined the metric.
    """
    y, s = check_predictions(labels, scores)
    check_level(level)
    if min_patients_per_class < 1:
        raise ValueError(f"min_patients_per_class must be >= 1, got {min_patients_per_class}")
    have = patients_per_class(y, np.asarray(groups))
    estimable = [
        name
        for name in METRIC_NAMES
        if all(have[c] >= min_patients_per_class for c in METRIC_CLASSES[name])
    ]
    collected: dict[str, list[np.ndarray]] = {name: [] for name in estimable}
    for weights in patient_resamples(groups, y.size, rounds, seed):
        drawn = {1: weights @ y > 0, 0: weights @ (1 - y) > 0}
        metrics = _weighted_metrics(y, s, weights, threshold)
        for name in estimable:
            classes_drawn = np.logical_and.reduce([drawn[c] for c in METRIC_CLASSES[name]])
            collected[name].append(np.where(classes_drawn, metrics[name], np.nan))
    return {
        name: _percentile_interval(np.concatenate(collected[name]), level)
        if name in collected
        else (math.nan, math.nan)
        for name in METRIC_NAMES
    }


def paired_auc_difference(
    labels: np.ndarray,
    scores_a: np.ndarray,
    scores_b: np.ndarray,
    groups: Sequence[str] | np.ndarray,
    rounds: int,
    seed: int,
    level: float = 0.95,
) -> tuple[float, float, float]:
    """ROC AUC of model a minus model b, with a paired patient-level bootstrap interval.

    Both models are scored on the same resampled patients in each round, so the interval
    reflects only how the models differ, not how hard the drawn patients happen to be.

    Args:
        labels: True classes, 0 or 1.
        scores_a: Model a's predicted probabilities of class 1.
        scores_b: Model b's predicted probabilities for the same samples.
        groups: Patient pseudonym of each sample.
        rounds: Bootstrap rounds.
        seed: Seed of the resampling.
        level: Coverage of the interval.

    Returns:
        (difference on all data, lower, upper); all nan when the labels have one class.
    """
    y, a = check_predictions(labels, scores_a)
    _, b = check_predictions(labels, scores_b)
    check_level(level)
    if not has_both_classes(y):
        return (math.nan, math.nan, math.nan)
    differences = [
        _weighted_auc(*cumulative_counts(y, a, weights))
        - _weighted_auc(*cumulative_counts(y, b, weights))
        for weights in patient_resamples(groups, y.size, rounds, seed)
    ]
    low, high = _percentile_interval(np.concatenate(differences), level)
    return (float(roc_auc_score(y, a) - roc_auc_score(y, b)), low, high)


def roc_band(
    labels: np.ndarray,
    scores: np.ndarray,
    groups: Sequence[str] | np.ndarray,
    rounds: int,
    seed: int,
    level: float = 0.95,
    points: int = 101,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A ROC curve on a fixed false-positive-rate grid with a pointwise bootstrap band.

    Args:
        labels: True classes, 0 or 1; both must be present.
        scores: Predicted probabilities of class 1.
        groups: Patient pseudonym of each sample.
        rounds: Bootstrap rounds (patients resampled as in `bootstrap_intervals`).
        seed: Seed of the resampling.
        level: Pointwise coverage of the band.
        points: Grid points on [0, 1].

    Returns:
        (fpr_grid, tpr on all data, tpr lower, tpr upper), each of length `points`. At an FPR
        where the curve rises vertically, the upper end of the rise is taken.
    """
    y, s = check_predictions(labels, scores)
    check_level(level)
    if not has_both_classes(y):
        raise ValueError("a ROC curve needs both classes")
    grid = np.linspace(0.0, 1.0, points)
    fpr, tpr, _ = roc_curve(y, s)
    curve = np.interp(grid, fpr, tpr)
    resampled = []
    for weights in patient_resamples(groups, y.size, rounds, seed):
        tps, fps = cumulative_counts(y, s, weights)
        for tp_row, fp_row in zip(tps, fps, strict=True):
            if tp_row[-1] > 0 and fp_row[-1] > 0:
                fpr_row = np.r_[0.0, fp_row / fp_row[-1]]
                resampled.append(np.interp(grid, fpr_row, np.r_[0.0, tp_row / tp_row[-1]]))
    if not resampled:
        return grid, curve, np.full(points, np.nan), np.full(points, np.nan)
    tail = (1.0 - level) / 2 * 100
    lower, upper = np.percentile(np.array(resampled), [tail, 100 - tail], axis=0)
    return grid, curve, lower, upper
