"""Tests for lungcls.evaluate.metrics, .bootstrap and .operating_point: hand-checked values,
bootstrap behaviour and edge cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lungcls.evaluate import bootstrap
from lungcls.evaluate.bootstrap import bootstrap_intervals, paired_auc_difference, roc_band
from lungcls.evaluate.metrics import (
    METRIC_NAMES,
    band,
    binary_metrics,
    expected_calibration_error,
    subgroup_table,
)
from lungcls.evaluate.operating_point import operating_point, robust_operating_point

# 4 TP, 1 FN, 3 TN, 2 FP at threshold 0.5.
HAND_LABELS = np.array([1, 1, 1, 1, 1, 0, 0, 0, 0, 0])
HAND_SCORES = np.array([0.9, 0.8, 0.7, 0.6, 0.3, 0.2, 0.1, 0.4, 0.55, 0.65])


def patients(
    count: int, per_patient: int, signal: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Synthetic (labels, scores, groups): one label per patient, noisy scores per sample."""
    rng = np.random.default_rng(seed)
    patient_labels = rng.integers(0, 2, count)
    labels = np.repeat(patient_labels, per_patient)
    scores = np.clip(signal * labels + (1 - signal) * rng.random(labels.size), 0.0, 1.0)
    groups = np.repeat(np.array([f"pseudo-{i:05d}" for i in range(count)]), per_patient)
    return labels, scores, groups


def width(interval: tuple[float, float]) -> float:
    return interval[1] - interval[0]


def test_binary_metrics_hand_checked() -> None:
    result = binary_metrics(HAND_LABELS, HAND_SCORES, 0.5)
    assert (result["tp"], result["fn"], result["tn"], result["fp"]) == (4, 1, 3, 2)
    assert all(isinstance(result[k], int) for k in ("tp", "fp", "tn", "fn"))
    expected = {
        "accuracy": 7 / 10,
        "sensitivity": 4 / 5,
        "specificity": 3 / 5,
        "ppv": 4 / 6,
        "npv": 3 / 4,
        "f1": 8 / 11,
        "balanced_accuracy": 0.7,
        "roc_auc": 21 / 25,  # pairs with the positive scored higher
        "brier": 1.725 / 10,
    }
    for name, value in expected.items():
        assert result[name] == pytest.approx(value), name
    assert set(METRIC_NAMES) <= set(result)


def test_threshold_is_inclusive() -> None:
    at = binary_metrics(HAND_LABELS, HAND_SCORES, 0.6)
    above = binary_metrics(HAND_LABELS, HAND_SCORES, 0.6 + 1e-9)
    assert at["tp"] == 4
    assert above["tp"] == 3


def test_single_class_gives_nan_auc_without_raising() -> None:
    result = binary_metrics(np.zeros(5, dtype=int), np.linspace(0.1, 0.9, 5), 0.5)
    assert math.isnan(result["roc_auc"])
    assert math.isnan(result["pr_auc"])
    assert math.isnan(result["balanced_accuracy"])
    assert math.isnan(result["sensitivity"])  # no positives: not estimable, never 0.0
    assert result["specificity"] == pytest.approx(2 / 5)
    assert result["tn"] == 2 and result["fp"] == 3


def test_binary_metrics_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        binary_metrics(np.array([0, 2]), np.array([0.1, 0.2]), 0.5)
    with pytest.raises(ValueError):
        binary_metrics(np.array([0, 1]), np.array([0.1, 1.2]), 0.5)


def test_ece_zero_when_calibrated_and_large_when_not() -> None:
    # Bin [0.2, 0.3): score 0.25 with 1 of 4 positive; bin [0.7, 0.8): score 0.75 with 3 of 4.
    labels = np.array([1, 0, 0, 0, 1, 1, 1, 0])
    scores = np.array([0.25] * 4 + [0.75] * 4)
    assert expected_calibration_error(labels, scores) == pytest.approx(0.0)
    confident_and_wrong = expected_calibration_error(
        np.array([0, 0, 1, 1]), np.array([0.95, 0.95, 0.05, 0.05])
    )
    assert confident_and_wrong == pytest.approx(0.95)
    # Weighted by bin size: 3/4 of samples off by 0.5, 1/4 off by 0.
    mixed = expected_calibration_error(np.array([1, 1, 1, 0]), np.array([0.5, 0.5, 0.5, 0.0]))
    assert mixed == pytest.approx(0.75 * 0.5)


def test_operating_point_is_highest_threshold_reaching_target() -> None:
    labels, scores, _ = patients(120, 1, 0.3, seed=3)
    scores = np.round(scores, 2)  # ties between samples
    for target in (0.5, 0.8, 0.9, 0.95, 1.0):
        threshold = operating_point(labels, scores, target)
        assert 0.0 <= threshold <= 1.0
        assert binary_metrics(labels, scores, threshold)["sensitivity"] >= target
        assert binary_metrics(labels, scores, threshold + 1e-9)["sensitivity"] < target


def test_operating_point_unreachable_returns_lowest_score() -> None:
    scores = np.array([0.4, 0.2, 0.7])
    assert operating_point(np.zeros(3, dtype=int), scores, 0.9) == 0.2
    with pytest.raises(ValueError):
        operating_point(np.array([0, 1, 1]), scores, 1.5)


def test_robust_operating_point_matches_materialised_resamples() -> None:
    labels, scores, groups = patients(30, 4, 0.25, seed=5)
    scores = np.round(scores, 3)
    plain = operating_point(labels, scores, 0.95)
    assert robust_operating_point(labels, scores, groups, 0.95, 0.0, 200, 0) == plain
    robust = robust_operating_point(labels, scores, groups, 0.95, 0.8, 200, 0)
    # The same rounds, drawn as explicit resamples and solved one by one.
    points = []
    for weights in bootstrap.patient_resamples(groups, labels.size, 200, 0):
        for w in weights.astype(int):
            index = np.repeat(np.arange(labels.size), w)
            if labels[index].max() == 1:
                points.append(operating_point(labels[index], scores[index], 0.95))
    expected = min(plain, float(np.quantile(points, 0.2, method="lower")))
    assert robust == expected and robust < plain
    assert binary_metrics(labels, scores, robust)["sensitivity"] >= 0.95
    # Resampled populations reach the target at the robust point at least as often as asked.
    reached = [p >= robust for p in points]
    assert np.mean(reached) >= 0.8


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_weighted_metrics_match_sklearn_on_materialised_resamples(seed: int) -> None:
    labels, scores, _ = patients(40, 1, 0.3, seed=seed)
    scores = np.round(scores, 1)  # ties exercise the tie handling of ROC and PR AUC
    rng = np.random.default_rng(seed)
    weights = rng.integers(0, 3, size=(20, labels.size)).astype(float)
    vectorised = bootstrap._weighted_metrics(labels, scores, weights, 0.5)
    for row, counts in enumerate(weights.astype(int)):
        taken = np.repeat(np.arange(labels.size), counts)
        reference = binary_metrics(labels[taken], scores[taken], 0.5)
        for name in METRIC_NAMES:
            value = vectorised[name][row]
            if math.isnan(value):  # undefined in the bootstrap, 0.0 or nan in binary_metrics
                assert reference[name] == 0.0 or math.isnan(reference[name]), name
            else:
                assert value == pytest.approx(reference[name]), name


def test_bootstrap_intervals_contain_point_estimates() -> None:
    labels, scores, groups = patients(200, 2, 0.4, seed=0)
    point = binary_metrics(labels, scores, 0.5)
    intervals = bootstrap_intervals(labels, scores, groups, 0.5, rounds=500, seed=0)
    assert set(intervals) == set(METRIC_NAMES)
    for name in METRIC_NAMES:
        low, high = intervals[name]
        assert low <= point[name] <= high, name
        assert low < high, name


def test_bootstrap_intervals_narrow_with_more_patients() -> None:
    few = bootstrap_intervals(*patients(40, 2, 0.3, seed=1), 0.5, rounds=400, seed=0)
    many = bootstrap_intervals(*patients(400, 2, 0.3, seed=1), 0.5, rounds=400, seed=0)
    for name in ("accuracy", "sensitivity", "roc_auc", "brier"):
        assert width(many[name]) < 0.6 * width(few[name]), name


def test_bootstrap_intervals_deterministic_for_seed() -> None:
    data = patients(60, 3, 0.3, seed=2)
    first = bootstrap_intervals(*data, 0.5, rounds=200, seed=7)
    assert bootstrap_intervals(*data, 0.5, rounds=200, seed=7) == first
    assert bootstrap_intervals(*data, 0.5, rounds=200, seed=8) != first


def test_bootstrap_resamples_patients_not_samples() -> None:
    labels, scores, groups = patients(80, 1, 0.3, seed=4)
    once = bootstrap_intervals(labels, scores, groups, 0.5, rounds=400, seed=0)
    # Every patient's row four times: the same patients, so the same uncertainty.
    four = np.repeat(np.arange(labels.size), 4)
    duplicated = bootstrap_intervals(
        labels[four], scores[four], groups[four], 0.5, rounds=400, seed=0
    )
    for name in METRIC_NAMES:
        assert duplicated[name] == pytest.approx(once[name]), name
    # Treating each duplicated row as its own patient (per-sample resampling) would halve
    # the width: that is the mistake the patient-level bootstrap avoids.
    per_sample = bootstrap_intervals(
        labels[four], scores[four], np.arange(four.size).astype(str), 0.5, rounds=400, seed=0
    )
    assert width(per_sample["roc_auc"]) < 0.7 * width(duplicated["roc_auc"])
    assert width(per_sample["accuracy"]) < 0.7 * width(duplicated["accuracy"])


def test_bootstrap_skips_undefined_rounds() -> None:
    labels, scores, groups = patients(30, 2, 0.3, seed=5)
    labels[:] = 0
    labels[:2] = 1  # one positive patient: absent from about a third of the rounds
    intervals = bootstrap_intervals(labels, scores, groups, 0.5, rounds=300, seed=0)
    assert not math.isnan(intervals["roc_auc"][0])
    assert not math.isnan(intervals["sensitivity"][0])
    negatives_only = bootstrap_intervals(
        np.zeros_like(labels), scores, groups, 0.5, rounds=50, seed=0
    )
    assert all(math.isnan(v) for v in negatives_only["roc_auc"])
    assert not math.isnan(negatives_only["specificity"][0])


def test_paired_auc_difference() -> None:
    labels, good, groups = patients(100, 2, 0.5, seed=6)
    assert paired_auc_difference(labels, good, good, groups, rounds=200, seed=0) == (0.0, 0.0, 0.0)
    noise = np.random.default_rng(0).random(labels.size)
    difference, low, high = paired_auc_difference(labels, good, noise, groups, rounds=300, seed=0)
    assert low > 0.0
    assert low <= difference <= high
    reverse = paired_auc_difference(labels, noise, good, groups, rounds=300, seed=0)
    assert reverse[0] == pytest.approx(-difference)
    assert reverse[2] < 0.0


def test_roc_band() -> None:
    labels, scores, groups = patients(80, 2, 0.3, seed=7)
    grid, tpr, lower, upper = roc_band(labels, scores, groups, rounds=300, seed=0, points=51)
    assert grid.shape == tpr.shape == lower.shape == upper.shape == (51,)
    assert grid[0] == 0.0 and grid[-1] == 1.0
    assert np.all(np.diff(tpr) >= 0) and tpr[-1] == 1.0
    assert np.all(lower <= upper)
    assert np.mean((lower <= tpr) & (tpr <= upper)) > 0.9
    assert np.mean(upper - lower) > 0.02
    separated = roc_band(
        np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.8, 0.9]), ["a", "b", "c", "d"], 20, 0
    )
    assert separated[1][0] == 1.0  # vertical rise at fpr 0: the top of it


def test_subgroup_table() -> None:
    labels = np.array([1, 0, 1, 0, 1, 1, 0, 0])
    scores = np.array([0.9, 0.2, 0.3, 0.6, 0.8, 0.7, 0.1, 0.4])
    attributes = {
        "manufacturer": ["SIEMENS", "SIEMENS", "GE", "GE", None, None, "SIEMENS", "GE"],
        "band": ["<10 mm"] * 4 + ["≥20 mm"] * 4,
    }
    rows = subgroup_table(labels, scores, 0.5, attributes)
    keys = [(r["attribute"], r["value"]) for r in rows]
    assert keys == [
        ("band", "<10 mm"),
        ("band", "≥20 mm"),
        ("manufacturer", "GE"),
        ("manufacturer", "SIEMENS"),
        ("manufacturer", "unknown"),
    ]
    ge = rows[2]
    assert (ge["n"], ge["positives"]) == (3, 1)
    assert ge["sensitivity"] == 0.0  # the positive (0.3) is missed
    assert ge["specificity"] == pytest.approx(0.5)  # 0.6 flagged, 0.4 not
    assert ge["roc_auc"] == 0.0  # the positive scores below both negatives
    unknown = rows[4]
    assert (unknown["n"], unknown["positives"], unknown["sensitivity"]) == (2, 2, 1.0)
    assert math.isnan(unknown["specificity"]) and math.isnan(unknown["roc_auc"])
    assert set(rows[0]) == {
        "attribute",
        "value",
        "n",
        "positives",
        "sensitivity",
        "specificity",
        "roc_auc",
    }


def test_band() -> None:
    edges = [10, 20]
    assert band(12.0, edges, "mm") == "10–20 mm"
    assert band(10.0, edges, "mm") == "10–20 mm"
    assert band(9.99, edges, "mm") == "<10 mm"
    assert band(20.0, edges, "mm") == "≥20 mm"
    assert band(None, edges, "mm") is None
    assert band(float("nan"), edges, "mm") is None
    assert band(1.5, [1.25, 2.5, 5], "mm") == "1.25–2.5 mm"
    with pytest.raises(ValueError):
        band(1.0, [2, 1], "mm")


def test_bootstrap_chunking_does_not_change_results(monkeypatch: pytest.MonkeyPatch) -> None:
    data = patients(50, 2, 0.3, seed=8)
    whole = bootstrap_intervals(*data, 0.5, rounds=250, seed=3)
    monkeypatch.setattr(bootstrap, "_CHUNK_ELEMENTS", 7 * 100)  # 7 rounds per chunk
    chunked = bootstrap_intervals(*data, 0.5, rounds=250, seed=3)
    for name in METRIC_NAMES:
        assert chunked[name] == pytest.approx(whole[name]), name
