"""Fold assignment for cross-validation: patient-grouped, stratified, repeatable; and the
folds' held-out scores put on one scale before they are pooled."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from lungcls.train.folds import assign_folds, holdout_of, standardise
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


def test_folds_on_different_scales_pool_to_their_own_ranking_after_standardising() -> None:
    # Two folds that rank their own patients equally well, on scales far apart (fold 1's
    # logits shifted by +3 and stretched x3): pooled raw, fold 1's negatives outrank fold
    # 0's positives; standardised, the pooled AUC is that of each fold.
    rng = np.random.default_rng(0)
    labels = np.tile([0, 1], 50)
    logit = labels * 1.5 + rng.normal(size=100)
    folds = np.repeat([0, 1], 50)
    shifted = np.where(folds == 1, 3 + 3 * logit, logit)
    oof = pd.DataFrame({"label": labels, "fold": folds, "score": 1 / (1 + np.exp(-shifted))})
    frame, offsets, scales = standardise(oof)
    per_fold = [roc_auc_score(labels[folds == k], logit[folds == k]) for k in (0, 1)]
    assert roc_auc_score(labels, oof["score"]) < min(per_fold) - 0.05
    assert roc_auc_score(labels, frame["score"]) >= min(per_fold) - 0.01
    assert offsets[1] - offsets[0] > 2.5 and 2.5 < scales[1] / scales[0] < 3.5
    # No label is used: the same scores with the labels shuffled standardise the same.
    shuffled = oof.assign(label=rng.permutation(labels))
    assert np.allclose(standardise(shuffled)[0]["score"], frame["score"])
    assert list(frame.columns) == list(oof.columns) and (frame["fold"] == oof["fold"]).all()
