"""Patient-level splits: keyed, stable, proportional."""

from __future__ import annotations

from collections import Counter

import pytest

from lungcls.dataset.splits import SplitConflict, patient_split, patient_splits

KEY = b"k" * 32


def test_split_is_stable_and_keyed() -> None:
    ids = [f"patient-{i:024x}" for i in range(3000)]
    first = [patient_split(p, KEY, (0.7, 0.15, 0.15)) for p in ids]
    assert first == [patient_split(p, KEY, (0.7, 0.15, 0.15)) for p in ids]
    counts = Counter(first)
    assert abs(counts["train"] / 3000 - 0.7) < 0.03
    assert abs(counts["val"] / 3000 - 0.15) < 0.03
    other = [patient_split(p, b"x" * 32, (0.7, 0.15, 0.15)) for p in ids]
    assert other != first


def test_bad_fractions_are_refused() -> None:
    with pytest.raises(ValueError, match="sum to 1"):
        patient_split("patient-1", KEY, (0.5, 0.2, 0.2))


def test_assigned_splits_win_and_conflicts_are_refused() -> None:
    series = [("patient-a", None), ("patient-a", "test"), ("patient-b", None), ("patient-c", "val")]
    splits = patient_splits(series, KEY, (0.7, 0.15, 0.15))
    assert splits["patient-a"] == "test"  # its unassigned series follow it
    assert splits["patient-c"] == "val"
    assert splits["patient-b"] == patient_split("patient-b", KEY, (0.7, 0.15, 0.15))
    with pytest.raises(SplitConflict, match="patient-a is assigned both 'test' and 'train'"):
        patient_splits([*series, ("patient-a", "train")], KEY, (0.7, 0.15, 0.15))
