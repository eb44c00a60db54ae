"""Evaluation: a model version measured on a dataset version's test split, with CIs.

    lungcls evaluate [--name NAME] [--model N | champion] [--dataset NAME --dataset-version D]

The operating point is chosen on the validation split so that it reaches
`evaluation.target_sensitivity` on new patients too (`robust_operating_point`: in
`operating_point_confidence` of patient-bootstrap resamples of val) and applied unchanged to
test; metrics are reported at 0.5 and at that point, each with a patient-level bootstrap
95 % interval, plus a subgroup table (manufacturer, slice-thickness band, nodule-diameter
band). Everything lands in `models/<name>/v<N>/evaluations/<dataset>-v<D>/v<K>/`
(`evaluate.store`): per-sample scores, PNG plots, report.md, a self-contained report.html,
and report.json (`EvaluationReport`) written last (the evaluation's commit point). Inputs
are immutable, so the latest report is reused unless `force`, which writes the next `v<K>`.

A dataset other than the model's own (say, another batch imported the same way and built as
`--dataset heldout`) is scored whole, minus anything the model trained or validated on, with
the calibration and operating point of the model's own evaluation: nothing is refitted.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import pandas as pd
import torch

from lungcls.config import EvaluationSettings, Settings
from lungcls.dataset.manifest import DatasetRef, Manifest, load_manifest
from lungcls.dataset.shards import iter_samples, read_shard_metadata
from lungcls.errors import LungclsError
from lungcls.evaluate.bootstrap import bootstrap_intervals
from lungcls.evaluate.calibration import calibrate, fit_calibration
from lungcls.evaluate.metrics import band, binary_metrics, subgroup_table
from lungcls.evaluate.operating_point import operating_point, robust_operating_point
from lungcls.evaluate.plots import render_plots
from lungcls.evaluate.report import (
    BootstrapSettings,
    Calibration,
    ClassSupport,
    CrossValidationSummary,
    EvaluationReport,
    ExternalFacts,
    FoldScore,
    MetricsAtThresholds,
    MetricsBlock,
    ModelCard,
    ModelInfo,
    OperatingPoint,
    SplitSummary,
    SubgroupRow,
)
from lungcls.evaluate.store import latest_report, load_scores, write_evaluation
from lungcls.io.storage import Storage
from lungcls.registry.aliases import read_alias
from lungcls.registry.records import ModelRecord
from lungcls.registry.store import load_model, load_record
from lungcls.train.folds import read_oof_scores
from lungcls.train.runs import CrossValidation
from lungcls.train.scoring import score_samples


class EvaluationError(LungclsError):
    """An evaluation cannot run; the message says why."""


@dataclass
class Evaluation:
    """A finished evaluation: its report, its folder and the per-sample scores."""

    report: EvaluationReport
    folder: str
    scores: pd.DataFrame


def resolve_version(storage: Storage, name: str, ref: str | int | None) -> ModelRecord:
    """A model record by number, alias (`champion`) or `None` (the latest)."""
    if isinstance(ref, str) and not ref.isdigit():
        state = read_alias(storage, name, ref)
        if state.version is None:
            raise EvaluationError(f"model {name!r} has no {ref} yet: run `lungcls promote`")
        return load_record(storage, name, state.version)
    return load_record(storage, name, int(ref) if ref is not None else None)


def score_split(
    storage: Storage, model: torch.nn.Module, manifest: Manifest, split: str
) -> pd.DataFrame:
    """Raw network probabilities of one split's samples, in sample-id order."""
    return score_samples(model, iter_samples(storage, manifest.shards_of(split)))


def evaluate_model(
    settings: Settings,
    name: str | None = None,
    version: str | int | None = None,
    dataset: str | None = None,
    dataset_version: int | None = None,
    force: bool = False,
) -> Evaluation:
    """Evaluate a model version (default: the latest) on a dataset version's test split.

    A dataset of another name than the model's training dataset is external (e.g. a held-out
    image set imported as its own batch): every sample the model did not train or validate
    on is scored, and the calibration and operating point come unchanged from the model's
    evaluation on its own validation split, so nothing is fitted on the external data.
    """
    storage = Storage.from_settings(settings)
    record = resolve_version(storage, name or settings.model.name, version)
    manifest = _evaluated_manifest(storage, record, dataset, dataset_version)
    existing = latest_report(storage, record, manifest.ref)
    if existing is not None and not force:
        return Evaluation(existing, existing.folder, load_scores(storage, existing))

    model = load_model(storage, record)
    if manifest.name != record.dataset.name:
        reference = evaluate_model(settings, record.name, record.version)
        scoring = _external_scores(storage, model, record, manifest, reference.report)
    else:
        scoring = _own_scores(storage, model, record, manifest, settings.evaluation)
    report = _report(record, manifest, scoring, settings.evaluation)
    if record.cross_validation and "oof" in scoring.frames:
        report.cross_validation = _cross_validation(
            record.cross_validation, scoring.frames["oof"], settings.evaluation
        )
    scored = scoring.frames[scoring.measured_on]
    plots = render_plots(
        scored["label"].to_numpy(),
        scored["score"].to_numpy(),
        scored["patient_id"].to_numpy(),
        scoring.operating_point.threshold,
        settings.evaluation.bootstrap_rounds,
        settings.evaluation.bootstrap_seed,
    )
    report.plots = sorted(plots)
    scores = pd.concat(list(scoring.frames.values()), ignore_index=True)
    write_evaluation(storage, report, plots, scores, settings.promotion.max_fold_spread)
    return Evaluation(report, report.folder, scores)


def _evaluated_manifest(
    storage: Storage, record: ModelRecord, dataset: str | None, dataset_version: int | None
) -> Manifest:
    """The dataset version to evaluate on (default: the model's own), checked to have been
    preprocessed as the model's training data was."""
    home = record.dataset
    external = dataset is not None and dataset != home.name
    if external:
        manifest = load_manifest(storage, dataset, dataset_version)
    else:
        manifest = load_manifest(storage, home.name, dataset_version or home.version)
    if manifest.preprocess.hash != record.preprocess.hash:
        raise EvaluationError(
            f"dataset {manifest.ref} was preprocessed differently "
            f"({manifest.preprocess.hash}) from the model's training data "
            f"({record.preprocess.hash}): scores would be meaningless; build it with "
            "the model's preprocessing settings"
        )
    return manifest


@dataclass
class _Scoring:
    """Calibrated scores by split, which split the metrics are measured on, and how the
    calibration and operating point were obtained."""

    frames: dict[str, pd.DataFrame]
    measured_on: str
    calibration: Calibration
    operating_point: OperatingPoint
    external: ExternalFacts | None = None


def _report(
    record: ModelRecord, manifest: Manifest, scoring: _Scoring, e: EvaluationSettings
) -> EvaluationReport:
    """The report of a scoring, without its plots yet."""
    scored = scoring.frames[scoring.measured_on]
    threshold = scoring.operating_point.threshold
    scope = "external: every sample the model did not see" if scoring.external else "test split"
    return EvaluationReport(
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        model=ModelInfo(
            name=record.name,
            version=record.version,
            train_run=record.train_run,
            trained_on=record.dataset,
        ),
        dataset=manifest.ref,
        external=scoring.external,
        splits={split: _split_summary(frame) for split, frame in scoring.frames.items()},
        calibration=scoring.calibration,
        operating_point=scoring.operating_point,
        contracts=manifest.contracts,
        model_card=ModelCard.standard(
            f"Trained on {record.dataset}; evaluated on {manifest.ref} ({scope})."
        ),
        metrics=MetricsAtThresholds(
            at_half=_metrics_at(scored, 0.5, e),
            at_operating_point=_metrics_at(scored, threshold, e),
        ),
        subgroups=_subgroups(scored, threshold, e),
        bootstrap=BootstrapSettings(
            rounds=e.bootstrap_rounds, seed=e.bootstrap_seed, unit="patient", level=0.95
        ),
        plots=[],
        class_support=ClassSupport.of(
            scored["label"].to_numpy(), scored["patient_id"].to_numpy(), e.min_patients_per_class
        ),
    )


def _cross_validation(
    cv: CrossValidation, oof: pd.DataFrame, e: EvaluationSettings
) -> CrossValidationSummary:
    """The folds' held-out AUCs and the pooled out-of-fold AUC with its patient-bootstrap
    interval (raw scores: calibration does not change an AUC)."""
    labels, scores = oof["label"].to_numpy(), oof["raw_score"].to_numpy()
    patients = oof["patient_id"].to_numpy()
    low, high = bootstrap_intervals(
        labels,
        scores,
        patients,
        0.5,
        e.bootstrap_rounds,
        e.bootstrap_seed,
        min_patients_per_class=e.min_patients_per_class,
    )["roc_auc"]
    return CrossValidationSummary(
        folds=[
            FoldScore(
                fold=f.fold,
                patients=f.patients,
                positives=f.positives,
                negatives=f.negatives,
                roc_auc=f.val_auc,
                best_epoch=f.best_epoch,
            )
            for f in cv.folds
        ],
        oof_roc_auc=cv.oof_auc,
        oof_roc_auc_ci95=(low, high),
    )


def _split_summary(frame: pd.DataFrame) -> SplitSummary:
    return SplitSummary(
        samples=len(frame),
        positives=int(frame["label"].sum()),
        patients=int(frame["patient_id"].nunique()),
    )


def _metrics_at(scored: pd.DataFrame, threshold: float, e: EvaluationSettings) -> MetricsBlock:
    labels, scores = scored["label"].to_numpy(), scored["score"].to_numpy()
    intervals = bootstrap_intervals(
        labels,
        scores,
        scored["patient_id"].to_numpy(),
        threshold,
        e.bootstrap_rounds,
        e.bootstrap_seed,
        min_patients_per_class=e.min_patients_per_class,
    )
    return MetricsBlock(
        threshold=threshold, values=binary_metrics(labels, scores, threshold), ci95=intervals
    )


def _subgroups(scored: pd.DataFrame, threshold: float, e: EvaluationSettings) -> list[SubgroupRow]:
    """Metrics by manufacturer, slice-thickness band and nodule-diameter band."""
    attributes = {
        "manufacturer": list(scored["manufacturer"]),
        "slice thickness": [
            band(v, e.slice_thickness_bands_mm, "mm") for v in scored["slice_thickness_mm"]
        ],
        "nodule diameter": [
            band(v, e.nodule_diameter_bands_mm, "mm") if v == v else None
            for v in scored["nodule_diameter_mm"]
        ],
    }
    rows = subgroup_table(
        scored["label"].to_numpy(), scored["score"].to_numpy(), threshold, attributes
    )
    return [SubgroupRow.model_validate(row) for row in rows]


def _calibrated(frames: dict[str, pd.DataFrame], calibration: Calibration) -> None:
    for frame in frames.values():
        frame["raw_score"] = frame["score"]
        frame["score"] = calibrate(frame["raw_score"].to_numpy(), calibration)


def _own_scores(
    storage: Storage,
    model: torch.nn.Module,
    record: ModelRecord,
    manifest: Manifest,
    e: EvaluationSettings,
) -> _Scoring:
    """The model's own dataset: calibration and operating point fitted on val — for a
    cross-validated model on the out-of-fold scores of train and val —, measured on test."""
    fitted_on = "oof" if record.cross_validation else "val"
    frames = {"test": score_split(storage, model, manifest, "test")}
    if record.cross_validation:
        frames["oof"] = read_oof_scores(storage, record)
    else:
        frames["val"] = score_split(storage, model, manifest, "val")
    if frames[fitted_on]["label"].nunique() < 2:
        raise EvaluationError(f"the {fitted_on} scores need both classes to fit an operating point")
    val = frames[fitted_on]
    calibration = fit_calibration(val["label"].to_numpy(), val["score"].to_numpy())
    calibration = calibration.model_copy(update={"fitted_on": fitted_on})
    _calibrated(frames, calibration)
    labels, scores = val["label"].to_numpy(), val["score"].to_numpy()
    threshold = robust_operating_point(
        labels,
        scores,
        val["patient_id"].to_numpy(),
        e.target_sensitivity,
        e.operating_point_confidence,
        e.bootstrap_rounds,
        e.bootstrap_seed,
    )
    on_val = binary_metrics(labels, scores, threshold)
    point = OperatingPoint(
        target_sensitivity=e.target_sensitivity,
        threshold=threshold,
        chosen_on=(
            f"out-of-fold scores of {len(record.cross_validation.folds)} folds over train+val"
            if record.cross_validation
            else "val"
        ),
        confidence=e.operating_point_confidence,
        val_threshold_at_target=operating_point(labels, scores, e.target_sensitivity),
        val_sensitivity=on_val["sensitivity"],
        val_specificity=on_val["specificity"],
    )
    return _Scoring(frames, "test", calibration, point)


def _seen_series(storage: Storage, home: DatasetRef) -> set[str]:
    """Series of a dataset version's train and val splits: what its models have seen."""
    manifest = load_manifest(storage, home.name, home.version)
    return {
        series
        for shard in manifest.shards
        if shard.split in ("train", "val")
        for series in read_shard_metadata(storage, shard.path)["series_id"].to_pylist()
    }


def _external_scores(
    storage: Storage,
    model: torch.nn.Module,
    record: ModelRecord,
    manifest: Manifest,
    reference: EvaluationReport,
) -> _Scoring:
    """Every sample of an external dataset that the model never saw, calibrated and
    thresholded as in `reference`, the model's evaluation on its own dataset."""
    seen = _seen_series(storage, record.dataset)
    frame = pd.concat([score_split(storage, model, manifest, s) for s in manifest.splits_present])
    unseen = frame[~frame["series_id"].isin(seen)].sort_values("sample_id")
    if unseen["label"].nunique() < 2:
        raise EvaluationError(
            f"dataset {manifest.ref} holds {len(unseen)} samples the model did not see, not "
            "of both classes: nothing to evaluate"
        )
    frames = {"external": unseen.reset_index(drop=True)}
    _calibrated(frames, reference.calibration)
    chosen_on = f"{reference.operating_point.chosen_on} of {reference.dataset}"
    facts = ExternalFacts(
        samples_scored=len(unseen),
        excluded_seen_in_training=len(frame) - len(unseen),
        calibration_and_operating_point_from=chosen_on,
    )
    point = reference.operating_point.model_copy(update={"chosen_on": chosen_on})
    return _Scoring(frames, "external", reference.calibration, point, facts)
