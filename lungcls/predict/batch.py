"""Prediction: score new CT series with the champion (or a named model version).

    lungcls predict PATH_OR_URL [--center X,Y,Z] [--model-version N] [--saliency DIR]
    lungcls predict --batch NAME            every archive of an inbox batch -> Parquet + CSV

The input is a DICOM file, a series folder or an archive, local or `s3://`. It goes through
the same code as training data: `decode_archive` (ingest's reader, checks and HU), then
`preprocess_series` with the model's recorded preprocessing, then the same float16 rounding
the dataset shards apply, so a series scores exactly as it did in evaluation. The patch is
centered on `--center` (patient mm), else on the nodule center in a `labels.csv` beside the
input, else on the largest lung (the model was trained on nodule-centered patches: give a
center when you have one); a model trained on whole slices (`crop_center: image`) takes the
image center. The decision uses the operating point of the model's evaluation.

Predictions name their input by keyed pseudonyms only, never by path (PACS exports name
folders and files after patients): `series_id` as the series store does, and `archive_id`
= `pseudonym(key, "archive", <SHA-256 of the input's bytes>)` as ingest does, so
`predictions.csv` can go to people who may not see the inbox. The operator maps back
through the ledger (the operator's view, with the inbox's access): `predict --batch` writes
`ledger/predict/<run>.csv`, each archive_id with its input's URL and outcome; a single
input is the one the operator named. Logs and errors name inputs by archive_id and refusal
code, never by path or member name.
"""

from __future__ import annotations

import logging
import posixpath
from dataclasses import asdict, dataclass, fields

import numpy as np
import torch
from tqdm import tqdm

from lungcls.config import PreprocessSettings, Settings
from lungcls.errors import LungclsError
from lungcls.evaluate.calibration import calibrate
from lungcls.evaluate.evaluation import resolve_version
from lungcls.evaluate.report import Calibration
from lungcls.evaluate.store import latest_report
from lungcls.ingest.archive import ArchiveRef, archive_kind, discover_archives
from lungcls.ingest.ct_volume import CTVolume
from lungcls.ingest.deid import pseudonym_key
from lungcls.ingest.labels import BatchLabels, parse_labels
from lungcls.io.compute import map_unordered
from lungcls.io.storage import Storage
from lungcls.predict.prepare import (
    Center,
    ModelInput,
    PreparedInput,
    PreparedSeries,
    prepare_input,
)
from lungcls.registry.records import ModelRecord
from lungcls.registry.store import load_model

log = logging.getLogger(__name__)

INPUTS_DIR = "ledger/predict"  # operator-only: archive_id -> input URL, per batch run
SCORE_BATCH = 32  # series per forward pass: x4.7 the series/s of one at a time (bench/predict.py)


class PredictError(LungclsError):
    """A prediction cannot be made; the message says why (naming no path).

    `archive_id` names the refused input where it is known."""

    def __init__(self, message: str, archive_id: str = "") -> None:
        super().__init__(message)
        self.archive_id = archive_id


@dataclass
class Prediction:
    series_id: str  # pseudonym: the output never holds raw identifiers
    archive_id: str  # pseudonym of the input's bytes; never its path (see the module doc)
    probability: float
    decision: str  # "positive" or "negative" at the threshold
    threshold: float
    threshold_source: str  # "operating point (val)" or "0.5 (no evaluation found)"
    center: str  # "given", "labels", "lung", or "image" (the model takes whole slices)
    model: str
    model_version: int


@dataclass
class Scorer:
    """A loaded model with everything needed to score a series the way it was evaluated."""

    model: torch.nn.Module
    record: ModelRecord
    preprocess: PreprocessSettings
    dtype: str
    threshold: float
    threshold_source: str
    calibration: Calibration | None
    key: bytes  # the pseudonymisation key: outputs name series as the store does

    @classmethod
    def load(cls, settings: Settings, version: str | int | None) -> Scorer:
        """The model (default: the champion) with the operating point and calibration of
        its evaluation on its own dataset; 0.5 and raw probabilities when it has none."""
        storage = Storage.from_settings(settings)
        record = resolve_version(storage, settings.model.name, version or "champion")
        report = latest_report(storage, record, record.dataset)
        threshold, source, calibration = 0.5, "0.5 (no evaluation found)", None
        if report is not None:
            threshold = report.operating_point.threshold
            source = "operating point (val)"
            calibration = report.calibration
        return cls(
            load_model(storage, record),
            record,
            record.preprocess.config,
            record.tensor_dtype,
            threshold,
            source,
            calibration,
            pseudonym_key(settings, storage),
        )

    @property
    def input(self) -> ModelInput:
        return ModelInput(self.preprocess, self.dtype)

    def tensor(self, volume: CTVolume, center_xyz_mm: Center | None) -> np.ndarray:
        return self.input.tensor(volume, center_xyz_mm)

    def score(self, tensors: list[np.ndarray]) -> list[float]:
        """Probabilities, calibrated as in the model's evaluation when there is one."""
        with torch.no_grad():
            raw = torch.sigmoid(self.model(torch.from_numpy(np.stack(tensors)))).numpy()
        if self.calibration is not None:
            raw = calibrate(raw, self.calibration)
        return [float(p) for p in raw]

    def prediction(self, archive_id: str, series: PreparedSeries, probability: float) -> Prediction:
        return Prediction(
            series_id=series.series_id,
            archive_id=archive_id,
            probability=probability,
            decision="positive" if probability >= self.threshold else "negative",
            threshold=self.threshold,
            threshold_source=self.threshold_source,
            center=series.center,
            model=self.record.name,
            model_version=self.record.version,
        )


def _labels_in(storage: Storage, key: bytes) -> BatchLabels:
    """The labels.csv at the root of `storage`, or none."""
    if not storage.exists("labels.csv"):
        return BatchLabels([], [])
    return parse_labels(storage.read_text("labels.csv"), key)


def _ref_for(storage: Storage, rel: str) -> ArchiveRef:
    """An archive, a folder of files or a single file, as something the archive reader reads.

    Errors do not repeat the path: the operator knows which input they named."""
    if storage.fs.isdir(storage.path(rel)):
        files = tuple(storage.list_files(rel))
        if not files:
            raise PredictError("the input folder holds no files")
        return ArchiveRef(rel.rstrip("/") + "/", "", "folder", files)
    if not storage.exists(rel):
        raise PredictError("the input does not exist: check the path or URL given")
    info = storage.info(rel)
    return ArchiveRef(rel, "", archive_kind(rel) or "folder", (info,))


def predict_source(
    settings: Settings,
    source: str,
    center: Center | None = None,
    version: str | int | None = None,
    scorer: Scorer | None = None,
    saliency_dir: str | None = None,
    labels: BatchLabels | None = None,
) -> list[Prediction]:
    """Score every series in one DICOM file, series folder or archive.

    With `saliency_dir`, a Grad-CAM overlay per series is written there as
    `<series pseudonym>.png`. `labels` defaults to a `labels.csv` beside the input.
    """
    scorer = scorer or Scorer.load(settings, version)
    parent, name = posixpath.split(source.rstrip("/"))
    storage = Storage(parent or ".", settings.s3_endpoint_url)
    if labels is None:
        labels = _labels_in(storage, scorer.key)
    ref = _ref_for(storage, name)
    prepared = prepare_input(
        storage, ref, settings.ingest, scorer.key, labels, scorer.input, center
    )
    _log_refused(prepared)
    if prepared.refusal:
        raise PredictError(prepared.refusal, prepared.archive_id)
    predictions = [p for _, p in _score(scorer, [(prepared, s) for s in prepared.series])]
    if saliency_dir is not None:
        for series, prediction in zip(prepared.series, predictions, strict=True):
            path = f"{saliency_dir}/{series.series_id}.png"
            _write_saliency(scorer, series.tensor, path, prediction.probability)
    return predictions


def _log_refused(prepared: PreparedInput) -> None:
    """What was refused in one input, by code: item messages and members may name files."""
    for what, n in sorted(prepared.refused.items()):
        log.warning("input %s: %d %s refused", prepared.archive_id, n, what)


def _write_saliency(scorer: Scorer, tensor: np.ndarray, path: str, probability: float) -> None:
    from pathlib import Path

    from lungcls.predict.saliency import grad_cam, overlay_png

    cam = grad_cam(scorer.model, torch.from_numpy(tensor[None]))  # type: ignore[arg-type]
    title = f"p(malignant) = {probability:.3f}, model v{scorer.record.version}"
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_bytes(overlay_png(tensor, cam, title))


def predict_batch(
    settings: Settings,
    batch: str,
    version: str | int | None = None,
    out: str | None = None,
    progress: bool = True,
) -> tuple[list[Prediction], str]:
    """Score every archive of `inbox/<batch>`; write predictions as Parquet and CSV, and
    for the operator which input each archive_id was (`ledger/predict/<run>.csv`).

    The inputs are prepared (decoded, checked, preprocessed) as parallel tasks wherever
    `ray.executor` says, as ingest reads archives; the model scores what comes back in
    batches of `SCORE_BATCH`. Outputs list the inputs in the order they were found."""
    import pandas as pd

    from lungcls.io.runs import new_run_id

    storage = Storage.from_settings(settings)
    scorer = Scorer.load(settings, version)
    archives, _ = discover_archives(storage, settings.ingest.inbox)
    archives = [a for a in archives if a.batch == batch]
    if not archives:  # the operator named the batch: no need to repeat its folder name
        raise PredictError(f"no archives in that batch of {storage.url(settings.ingest.inbox)}")
    batch_dir = Storage(storage.url(f"{settings.ingest.inbox}/{batch}"), settings.s3_endpoint_url)
    labels = _labels_in(batch_dir, scorer.key)  # read once, not once per archive
    run_id = new_run_id("predict")
    order = {ref.key: i for i, ref in enumerate(archives)}  # as discovered, in the outputs
    scored: dict[str, list[Prediction]] = {}
    inputs: dict[str, dict[str, object]] = {}  # operator-only: archive_id -> input URL
    waiting: list[tuple[PreparedInput, PreparedSeries]] = []  # the next forward batch
    jobs = [(storage, ref, settings.ingest, scorer.key, labels, scorer.input) for ref in archives]
    bar = tqdm(total=len(jobs), desc="predict", unit="input", disable=not progress)
    for done, prepared in enumerate(map_unordered(prepare_input, jobs, settings), start=1):
        bar.update(1)  # fanned out as ingest's reading; scored below as batches fill
        _log_refused(prepared)
        url = storage.url(prepared.key)
        outcome = prepared.refusal or f"scored {len(prepared.series)} series"
        if prepared.refusal:
            log.warning("input %s: not scored: %s", prepared.archive_id, prepared.refusal)
        inputs[prepared.key] = {"archive_id": prepared.archive_id, "input": url, "outcome": outcome}
        waiting += [(prepared, series) for series in prepared.series]
        if len(waiting) >= SCORE_BATCH or done == len(jobs):
            for of, prediction in _score(scorer, waiting):
                scored.setdefault(of.key, []).append(prediction)
            waiting.clear()
    bar.close()
    predictions = [p for key in sorted(scored, key=order.__getitem__) for p in scored[key]]
    out = out or f"predictions/{run_id}"
    columns = [f.name for f in fields(Prediction)]  # the header even when nothing scored
    frame = pd.DataFrame([asdict(p) for p in predictions], columns=columns)
    storage.write_atomic(f"{out}/predictions.csv", frame.to_csv(index=False).encode())
    storage.write_atomic(f"{out}/predictions.parquet", frame.to_parquet(index=False))
    rows = [inputs[key] for key in sorted(inputs, key=order.__getitem__)]
    mapping = pd.DataFrame(rows, columns=["archive_id", "input", "outcome"])
    mapping.insert(0, "predictions", storage.url(out))
    storage.write_atomic(f"{INPUTS_DIR}/{run_id}.csv", mapping.to_csv(index=False).encode())
    return predictions, storage.url(out)


def _score(
    scorer: Scorer, waiting: list[tuple[PreparedInput, PreparedSeries]]
) -> list[tuple[PreparedInput, Prediction]]:
    """The waiting series scored in forward passes of up to `SCORE_BATCH`, each with the
    input it came from."""
    scored = []
    for start in range(0, len(waiting), SCORE_BATCH):
        chunk = waiting[start : start + SCORE_BATCH]
        probabilities = scorer.score([series.tensor for _, series in chunk])
        for (prepared, series), probability in zip(chunk, probabilities, strict=True):
            scored.append((prepared, scorer.prediction(prepared.archive_id, series, probability)))
    return scored
