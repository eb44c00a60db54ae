"""Fold assignment for cross-validation: patient-grouped, stratified, repeatable."""

from __future__ import annotations

import pytest

from lungcls.train.folds import assign_folds, holdout_of
from lungcls.train.runs import TrainError


def _patients(negatives: int, positives: int) -> dict[str, list[int]]:
    patients = {f"n{i:02d}": [0] * (1 + i % 3) for i in range(negatives)}
    patients.update({f"p{i:02d}": [0, 1] if i % 2 else [1] for i in range(positives)})
    return patients


def test_folds_keep_patients_whole_balance_classes_and_repeat() -> None:
    patients = _patients(negatives=23, positives=11)
    folds = assign_folds(patients, 5, seed=0)
    assert set(folds) == set(patients) and set(folds.values()) == set(range(5))
    for fold in range(5):
        held = [p for p, k in folds.items() if k == fold]
        positives = sum(p.startswith("p") for p in held)
        assert positives in (2, 3)  # 11 positive patients over 5 folds, stratified
        holdout = holdout_of(patients, folds, fold)
        assert holdout.patients == frozenset(held)
        training = [y for p, labels in patients.items() if p not in held for y in labels]
        assert (holdout.negatives, holdout.positives) == (training.count(0), training.count(1))
    assert assign_folds(dict(reversed(patients.items())), 5, seed=0) == folds
    assert assign_folds(patients, 5, seed=1) != folds


def test_too_few_patients_of_a_class_for_the_folds_is_refused() -> None:
    with pytest.raises(TrainError, match=r"at least 5 patients of each class.*4 with"):
        assign_folds(_patients(negatives=20, positives=4), 5, seed=0)
