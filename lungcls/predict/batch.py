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
"""

from __future__ import annotations

import logging
import posixpath
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch

from lungcls.config import PreprocessSettings, Settings
from lungcls.dataset.preprocess import preprocess_series
from lungcls.errors import LungclsError
from lungcls.evaluate.calibration import calibrate
from lungcls.evaluate.evaluation import resolve_version
from lungcls.evaluate.report import Calibration, EvaluationReport, evaluation_dir
from lungcls.ingest.archive import ArchiveRef, archive_kind, discover_archives
from lungcls.ingest.decode import decode_archive
from lungcls.ingest.deid import pseudonym, pseudonym_key
from lungcls.ingest.dicom_series import CTVolume
from lungcls.ingest.labels import BatchLabels, parse_labels
from lungcls.io.storage import Storage
from lungcls.registry.records import ModelRecord
from lungcls.registry.store import load_model

log = logging.getLogger(__name__)


class PredictError(LungclsError):
    """A prediction cannot be made; the message says why."""


@dataclass
class Prediction:
    series_id: str  # pseudonym: the output never holds raw identifiers
    source: str
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
        path = f"{evaluation_dir(record, record.dataset)}/report.json"
        threshold, source, calibration = 0.5, "0.5 (no evaluation found)", None
        if storage.exists(path):
            report = EvaluationReport.load(storage, path)
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

    def tensor(
        self, volume: CTVolume, center_xyz_mm: tuple[float, float, float] | None
    ) -> np.ndarray:
        aimed = replace(volume, nodule_center_xyz_mm=center_xyz_mm)  # shallow: HU not copied
        tensor = preprocess_series(aimed, volume.hu, self.preprocess)
        # The shards store this dtype: rounding the same way gives the evaluation's scores.
        return tensor.astype(self.dtype).astype(np.float32)

    def score(self, tensors: list[np.ndarray]) -> list[float]:
        """Probabilities, calibrated as in the model's evaluation when there is one."""
        with torch.no_grad():
            raw = torch.sigmoid(self.model(torch.from_numpy(np.stack(tensors)))).numpy()
        if self.calibration is not None:
            raw = calibrate(raw, self.calibration)
        return [float(p) for p in raw]


def _labels_in(storage: Storage, key: bytes) -> BatchLabels:
    """The labels.csv at the root of `storage`, or none."""
    if not storage.exists("labels.csv"):
        return BatchLabels([], [])
    return parse_labels(storage.read_text("labels.csv"), key)


def _ref_for(storage: Storage, rel: str) -> ArchiveRef:
    """An archive, a folder of files or a single file, as something the archive reader reads."""
    if storage.fs.isdir(storage.path(rel)):
        files = tuple(storage.list_files(rel))
        if not files:
            raise PredictError(f"{storage.url(rel)} holds no files")
        return ArchiveRef(rel.rstrip("/") + "/", "", "folder", files)
    if not storage.exists(rel):
        raise PredictError(f"{storage.url(rel)} does not exist")
    info = storage.info(rel)
    return ArchiveRef(rel, "", archive_kind(rel) or "folder", (info,))


def _center(
    volume: CTVolume, key: bytes, given: tuple[float, float, float] | None, labels: BatchLabels
) -> tuple[tuple[float, float, float] | None, str]:
    if given is not None:
        return given, "given"
    first = volume.first
    label = labels.lookup(
        pseudonym(key, "series", first.series_uid),
        pseudonym(key, "study", first.study_uid),
        pseudonym(key, "patient", first.patient_id),
    )
    if label is not None and label.nodule_center_xyz_mm is not None:
        return label.nodule_center_xyz_mm, "labels"
    return None, "lung"


def predict_source(
    settings: Settings,
    source: str,
    center: tuple[float, float, float] | None = None,
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
    key = scorer.key
    if labels is None:
        labels = _labels_in(storage, key)
    decoded = decode_archive(storage, _ref_for(storage, name), settings.ingest, key)
    for item in decoded.quarantined:
        log.warning("%s: %s: %s", item.member or item.series_id or source, item.code, item.message)
    if not decoded.volumes:
        raise PredictError(
            f"{source} holds no usable CT series ({len(decoded.quarantined)} "
            "items refused, see the warnings)"
        )
    predictions = []
    for volume in decoded.volumes:
        where, how = _center(volume, key, center, labels)
        if scorer.preprocess.crop_center == "image":
            how = "image"  # whole slices: a nodule center plays no part
        tensor = scorer.tensor(volume, where)
        (probability,) = scorer.score([tensor])
        series_id = pseudonym(key, "series", volume.first.series_uid)
        if saliency_dir is not None:
            _write_saliency(scorer, tensor, f"{saliency_dir}/{series_id}.png", probability)
        predictions.append(
            Prediction(
                series_id=series_id,
                source=storage.url(name),
                probability=float(probability),
                decision="positive" if probability >= scorer.threshold else "negative",
                threshold=scorer.threshold,
                threshold_source=scorer.threshold_source,
                center=how,
                model=scorer.record.name,
                model_version=scorer.record.version,
            )
        )
    return predictions


def _write_saliency(scorer: Scorer, tensor: np.ndarray, path: str, probability: float) -> None:
    from pathlib import Path

    from lungcls.predict.saliency import grad_cam, overlay_png

    cam = grad_cam(scorer.model, torch.from_numpy(tensor[None]))  # type: ignore[arg-type]
    title = f"p(malignant) = {probability:.3f}, model v{scorer.record.version}"
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_bytes(overlay_png(tensor, cam, title))


def predict_batch(
    settings: Settings, batch: str, version: str | int | None = None, out: str | None = None
) -> tuple[list[Prediction], str]:
    """Score every archive of `inbox/<batch>`; write predictions as Parquet and CSV."""
    import pandas as pd

    from lungcls.io.runs import new_run_id

    storage = Storage.from_settings(settings)
    scorer = Scorer.load(settings, version)
    archives, _ = discover_archives(storage, settings.ingest.inbox)
    archives = [a for a in archives if a.batch == batch]
    if not archives:
        raise PredictError(f"no archives in {storage.url(f'{settings.ingest.inbox}/{batch}')}")
    batch_dir = Storage(storage.url(f"{settings.ingest.inbox}/{batch}"), settings.s3_endpoint_url)
    labels = _labels_in(batch_dir, scorer.key)  # read once, not once per archive
    predictions = []
    for ref in archives:
        try:
            predictions += predict_source(
                settings, storage.url(ref.key), scorer=scorer, labels=labels
            )
        except PredictError as error:
            log.warning("%s", error)
    out = out or f"predictions/{new_run_id('predict')}"
    frame = pd.DataFrame([asdict(p) for p in predictions])
    storage.write_atomic(f"{out}/predictions.csv", frame.to_csv(index=False).encode())
    storage.write_atomic(f"{out}/predictions.parquet", frame.to_parquet(index=False))
    return predictions, storage.url(out)
