"""The operating point: the threshold at which a positive call is made, chosen on validation.

A threshold tuned on the test split would make the test sensitivity an optimistic estimate;
one chosen on validation and applied unchanged to test estimates what it achieves on new
patients. `robust_operating_point` also allows for the validation split being small.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import roc_curve

from lungcls.evaluate.bootstrap import cumulative_counts, patient_resamples
from lungcls.evaluate.metrics import check_predictions


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
    y, s = check_predictions(labels, scores)
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
    y, s = check_predictions(labels, scores)
    plain = operating_point(y, s, target_sensitivity)
    if not 0.0 <= confidence < 1.0:
        raise ValueError(f"confidence {confidence} is not in [0, 1)")
    if confidence == 0.0 or y.max() == 0:
        return plain
    order = np.argsort(-s, kind="stable")
    ranked = s[order]
    distinct = ranked[np.flatnonzero(np.r_[True, ranked[1:] != ranked[:-1]])]
    points = []
    for weights in patient_resamples(groups, y.size, rounds, seed):
        tps, _ = cumulative_counts(y, s, weights)
        drawn = tps[:, -1] > 0  # rounds that drew a positive patient
        sensitivity = tps[drawn] / tps[drawn, -1:]
        points.append(distinct[np.argmax(sensitivity >= target_sensitivity - 1e-12, axis=1)])
    if not points or not np.concatenate(points).size:
        return plain
    quantile = np.quantile(np.concatenate(points), 1.0 - confidence, method="lower")
    return float(min(plain, quantile))
