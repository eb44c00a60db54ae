"""Evaluation: a model version measured on a dataset version's test split, with CIs.

    lungcls evaluate [--name NAME] [--model N | champion] [--dataset NAME --dataset-version D]

The operating point is chosen on the validation split so that it reaches
`evaluation.target_sensitivity` on new patients too (`robust_operating_point`: in
`operating_point_confidence` of patient-bootstrap resamples of val) and applied unchanged to
test; metrics are reported at 0.5
and at that point, each with a patient-level bootstrap 95 % interval, plus a subgroup table
(manufacturer, slice-thickness band, nodule-diameter band). Everything lands in
`models/<name>/v<N>/evaluations/<dataset>-v<D>/`: per-sample scores, PNG plots, report.md,
a self-contained report.html, and report.json written last (the evaluation's commit point).
Inputs are immutable, so an existing report is reused unless `force`.

A dataset other than the model's own (say, another batch imported the same way and built as
`--dataset heldout`) is scored whole, minus anything the model trained or validated on, with
the calibration and operating point of the model's own evaluation: nothing is refitted.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from lungcls.config import Settings
from lungcls.dataset.build import load_manifest
from lungcls.dataset.shards import iter_samples, read_shard_metadata, tensor_from_row
from lungcls.errors import LungclsError
from lungcls.evaluate.metrics import (
    band,
    binary_metrics,
    bootstrap_intervals,
    operating_point,
    robust_operating_point,
    subgroup_table,
)
from lungcls.evaluate.report import render_html, render_markdown, render_plots
from lungcls.io.storage import Storage
from lungcls.registry.store import load_model, load_record, model_dir, read_alias

SCHEMA = "lungcls.evaluation/1"
SCORE_COLUMNS = [
    "sample_id",
    "series_id",
    "patient_id",
    "split",
    "label",
    "score",
    "manufacturer",
    "slice_thickness_mm",
    "nodule_diameter_mm",
]
MODEL_CARD = {
    "intended_use": "Research on lung-nodule malignancy classification from CT patches centered "
    "on a given nodule location. Not a medical device; not for diagnosis or patient care.",
    "not_intended_for": "Clinical decisions, screening programmes, finding nodules (the model "
    "scores a location it is given), populations or scanners unlike the training data.",
    "limitations": [
        "Trained and evaluated on the dataset versions named above only; performance on other "
        "sites, scanners, protocols or populations is unknown.",
        "Small validation and test splits give wide confidence intervals: read the intervals, "
        "not only the point estimates.",
        "The operating point is chosen on validation to reach the target sensitivity; the test "
        "sensitivity at that point can fall below the target.",
        "Synthetic data (phantoms) prove the pipeline, not clinical validity.",
    ],
    "ethical_considerations": "De-identified inputs (keyed pseudonyms, allow-listed "
    "attributes). False negatives delay cancer care: the operating point favours sensitivity.",
}


class EvaluationError(LungclsError):
    """An evaluation cannot run; the message says why."""


@dataclass
class Evaluation:
    report: dict[str, Any]
    folder: str
    scores: pd.DataFrame


def resolve_version(storage: Storage, name: str, ref: str | int | None) -> dict[str, Any]:
    """A model record by number, alias (`champion`, `challenger`) or `None` (the latest)."""
    if isinstance(ref, str) and not ref.isdigit():
        state = read_alias(storage, name, ref)
        if state.version is None:
            raise EvaluationError(f"model {name!r} has no {ref} yet: run `lungcls promote`")
        return load_record(storage, name, state.version)
    return load_record(storage, name, int(ref) if ref is not None else None)


def evaluation_dir(record: dict[str, Any], dataset: str, dataset_version: int) -> str:
    folder = model_dir(record["name"], record["version"])
    return f"{folder}/evaluations/{dataset}-v{dataset_version}"


def score_split(
    storage: Storage, model: torch.nn.Module, manifest: dict[str, Any], split: str
) -> pd.DataFrame:
    """Scores of one split's samples, in sample-id order."""
    paths = [s["path"] for s in manifest["shards"] if s["split"] == split]
    rows: list[dict[str, Any]] = []
    batch: list[np.ndarray] = []

    def flush() -> None:
        if batch:
            with torch.no_grad():
                logits = model(torch.from_numpy(np.stack(batch)))
            for row, score in zip(rows[-len(batch) :], torch.sigmoid(logits).tolist(), strict=True):
                row["score"] = float(score)
            batch.clear()

    for row in iter_samples(storage, paths):
        batch.append(tensor_from_row(row).astype(np.float32))
        rows.append({c: row.get(c) for c in SCORE_COLUMNS if c != "score"})
        if len(batch) == 32:
            flush()
    flush()
    frame = pd.DataFrame(rows, columns=SCORE_COLUMNS)
    return frame.sort_values("sample_id").reset_index(drop=True)


def fit_calibration(labels: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """Platt scaling on validation: p = sigmoid(slope * logit(score) + intercept).

    Class weights and early stopping leave the network's probabilities squeezed toward the
    middle; a monotone recalibration fixes the calibration without changing the ranking
    (AUC) and is fitted on validation only, like the operating point.
    """
    from sklearn.linear_model import LogisticRegression

    fitted = LogisticRegression(C=1.0).fit(_logit(scores).reshape(-1, 1), labels)
    return {
        "method": "platt",
        "fitted_on": "val",
        "slope": float(fitted.coef_[0, 0]),
        "intercept": float(fitted.intercept_[0]),
    }


def calibrate(scores: np.ndarray, calibration: dict[str, float]) -> np.ndarray:
    z = calibration["slope"] * _logit(scores) + calibration["intercept"]
    return 1.0 / (1.0 + np.exp(-z))


def _logit(scores: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(scores, dtype=np.float64), 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


def _metrics_at(test: pd.DataFrame, threshold: float, settings: Settings) -> dict[str, Any]:
    labels, scores = test["label"].to_numpy(), test["score"].to_numpy()
    values = binary_metrics(labels, scores, threshold)
    intervals = bootstrap_intervals(
        labels,
        scores,
        test["patient_id"].to_numpy(),
        threshold,
        settings.evaluation.bootstrap_rounds,
        settings.evaluation.bootstrap_seed,
    )
    return {
        "threshold": threshold,
        "values": values,
        "ci95": {k: list(v) for k, v in intervals.items()},
    }


def _split_summary(frame: pd.DataFrame) -> dict[str, int]:
    return {
        "samples": len(frame),
        "positives": int(frame["label"].sum()),
        "patients": int(frame["patient_id"].nunique()),
    }


def load_scores(storage: Storage, folder: str) -> pd.DataFrame:
    return pq.read_table(io.BytesIO(storage.read_bytes(f"{folder}/scores.parquet"))).to_pandas()


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
    home = record["dataset"]["name"]
    dataset = dataset or home
    external = dataset != home
    manifest = load_manifest(
        storage, dataset, dataset_version or (None if external else record["dataset"]["version"])
    )
    if manifest["preprocess"]["hash"] != record["preprocess"]["hash"]:
        raise EvaluationError(
            f"dataset {dataset} v{manifest['version']} was preprocessed differently "
            f"({manifest['preprocess']['hash']}) from the model's training data "
            f"({record['preprocess']['hash']}): scores would be meaningless; build it with "
            "the model's preprocessing settings"
        )
    folder = evaluation_dir(record, dataset, manifest["version"])
    if storage.exists(f"{folder}/report.json") and not force:
        report = json.loads(storage.read_bytes(f"{folder}/report.json"))
        return Evaluation(report, folder, load_scores(storage, folder))

    model = load_model(storage, record)
    if external:
        reference = evaluate_model(settings, record["name"], record["version"])
        scoring = _external_scores(storage, model, record, manifest, reference)
    else:
        scoring = _own_scores(storage, model, manifest, settings)
    frames, point = scoring.frames, scoring.operating_point
    threshold = point["threshold"]
    scored = frames[scoring.measured_on]
    scope = "external: every sample the model did not see" if external else "test split"
    report = {
        "schema": SCHEMA,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "model": {
            "name": record["name"],
            "version": record["version"],
            "train_run": record["train_run"],
            "trained_on": record["dataset"],
        },
        "dataset": {"name": dataset, "version": manifest["version"]},
        **({"external": scoring.facts} if external else {}),
        "splits": {split: _split_summary(frame) for split, frame in frames.items()},
        "calibration": scoring.calibration,
        "operating_point": point,
        "contracts": manifest["contracts"],
        "model_card": {
            **MODEL_CARD,
            "data": f"Trained on {home} v{record['dataset']['version']}; evaluated on "
            f"{dataset} v{manifest['version']} ({scope}).",
        },
    }
    _add_metrics(report, scored, threshold, settings)
    plots = render_plots(
        scored["label"].to_numpy(),
        scored["score"].to_numpy(),
        scored["patient_id"].to_numpy(),
        threshold,
        settings.evaluation.bootstrap_rounds,
        settings.evaluation.bootstrap_seed,
    )
    report["plots"] = sorted(plots)
    for file_name, data in plots.items():
        storage.write_atomic(f"{folder}/{file_name}", data)
    scores = pd.concat(list(frames.values()), ignore_index=True)
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pandas(scores, preserve_index=False), buffer)
    storage.write_atomic(f"{folder}/scores.parquet", buffer.getvalue())
    storage.write_atomic(f"{folder}/report.md", render_markdown(report).encode())
    storage.write_atomic(f"{folder}/report.html", render_html(report, plots).encode())
    storage.write_atomic(
        f"{folder}/report.json", json.dumps(report, indent=2, default=_json).encode()
    )
    return Evaluation(report, folder, scores)


def _add_metrics(
    report: dict[str, Any], scored: pd.DataFrame, threshold: float, settings: Settings
) -> None:
    """Metrics at 0.5 and at the operating point, and the subgroup table, on `scored`."""
    e = settings.evaluation
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
    report["metrics"] = {
        "at_0.5": _metrics_at(scored, 0.5, settings),
        "at_operating_point": _metrics_at(scored, threshold, settings),
    }
    report["subgroups"] = subgroup_table(
        scored["label"].to_numpy(), scored["score"].to_numpy(), threshold, attributes
    )
    report["bootstrap"] = {
        "rounds": e.bootstrap_rounds,
        "seed": e.bootstrap_seed,
        "unit": "patient",
        "level": 0.95,
    }


@dataclass
class _Scoring:
    """Calibrated scores by split, which split the metrics are measured on, and how the
    calibration and operating point were obtained."""

    frames: dict[str, pd.DataFrame]
    measured_on: str
    calibration: dict[str, Any]
    operating_point: dict[str, Any]
    facts: dict[str, Any]


def _calibrated(frames: dict[str, pd.DataFrame], calibration: dict[str, Any]) -> None:
    for frame in frames.values():
        frame["raw_score"] = frame["score"]
        frame["score"] = calibrate(frame["raw_score"].to_numpy(), calibration)


def _own_scores(
    storage: Storage, model: torch.nn.Module, manifest: dict[str, Any], settings: Settings
) -> _Scoring:
    """The model's own dataset: calibration and operating point fitted on val, measured on
    test."""
    frames = {split: score_split(storage, model, manifest, split) for split in ("val", "test")}
    for split, frame in frames.items():
        if frame["label"].nunique() < 2:
            raise EvaluationError(f"the {split} split needs both classes to be evaluated")
    val = frames["val"]
    calibration = fit_calibration(val["label"].to_numpy(), val["score"].to_numpy())
    _calibrated(frames, calibration)
    e = settings.evaluation
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
    point = {
        "target_sensitivity": e.target_sensitivity,
        "threshold": threshold,
        "chosen_on": "val",
        "confidence": e.operating_point_confidence,
        "val_threshold_at_target": operating_point(labels, scores, e.target_sensitivity),
        "val_sensitivity": on_val["sensitivity"],
        "val_specificity": on_val["specificity"],
    }
    return _Scoring(frames, "test", calibration, point, {})


def _external_scores(
    storage: Storage,
    model: torch.nn.Module,
    record: dict[str, Any],
    manifest: dict[str, Any],
    reference: Evaluation,
) -> _Scoring:
    """Every sample of an external dataset that the model never saw, calibrated and
    thresholded as in `reference`, the model's evaluation on its own dataset."""
    home = load_manifest(storage, record["dataset"]["name"], record["dataset"]["version"])
    seen = {
        series
        for shard in home["shards"]
        if shard["split"] in ("train", "val")
        for series in read_shard_metadata(storage, shard["path"])["series_id"].to_pylist()
    }
    splits = sorted({s["split"] for s in manifest["shards"]})
    frame = pd.concat([score_split(storage, model, manifest, s) for s in splits])
    unseen = frame[~frame["series_id"].isin(seen)].sort_values("sample_id")
    if unseen["label"].nunique() < 2:
        raise EvaluationError(
            f"dataset {manifest['name']} v{manifest['version']} holds {len(unseen)} samples "
            "the model did not see, not of both classes: nothing to evaluate"
        )
    frames = {"external": unseen.reset_index(drop=True)}
    calibration = reference.report["calibration"]
    _calibrated(frames, calibration)
    origin = reference.report["dataset"]
    chosen_on = f"val of {origin['name']} v{origin['version']}"
    facts = {
        "samples_scored": len(unseen),
        "excluded_seen_in_training": len(frame) - len(unseen),
        "calibration_and_operating_point_from": chosen_on,
    }
    point = {**reference.report["operating_point"], "chosen_on": chosen_on}
    return _Scoring(frames, "external", calibration, point, facts)


def _json(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot serialise {type(value).__name__}")
