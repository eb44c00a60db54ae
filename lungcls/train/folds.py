"""Patient-grouped k-fold cross-validation over a dataset version's train and val splits.

Why: one validation block chooses the epoch, and evaluation chose the operating point, on
~15 % of the patients. On IQ-OTH/NCCD that picked models that had learned one block's
acquisition rather than the disease (bench/README.md): validation said 0.99, other
patients 0.77. With `train.folds = k > 1` the patients of train and val are dealt into k
folds (stratified by whether a patient has a positive sample, never splitting a patient),
and for each fold a model trains on the others and stops early on it. Then

- every train/val sample has an out-of-fold score from a model that never saw its patient:
  evaluation fits the calibration and chooses the operating point on all of them, not on
  one block (`oof_scores.parquet` beside the model);
- the folds' AUCs show how much the result depends on which patients are held out (the
  report's spread, gated by `promotion.max_fold_spread`);
- the published network averages the k fold models (`ensemble.Ensemble`): no model is
  refitted on data that no fold could validate.

A fold is finished once `runs/<run>/folds/<k>.json` is written (after its weights and
scores): a resumed run skips it, and Ray Train restores an unfinished fold from its
checkpoint as it does a plain run.
"""

from __future__ import annotations

import io
import statistics
from collections.abc import Iterator

import numpy as np
import pandas as pd
import torch
from sklearn.model_selection import StratifiedKFold

from lungcls.config import Settings
from lungcls.dataset.manifest import Manifest
from lungcls.dataset.shards import Sample, iter_samples, read_shard_metadata
from lungcls.evaluate.metrics import has_both_classes
from lungcls.io.integrity import checked_bytes, sha256_of
from lungcls.io.storage import Storage
from lungcls.io.tables import frame_bytes, frame_of
from lungcls.registry.records import BestEpoch, ModelRecord
from lungcls.registry.store import publish_model, read_model_file, serialise_model
from lungcls.train.ensemble import Ensemble, for_inference
from lungcls.train.models import build_model
from lungcls.train.runs import CrossValidation, FoldResult, TrainError, TrainResult
from lungcls.train.scoring import score_samples
from lungcls.train.trainer import (
    Holdout,
    best_epoch,
    fit_with_progress,
    make_trainer,
    model_record,
)

OOF_SCORES = "oof_scores.parquet"
POOLED_SPLITS = ("train", "val")


def patient_labels(storage: Storage, manifest: Manifest) -> dict[str, list[int]]:
    """Each train/val patient's sample labels (read from shard metadata, never tensors)."""
    patients: dict[str, list[int]] = {}
    for split in POOLED_SPLITS:
        for shard in manifest.shards_of(split):
            table = read_shard_metadata(storage, shard.path)
            for patient, label in zip(
                table["patient_id"].to_pylist(), table["label"].to_pylist(), strict=True
            ):
                patients.setdefault(patient, []).append(int(label))
    return patients


def assign_folds(patients: dict[str, list[int]], folds: int, seed: int) -> dict[str, int]:
    """patient -> fold, stratified by whether the patient has a positive sample. The same
    patients, fold count and seed give the same folds on any machine."""
    names = sorted(patients)
    has_positive = [int(max(patients[name]) == 1) for name in names]
    per_class = [has_positive.count(0), has_positive.count(1)]
    if min(per_class) < folds:
        raise TrainError(
            f"{folds}-fold cross-validation needs at least {folds} patients of each class in "
            f"train+val; there are {per_class[0]} without and {per_class[1]} with a positive "
            "sample: lower `train.folds` (1 trains on train and stops on val)"
        )
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    assignment = {}
    for fold, (_, held_out) in enumerate(splitter.split(names, has_positive)):
        for index in held_out:
            assignment[names[index]] = fold
    return assignment


def holdout_of(patients: dict[str, list[int]], assignment: dict[str, int], fold: int) -> Holdout:
    """Fold `fold`'s held-out patients and the class counts of the samples that train."""
    training = [y for p, labels in patients.items() if assignment[p] != fold for y in labels]
    return Holdout(
        patients=frozenset(p for p, k in assignment.items() if k == fold),
        negatives=training.count(0),
        positives=training.count(1),
    )


def _fold_dir(run_id: str) -> str:
    return f"runs/{run_id}/folds"


def held_out_samples(
    storage: Storage, manifest: Manifest, patients: frozenset[str] | set[str]
) -> Iterator[Sample]:
    """The train/val samples of `patients` (a fold's held-out patients)."""
    shards = [s for split in POOLED_SPLITS for s in manifest.shards_of(split)]
    return (s for s in iter_samples(storage, shards) if s.patient_id in patients)


def _auc(scores: pd.DataFrame) -> float | None:
    from sklearn.metrics import roc_auc_score

    labels = scores["label"].to_numpy()
    if not has_both_classes(labels):
        return None
    return float(roc_auc_score(labels, scores["score"].to_numpy()))


def train_fold(
    settings: Settings, manifest: Manifest, run_id: str, fold: int, holdout: Holdout
) -> FoldResult:
    """Train one fold's model (stopping early on its held-out patients), score them, store
    weights and scores, then the fold's record."""
    storage = Storage.from_settings(settings)
    folds = settings.train.folds
    # Another seed per fold: other initial weights and data order make the members differ.
    train = settings.train.model_copy(update={"seed": settings.train.seed + fold})
    fold_settings = settings.model_copy(update={"train": train})
    fold_run = f"{run_id}/fold-{fold}"
    trainer = make_trainer(fold_settings, manifest, fold_run, holdout=holdout)
    result = fit_with_progress(
        trainer, storage, fold_run, train.epochs, prefix=f"fold {fold + 1}/{folds}  "
    )
    weights, best, history = best_epoch(result, train, fold_run)
    model = build_model(settings.model, manifest.tensor_shape, train.seed)
    model.load_state_dict(weights)
    scoring = for_inference(settings.model, model).eval()  # as the published model scores
    scores = score_samples(scoring, held_out_samples(storage, manifest, holdout.patients))
    scores["fold"] = fold
    folder = _fold_dir(run_id)
    buffer = io.BytesIO()
    torch.save(weights, buffer)
    files = {f"{fold}.pt": buffer.getvalue(), f"{fold}-scores.parquet": frame_bytes(scores)}
    for name, data in files.items():
        storage.write_atomic(f"{folder}/{name}", data)
    labels = scores["label"]
    record = FoldResult(
        fold=fold,
        patients=len(holdout.patients),
        positives=int((labels == 1).sum()),
        negatives=int((labels == 0).sum()),
        best_epoch=best.epoch,
        epochs_run=len(history),
        val_auc=_auc(scores),
        history=history,
        files={name: sha256_of(data) for name, data in files.items()},
    )
    record.save(storage, f"{folder}/{fold}.json")  # the fold's commit point
    print(
        f"fold {fold + 1}/{folds}: held-out AUC {record.val_auc} at epoch "
        f"{record.best_epoch + 1} ({record.patients} patients)",
        flush=True,
    )
    return record


def train_folds(settings: Settings, manifest: Manifest, run_id: str) -> TrainResult:
    """Cross-validate on the train and val splits and publish the averaged fold models,
    their out-of-fold scores beside them (folds finished by an earlier attempt are kept)."""
    storage = Storage.from_settings(settings)
    folds = settings.train.folds
    patients = patient_labels(storage, manifest)
    assignment = assign_folds(patients, folds, settings.train.seed)
    results = []
    for fold in range(folds):
        done = f"{_fold_dir(run_id)}/{fold}.json"
        if storage.exists(done):
            results.append(FoldResult.load(storage, done))
            continue
        holdout = holdout_of(patients, assignment, fold)
        results.append(train_fold(settings, manifest, run_id, fold, holdout))
    return _publish(settings, manifest, run_id, results)


def _publish(
    settings: Settings, manifest: Manifest, run_id: str, results: list[FoldResult]
) -> TrainResult:
    storage = Storage.from_settings(settings)
    members = [fold_model(settings, manifest, run_id, result) for result in results]
    raw = pd.concat(
        [read_fold_scores(storage, run_id, r) for r in results], ignore_index=True
    ).sort_values("sample_id", ignore_index=True)
    oof, offsets, scales = standardise(raw)
    cv = CrossValidation(folds=results, oof_auc=_auc(oof))
    # The record's best epoch: the median of the folds' (what a refit would train for).
    best = BestEpoch(
        epoch=int(statistics.median_low(r.best_epoch for r in results)), val_auc=cv.oof_auc
    )
    record = model_record(settings, manifest, run_id, [], best, cross_validation=cv)
    ensemble = Ensemble(members, offsets, scales)
    files = serialise_model(for_inference(settings.model, ensemble), record.tensor_shape)
    files[OOF_SCORES] = frame_bytes(oof)
    version = publish_model(
        storage, settings.model.name, files, record, settings.storage.lease_only
    )
    return TrainResult(
        run_id=run_id,
        model_name=settings.model.name,
        model_version=version,
        best_epoch=best.epoch,
        best_val_auc=cv.oof_auc,
        epochs_run=sum(r.epochs_run for r in results),
        seconds=0.0,
        history=[],
        cross_validation=cv,
    )


def fold_model(
    settings: Settings, manifest: Manifest, run_id: str, result: FoldResult
) -> torch.nn.Module:
    """A finished fold's network, its stored weights loaded (verified against its record)."""
    storage = Storage.from_settings(settings)
    model = build_model(settings.model, manifest.tensor_shape, settings.train.seed)
    weights = _fold_file(storage, _fold_dir(run_id), result, f"{result.fold}.pt")
    model.load_state_dict(torch.load(io.BytesIO(weights), weights_only=True))
    return model


def read_fold_scores(storage: Storage, run_id: str, result: FoldResult) -> pd.DataFrame:
    """A finished fold's scores of its held-out patients, as its model gave them (verified)."""
    return frame_of(_fold_file(storage, _fold_dir(run_id), result, f"{result.fold}-scores.parquet"))


def standardise(oof: pd.DataFrame) -> tuple[pd.DataFrame, list[float], list[float]]:
    """Each fold's held-out scores on one scale: the logit minus the fold's mean logit, over
    their spread (the `Ensemble`'s member offsets and scales, returned in fold order). The
    labels are not used, so nothing is fitted to the outcome."""
    # Scores are float32 sigmoids: 1.0 exactly beyond a logit of ~17; keep logits finite.
    scores = oof["score"].clip(1e-7, 1 - 1e-7)
    logits = np.log(scores) - np.log1p(-scores)
    by_fold = logits.groupby(oof["fold"])
    offsets, scales = by_fold.mean(), by_fold.std(ddof=0).where(lambda v: v > 0, 1.0)
    z = (logits - oof["fold"].map(offsets)) / oof["fold"].map(scales)
    frame = oof.assign(score=1 / (1 + np.exp(-z)))
    return frame, [float(v) for v in offsets], [float(v) for v in scales]


def _fold_file(storage: Storage, folder: str, result: FoldResult, name: str) -> bytes:
    """A file of a finished fold, verified against its record (folds recorded before files
    were hashed: unverified)."""
    return checked_bytes(storage, f"{folder}/{name}", result.files.get(name))


def read_oof_scores(storage: Storage, record: ModelRecord) -> pd.DataFrame:
    """The out-of-fold scores a cross-validated model was published with (verified)."""
    return frame_of(read_model_file(storage, record, OOF_SCORES))
