"""Classification metrics for the evaluation stage: point estimates, patient-level bootstrap
intervals, an operating point, subgroup breakdowns and value bands.

Labels are 0/1 (1 = malignant), scores are predicted probabilities in [0, 1], and groups are
patient pseudonyms; a sample is predicted positive iff its score is >= the threshold.

Point estimates come from scikit-learn. The bootstrap cannot call scikit-learn once per round
and metric (about 15 ms per round, so 15 s for 1000 rounds), so it draws every round's patient
multiplicities at once and evaluates the same definitions as weighted sums over the original
samples (`_weighted_metrics`); the tests check it against `binary_metrics` on materialised
resamples.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    balanced_accuracy_score,
    brier_score_loss,
    confusion_matrix,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
    roc_curve,
)

METRIC_NAMES: tuple[str, ...] = (
    "accuracy",
    "sensitivity",
    "specificity",
    "ppv",
    "npv",
    "f1",
    "balanced_accuracy",
    "roc_auc",
    "pr_auc",
    "brier",
    "ece",
)
ECE_BINS = 10
# Rounds evaluated together: bounds the (rounds x samples) weight matrices to ~32 MB each.
_CHUNK_ELEMENTS = 4_000_000


def _check(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validated copies of labels (int 0/1) and scores (float in [0, 1]) of equal length."""
    y = np.asarray(labels)
    s = np.asarray(scores, dtype=float)
    if y.ndim != 1 or s.shape != y.shape or y.size == 0:
        raise ValueError(f"labels {y.shape} and scores {s.shape} must be equal, non-empty 1-D")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0 or 1")
    if not (np.isfinite(s).all() and (s >= 0).all() and (s <= 1).all()):
        raise ValueError("scores must be probabilities in [0, 1]")
    return y.astype(int), s


def _check_groups(groups: Sequence[str] | np.ndarray, n: int) -> np.ndarray:
    """Index of each sample's group (patient) into the sorted unique groups."""
    g = np.asarray(groups)
    if g.shape != (n,):
        raise ValueError(f"groups has shape {g.shape}, expected ({n},)")
    return np.unique(g, return_inverse=True)[1].reshape(n)


def _two_classes(y: np.ndarray) -> bool:
    return bool(y.min() == 0 and y.max() == 1)


def _bin_index(scores: np.ndarray, bins: int) -> np.ndarray:
    """Equal-width bin of each score on [0, 1]; a score of exactly 1 joins the last bin."""
    return np.minimum((scores * bins).astype(int), bins - 1)


def binary_metrics(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, float]:
    """Every `METRIC_NAMES` entry plus confusion counts at one threshold.

    Ratios with a zero denominator (e.g. PPV with no predicted positive) are 0.0, scikit-learn's
    `zero_division=0.0`. Metrics that need both classes (ROC AUC, PR AUC, balanced accuracy)
    are nan when only one is present rather than raising or averaging over one class.

    Args:
        labels: True classes, 0 or 1.
        scores: Predicted probabilities of class 1.
        threshold: A sample is predicted positive iff its score is >= threshold.

    Returns:
        Metric name -> value, and "tp", "fp", "tn", "fn" as ints.
    """
    y, s = _check(labels, scores)
    predicted = (s >= threshold).astype(int)
    both = _two_classes(y)
    tn, fp, fn, tp = confusion_matrix(y, predicted, labels=[0, 1]).ravel()
    return {
        "accuracy": float(accuracy_score(y, predicted)),
        "sensitivity": float(recall_score(y, predicted, pos_label=1, zero_division=0.0)),
        "specificity": float(recall_score(y, predicted, pos_label=0, zero_division=0.0)),
        "ppv": float(precision_score(y, predicted, pos_label=1, zero_division=0.0)),
        "npv": float(precision_score(y, predicted, pos_label=0, zero_division=0.0)),
        "f1": float(f1_score(y, predicted, zero_division=0.0)),
        "balanced_accuracy": float(balanced_accuracy_score(y, predicted)) if both else math.nan,
        "roc_auc": float(roc_auc_score(y, s)) if both else math.nan,
        "pr_auc": float(average_precision_score(y, s)) if both else math.nan,
        "brier": float(brier_score_loss(y, s, labels=[0, 1])),
        "ece": expected_calibration_error(y, s),
        "tp": int(tp),
        "fp": int(fp),
        "tn": int(tn),
        "fn": int(fn),
    }


def calibration_bins(
    labels: np.ndarray, scores: np.ndarray, bins: int = ECE_BINS
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per equal-width score bin on [0, 1]: mean score, fraction positive and sample count.

    Args:
        labels: True classes, 0 or 1.
        scores: Predicted probabilities of class 1.
        bins: Number of bins.

    Returns:
        (mean_score, fraction_positive, count), each of length `bins`; the first two are nan
        for empty bins.
    """
    y, s = _check(labels, scores)
    index = _bin_index(s, bins)
    count = np.bincount(index, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_score = np.bincount(index, weights=s, minlength=bins) / count
        fraction_positive = np.bincount(index, weights=y, minlength=bins) / count
    return mean_score, fraction_positive, count


def expected_calibration_error(
    labels: np.ndarray, scores: np.ndarray, bins: int = ECE_BINS
) -> float:
    """Expected calibration error with equal-width bins on [0, 1].

    ECE = sum over bins of (n_bin / n) * |fraction positive in bin - mean score in bin|;
    empty bins contribute nothing. 0 is perfect calibration, 1 the worst possible.

    Args:
        labels: True classes, 0 or 1.
        scores: Predicted probabilities of class 1.
        bins: Number of bins.

    Returns:
        The ECE in [0, 1].
    """
    y, s = _check(labels, scores)
    return float(_weighted_ece(y, s, np.ones((1, y.size)), bins)[0])


def operating_point(labels: np.ndarray, scores: np.ndarray, target_sensitivity: float) -> float:
    """The highest threshold whose sensitivity on these data is at least the target.

    Choose it on the validation split and apply it unchanged to the test split (the caller's
    job): the test sensitivity then estimates what the threshold achieves on new patients,
    which it would not if the threshold were tuned on the test data.

    Args:
        labels: True classes, 0 or 1.
        scores: Predicted probabilities of class 1.
        target_sensitivity: Required sensitivity in [0, 1].

    Returns:
        A threshold in [0, 1]; the lowest score (everything positive) when the target cannot be
        reached, which happens only without positive samples.
    """
    y, s = _check(labels, scores)
    if not 0.0 <= target_sensitivity <= 1.0:
        raise ValueError(f"target_sensitivity {target_sensitivity} is not in [0, 1]")
    if y.max() == 0:
        return float(s.min())
    # All distinct scores, descending: sensitivity only changes at a score, so the highest
    # threshold reaching the target is the first such score.
    # tpr ends at exactly 1.0, so some threshold always reaches a target <= 1.
    _, tpr, thresholds = roc_curve(y, s, drop_intermediate=False)
    first = np.flatnonzero(tpr >= target_sensitivity)[0]
    return float(np.clip(thresholds[first], 0.0, 1.0))


def robust_operating_point(
    labels: np.ndarray,
    scores: np.ndarray,
    groups: Sequence[str] | np.ndarray,
    target_sensitivity: float,
    confidence: float,
    rounds: int,
    seed: int,
) -> float:
    """A threshold that reaches the target sensitivity on new patients, not just on these.

    `operating_point` on one validation split sits exactly at the target there, so on other
    patients it falls short about half of the time, and more when a few patients dominate
    the positives. Here every round of a patient-level bootstrap of the split finds its own
    operating point, and the result is the (1 - confidence) quantile of them: a threshold
    that reaches the target in about `confidence` of resampled patient populations. It is
    never above `operating_point` on the split itself (0.5 gives about that point).

    Args:
        labels: True classes, 0 or 1.
        scores: Predicted probabilities of class 1.
        groups: Patient pseudonym of each sample.
        target_sensitivity: Required sensitivity in [0, 1].
        confidence: Share of resampled populations in which the target must be reached.
        rounds: Bootstrap rounds.
        seed: Seed of the resampling.

    Returns:
        A threshold in [0, 1] (one of the scores, or the plain point).
    """
    y, s = _check(labels, scores)
    plain = operating_point(y, s, target_sensitivity)
    if not 0.0 <= confidence < 1.0:
        raise ValueError(f"confidence {confidence} is not in [0, 1)")
    if confidence == 0.0 or y.max() == 0:
        return plain
    order = np.argsort(-s, kind="stable")
    ranked = s[order]
    distinct = ranked[np.flatnonzero(np.r_[True, ranked[1:] != ranked[:-1]])]
    points = []
    for weights in _patient_resamples(groups, y.size, rounds, seed):
        tps, _ = _cumulative_counts(y, s, weights)
        drawn = tps[:, -1] > 0  # rounds that drew a positive patient
        sensitivity = tps[drawn] / tps[drawn, -1:]
        points.append(distinct[np.argmax(sensitivity >= target_sensitivity - 1e-12, axis=1)])
    if not points or not np.concatenate(points).size:
        return plain
    quantile = np.quantile(np.concatenate(points), 1.0 - confidence, method="lower")
    return float(min(plain, quantile))


def _patient_resamples(
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
    index = _check_groups(groups, n)
    n_groups = int(index.max()) + 1
    drawn = np.random.default_rng(seed).integers(0, n_groups, size=(rounds, n_groups))
    offsets = np.arange(rounds)[:, None] * n_groups
    counts = np.bincount((drawn + offsets).ravel(), minlength=rounds * n_groups)
    counts = counts.reshape(rounds, n_groups).astype(float)
    size = max(1, _CHUNK_ELEMENTS // n)
    for start in range(0, rounds, size):
        yield counts[start : start + size][:, index]


def _cumulative_counts(
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
    """Trapezoidal ROC AUC per round from `_cumulative_counts`; nan without both classes."""
    tp_prev = np.pad(tps[:, :-1], ((0, 0), (1, 0)))
    fp_prev = np.pad(fps[:, :-1], ((0, 0), (1, 0)))
    area = ((fps - fp_prev) * (tps + tp_prev) / 2).sum(axis=1)
    return _divide(area, tps[:, -1] * fps[:, -1])


def _weighted_ece(y: np.ndarray, s: np.ndarray, weights: np.ndarray, bins: int) -> np.ndarray:
    """ECE per round: sum over bins of |weighted positives - weighted score sum| / total."""
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    one_hot = np.zeros((s.size, bins))
    one_hot[np.arange(s.size), _bin_index(s, bins)] = 1.0
    gap = np.abs((weights * y) @ one_hot - (weights * s) @ one_hot).sum(axis=1)
    return gap / weights.sum(axis=1)


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
    tps, fps = _cumulative_counts(y, s, weights)
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
        "ece": _weighted_ece(y, s, weights, ECE_BINS),
    }


def _percentile_interval(values: np.ndarray, level: float) -> tuple[float, float]:
    """Percentile interval of the defined (non-nan) values; (nan, nan) if there are none."""
    defined = values[~np.isnan(values)]
    if defined.size == 0:
        return (math.nan, math.nan)
    tail = (1.0 - level) / 2 * 100
    low, high = np.percentile(defined, [tail, 100 - tail])
    return (float(low), float(high))


def _check_level(level: float) -> None:
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
) -> dict[str, tuple[float, float]]:
    """Patient-level percentile bootstrap intervals for every `METRIC_NAMES` entry.

    Each round resamples the patients with replacement and keeps all samples of each drawn
    patient, so samples of one patient, which are correlated, never count as independent
    evidence. Rounds where a metric is undefined (e.g. no positive patient drawn) are left out
    for that metric only.

    Args:
        labels: True classes, 0 or 1.
        scores: Predicted probabilities of class 1.
        groups: Patient pseudonym of each sample.
        threshold: A sample is predicted positive iff its score is >= threshold.
        rounds: Bootstrap rounds.
        seed: Seed of the resampling; equal inputs and seed give equal intervals.
        level: Coverage of the intervals.

    Returns:
        Metric name -> (lower, upper); (nan, nan) if the metric was undefined in every round.
    """
    y, s = _check(labels, scores)
    _check_level(level)
    collected: dict[str, list[np.ndarray]] = {name: [] for name in METRIC_NAMES}
    for weights in _patient_resamples(groups, y.size, rounds, seed):
        for name, values in _weighted_metrics(y, s, weights, threshold).items():
            collected[name].append(values)
    return {
        name: _percentile_interval(np.concatenate(parts), level)
        for name, parts in collected.items()
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
    y, a = _check(labels, scores_a)
    _, b = _check(labels, scores_b)
    _check_level(level)
    if not _two_classes(y):
        return (math.nan, math.nan, math.nan)
    differences = [
        _weighted_auc(*_cumulative_counts(y, a, weights))
        - _weighted_auc(*_cumulative_counts(y, b, weights))
        for weights in _patient_resamples(groups, y.size, rounds, seed)
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
    y, s = _check(labels, scores)
    _check_level(level)
    if not _two_classes(y):
        raise ValueError("a ROC curve needs both classes")
    grid = np.linspace(0.0, 1.0, points)
    fpr, tpr, _ = roc_curve(y, s)
    curve = np.interp(grid, fpr, tpr)
    resampled = []
    for weights in _patient_resamples(groups, y.size, rounds, seed):
        tps, fps = _cumulative_counts(y, s, weights)
        for tp_row, fp_row in zip(tps, fps, strict=True):
            if tp_row[-1] > 0 and fp_row[-1] > 0:
                fpr_row = np.r_[0.0, fp_row / fp_row[-1]]
                resampled.append(np.interp(grid, fpr_row, np.r_[0.0, tp_row / tp_row[-1]]))
    if not resampled:
        return grid, curve, np.full(points, np.nan), np.full(points, np.nan)
    tail = (1.0 - level) / 2 * 100
    lower, upper = np.percentile(np.array(resampled), [tail, 100 - tail], axis=0)
    return grid, curve, lower, upper


def subgroup_table(
    labels: np.ndarray,
    scores: np.ndarray,
    threshold: float,
    attributes: dict[str, Sequence[str | None]],
) -> list[dict]:
    """Sensitivity, specificity and ROC AUC per value of each attribute.

    Args:
        labels: True classes, 0 or 1.
        scores: Predicted probabilities of class 1.
        threshold: A sample is predicted positive iff its score is >= threshold.
        attributes: Attribute name -> value per sample; None is reported as "unknown".

    Returns:
        One row per (attribute, value), sorted by attribute then value, with keys "attribute",
        "value", "n", "positives", "sensitivity", "specificity", "roc_auc"; a metric that is
        undefined for the subgroup (e.g. sensitivity without positives) is nan.
    """
    y, s = _check(labels, scores)
    predicted = (s >= threshold).astype(int)
    rows = []
    for attribute in sorted(attributes):
        values = np.array(
            ["unknown" if v is None else str(v) for v in attributes[attribute]], dtype=object
        )
        if values.shape != y.shape:
            raise ValueError(f"attribute {attribute!r} has {values.size} values, not {y.size}")
        for value in sorted(set(values)):
            mask = values == value
            ys, ps = y[mask], predicted[mask]
            rows.append(
                {
                    "attribute": attribute,
                    "value": value,
                    "n": int(mask.sum()),
                    "positives": int(ys.sum()),
                    "sensitivity": float(
                        recall_score(ys, ps, pos_label=1, labels=[0, 1], zero_division=np.nan)
                    ),
                    "specificity": float(
                        recall_score(ys, ps, pos_label=0, labels=[0, 1], zero_division=np.nan)
                    ),
                    "roc_auc": float(roc_auc_score(ys, s[mask])) if _two_classes(ys) else math.nan,
                }
            )
    return rows


def band(value: float | None, edges: Sequence[float], unit: str) -> str | None:
    """The band a value falls in, e.g. band(12.0, [10, 20], "mm") == "10–20 mm".

    Bands are closed below and open above: "<10 mm", "10–20 mm", "≥20 mm".

    Args:
        value: The measurement; None or nan (unknown) gives None.
        edges: Strictly increasing band edges, at least one.
        unit: Unit appended to the band, e.g. "mm".

    Returns:
        The band label, or None for an unknown value.
    """
    if not edges or any(b <= a for a, b in itertools.pairwise(edges)):
        raise ValueError(f"edges {list(edges)} must be non-empty and strictly increasing")
    if value is None or math.isnan(value):
        return None
    if value < edges[0]:
        return f"<{edges[0]:g} {unit}"
    if value >= edges[-1]:
        return f"≥{edges[-1]:g} {unit}"
    upper = next(i for i, edge in enumerate(edges) if value < edge)
    return f"{edges[upper - 1]:g}–{edges[upper]:g} {unit}"
