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
from collections import Counter
from dataclasses import asdict, dataclass, fields, replace

import numpy as np
import torch

from lungcls.config import PreprocessSettings, Settings
from lungcls.dataset.preprocess import preprocess_series
from lungcls.errors import LungclsError
from lungcls.evaluate.calibration import calibrate
from lungcls.evaluate.evaluation import resolve_version
from lungcls.evaluate.report import Calibration
from lungcls.evaluate.store import latest_report
from lungcls.ingest.archive import ArchiveRef, ArchiveRejected, archive_kind, discover_archives
from lungcls.ingest.ct_volume import CTVolume
from lungcls.ingest.decode import decode_archive
from lungcls.ingest.deid import pseudonym, pseudonym_key
from lungcls.ingest.labels import BatchLabels, parse_labels
from lungcls.io.quarantine import QuarantineItem
from lungcls.io.storage import Storage, StorageError
from lungcls.registry.records import ModelRecord
from lungcls.registry.store import load_model

log = logging.getLogger(__name__)

INPUTS_DIR = "ledger/predict"  # operator-only: archive_id -> input URL, per batch run


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
    if labels is None:
        labels = _labels_in(storage, scorer.key)
    ref = _ref_for(storage, name)
    return _predict_ref(settings, storage, ref, scorer, labels, center, saliency_dir)


def _predict_ref(
    settings: Settings,
    storage: Storage,
    ref: ArchiveRef,
    scorer: Scorer,
    labels: BatchLabels,
    center: tuple[float, float, float] | None = None,
    saliency_dir: str | None = None,
) -> list[Prediction]:
    """Score every series of one input (an archive, a folder's files, one file)."""
    key = scorer.key
    try:
        decoded = decode_archive(storage, ref, settings.ingest, key)
    except ArchiveRejected as rejected:  # its message may name a member: the code says why
        unread = input_pseudonym(key, storage.url(ref.key))
        raise PredictError(f"input {unread} was refused whole: {rejected.code}", unread) from None
    archive_id = pseudonym(key, "archive", decoded.sha256)
    _log_refused(archive_id, decoded.quarantined)
    if not decoded.volumes:
        raise PredictError(
            f"input {archive_id} holds no usable CT series ({len(decoded.quarantined)} "
            "items refused, see the warnings)",
            archive_id,
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
                archive_id=archive_id,
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


def input_pseudonym(key: bytes, url: str) -> str:
    """The name of an input that could not be read to its end (no digest of its bytes):
    a keyed pseudonym of its URL, which the batch's ledger file maps back."""
    return pseudonym(key, "archive", url)


def _log_refused(archive_id: str, items: list[QuarantineItem]) -> None:
    """What was refused in one input, by code: item messages and members may name files."""
    counts = Counter(f"{item.level} {item.code}" for item in items)
    for what, n in sorted(counts.items()):
        log.warning("input %s: %d %s refused", archive_id, n, what)


def _internal(error: Exception) -> str:
    """An unexpected failure, by exception type only: its message may hold header values."""
    return f"internal_error ({type(error).__name__})"


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
    """Score every archive of `inbox/<batch>`; write predictions as Parquet and CSV, and
    for the operator which input each archive_id was (`ledger/predict/<run>.csv`)."""
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
    predictions: list[Prediction] = []
    inputs: list[dict[str, object]] = []  # operator-only: archive_id -> input URL
    for ref in archives:  # as discovered: the loose files of a batch are one input
        url = storage.url(ref.key)
        try:
            scored = _predict_ref(settings, storage, ref, scorer, labels)
        except (StorageError, OSError):
            raise  # the storage failed, not this input: the whole run is worth retrying
        except Exception as error:  # one input never stops the batch
            archive_id = getattr(error, "archive_id", "") or input_pseudonym(scorer.key, url)
            outcome = str(error) if isinstance(error, PredictError) else _internal(error)
            log.warning("input %s: not scored: %s", archive_id, outcome)
            inputs.append({"archive_id": archive_id, "input": url, "outcome": outcome})
            continue
        predictions += scored
        outcome = f"scored {len(scored)} series"
        inputs.append({"archive_id": scored[0].archive_id, "input": url, "outcome": outcome})
    out = out or f"predictions/{run_id}"
    columns = [f.name for f in fields(Prediction)]  # the header even when nothing scored
    frame = pd.DataFrame([asdict(p) for p in predictions], columns=columns)
    storage.write_atomic(f"{out}/predictions.csv", frame.to_csv(index=False).encode())
    storage.write_atomic(f"{out}/predictions.parquet", frame.to_parquet(index=False))
    mapping = pd.DataFrame(inputs, columns=["archive_id", "input", "outcome"])
    mapping.insert(0, "predictions", storage.url(out))
    storage.write_atomic(f"{INPUTS_DIR}/{run_id}.csv", mapping.to_csv(index=False).encode())
    return predictions, storage.url(out)
