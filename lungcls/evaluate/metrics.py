"""Classification metrics for the evaluation stage: point estimates, subgroup breakdowns and
value bands.

Labels are 0/1 (1 = malignant), scores are predicted probabilities in [0, 1], and groups are
patient pseudonyms; a sample is predicted positive iff its score is >= the threshold. Point
estimates come from scikit-learn; `bootstrap` puts intervals on them and `operating_point`
chooses the threshold.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

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
# The classes each metric is measured on: sensitivity only on patients with cancer,
# specificity only on patients without; every other metric mixes both (it separates them, or
# depends on how many of each there are), so its bootstrap interval needs both.
METRIC_CLASSES: dict[str, tuple[int, ...]] = {
    name: {"sensitivity": (1,), "specificity": (0,)}.get(name, (0, 1)) for name in METRIC_NAMES
}
CLASS_NAMES = {0: "without cancer", 1: "with cancer"}


def check_predictions(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
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


def has_both_classes(y: np.ndarray) -> bool:
    return bool(y.min() == 0 and y.max() == 1)


def patients_per_class(labels: np.ndarray, groups: Sequence[str] | np.ndarray) -> dict[int, int]:
    """Patients with at least one sample of each class: {0: without cancer, 1: with cancer}.

    A patient with a benign and a malignant nodule counts for both classes, since the
    bootstrap draws them for both.
    """
    y = np.asarray(labels).astype(int)
    g = np.asarray(groups)
    if g.shape != y.shape:
        raise ValueError(f"groups has shape {g.shape}, labels {y.shape}")
    return {label: len(set(g[y == label].tolist())) for label in (0, 1)}


def _bin_index(scores: np.ndarray, bins: int) -> np.ndarray:
    """Equal-width bin of each score on [0, 1]; a score of exactly 1 joins the last bin."""
    return np.minimum((scores * bins).astype(int), bins - 1)


def binary_metrics(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, float]:
    """Every `METRIC_NAMES` entry plus confusion counts at one threshold.

    Ratios with a zero denominator (sensitivity without positives, PPV with no predicted
    positive) are nan, not estimable, never a made-up 0.0. Metrics that need both classes (ROC
    AUC, PR AUC, balanced accuracy) are nan when only one is present rather than raising or
    averaging over one class.

    Args:
        labels: True classes, 0 or 1.
        scores: Predicted probabilities of class 1.
        threshold: A sample is predicted positive iff its score is >= threshold.

    Returns:
        Metric name -> value, and "tp", "fp", "tn", "fn" as ints.
    """
    y, s = check_predictions(labels, scores)
    predicted = (s >= threshold).astype(int)
    both = has_both_classes(y)
    tn, fp, fn, tp = confusion_matrix(y, predicted, labels=[0, 1]).ravel()
    return {
        "accuracy": float(accuracy_score(y, predicted)),
        "sensitivity": float(recall_score(y, predicted, pos_label=1, zero_division=np.nan)),
        "specificity": float(recall_score(y, predicted, pos_label=0, zero_division=np.nan)),
        "ppv": float(precision_score(y, predicted, pos_label=1, zero_division=np.nan)),
        "npv": float(precision_score(y, predicted, pos_label=0, zero_division=np.nan)),
        "f1": float(f1_score(y, predicted, zero_division=np.nan)),
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
    y, s = check_predictions(labels, scores)
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
    y, s = check_predictions(labels, scores)
    return float(weighted_ece(y, s, np.ones((1, y.size)), bins)[0])


def weighted_ece(y: np.ndarray, s: np.ndarray, weights: np.ndarray, bins: int) -> np.ndarray:
    """ECE per round: sum over bins of |weighted positives - weighted score sum| / total."""
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    one_hot = np.zeros((s.size, bins))
    one_hot[np.arange(s.size), _bin_index(s, bins)] = 1.0
    gap = np.abs((weights * y) @ one_hot - (weights * s) @ one_hot).sum(axis=1)
    return gap / weights.sum(axis=1)


def subgroup_table(
    labels: np.ndarray,
    scores: np.ndarray,
    threshold: float,
    attributes: dict[str, Sequence[str | None]],
) -> list[dict[str, str | int | float]]:
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
    y, s = check_predictions(labels, scores)
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
                    "roc_auc": float(roc_auc_score(ys, s[mask]))
                    if has_both_classes(ys)
                    else math.nan,
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
