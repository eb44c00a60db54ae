"""A drift report from a storage root: the batch's series against a dataset version's.

    report = drift_report(settings, "later-001")        # against the champion's training data
    report = drift_report(settings, "later-001", dataset=DatasetRef(name=..., version=3))

The reference is the training data of a dataset version: its train split (and val, for a
cross-validated champion, whose fold models trained on both). Its acquisition features come
from the series store's metadata of those series; its image features from the tensors in
the version's shards (each shard verified against the manifest's SHA-256). The batch is
every series the ledger records as ingested from `inbox/<batch>/`, less erased data and
less any series the reference already holds; its image features come from preprocessing
each of its series with the version's own preprocessing settings, so that both sides are
what the model is, or would be, given. Each side's rows carry their patient's pseudonym,
never reported: the statistics compare one value per patient (samples of one patient are
not independent). Nothing here writes; `write_drift_report` does.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

from lungcls.config import Settings
from lungcls.dataset.labelling import apply_labels, nodule_center
from lungcls.dataset.manifest import DatasetRef, Manifest, load_manifest
from lungcls.dataset.preprocess import preprocess_series
from lungcls.dataset.shards import iter_samples
from lungcls.dataset.validation import series_frame
from lungcls.errors import LungclsError
from lungcls.ingest.deid import pseudonym_key
from lungcls.ingest.label_table import batch_pseudonym, current_labels
from lungcls.ingest.ledger import Ledger
from lungcls.ingest.series_store import iter_series
from lungcls.io.storage import Storage
from lungcls.monitor.features import acquisition_table, image_statistics
from lungcls.monitor.report import (
    DriftCounts,
    DriftReport,
    DriftTables,
    ModelScores,
    build_drift_report,
)
from lungcls.monitor.statistics import PATIENT, DriftError
from lungcls.retention.erasure_log import read_erased, without_erased

log = logging.getLogger(__name__)


def champion_reference(settings: Settings) -> tuple[str, DatasetRef, list[str]]:
    """The champion ("name vN"), the dataset version it was trained on, and the splits it
    trained on: train, and val too when it averages cross-validation fold models."""
    from lungcls.registry.aliases import read_alias
    from lungcls.registry.promote import CHAMPION
    from lungcls.registry.store import load_record

    storage = Storage.from_settings(settings)
    name = settings.model.name
    state = read_alias(storage, name, CHAMPION)
    if state.version is None:
        raise DriftError(
            f"model {name!r} has no champion yet, so there is no training data to compare a "
            "batch with: promote a model first, or name a dataset version"
        )
    record = load_record(storage, name, state.version)
    splits = ["train", "val"] if record.cross_validation else ["train"]
    return str(record), record.dataset, splits


def batch_series_ids(ledger: Ledger, batch: str) -> set[str]:
    """The series the ledger's current rows record as ingested from `inbox/<batch>/`."""
    return {
        series
        for entry in ledger.entries
        if entry.status == "ingested" and entry.batch == batch
        for series in entry.series_ids
    }


def ingested_batch(
    storage: Storage, batch: str, error: type[LungclsError]
) -> tuple[Ledger, pd.DataFrame, set[str]]:
    """The ledger, the series store's frame (erased series left out) and the ids of the
    series of inbox batch `batch` in it: what the drift report and the champion's scoring
    of a batch both start from.

    Raises:
        error: The batch has no ingested series (the caller's kind of error).
    """
    ledger = Ledger.load(storage)
    frame = without_erased(series_frame(storage, ledger), read_erased(storage))
    in_batch = batch_series_ids(ledger, batch) & set(frame["series_id"])
    if not in_batch:
        raise error(
            f"batch {batch!r} has no ingested series (erased ones aside): run "
            f"`lungcls ingest --batch {batch}` first"
        )
    return ledger, frame, in_batch


def _sample_statistics(
    samples: Iterable[tuple[str, np.ndarray]], manifest: Manifest
) -> pd.DataFrame:
    """The image features of (patient, tensor) pairs, with the patient: the statistics
    compare one value per patient (`lungcls.monitor.statistics`, module doc)."""
    windows = manifest.preprocess.config.windows
    return pd.DataFrame(
        [{PATIENT: patient, **image_statistics(t, windows)} for patient, t in samples]
    )


def _reference_samples(
    storage: Storage, manifest: Manifest, splits: Sequence[str]
) -> tuple[pd.DataFrame, set[str]]:
    """The image features of the version's samples in `splits`, and their series."""
    shards = [shard for split in splits for shard in manifest.shards_of(split)]
    series: set[str] = set()

    def samples() -> Iterable[tuple[str, np.ndarray]]:  # one shard in memory at a time
        for sample in iter_samples(storage, shards):
            series.add(sample.series_id)
            yield sample.patient_id, sample.array()

    return _sample_statistics(samples(), manifest), series


def batch_patches(
    storage: Storage,
    ledger: Ledger,
    centers: dict[str, tuple[float, float, float] | None],
    manifest: Manifest,
    failed: list[str],
) -> Iterable[tuple[str, np.ndarray]]:
    """(series id, patch) of each series of `centers`, preprocessed as a build of the
    version would (crop on the labelled nodule, else on the lung; stored dtype); a series
    whose patch cannot be made is left out, and its error's type added to `failed`."""
    config, dtype = manifest.preprocess.config, manifest.tensor.dtype
    for series in iter_series(storage, set(centers), ledger):
        series.nodule_center_xyz_mm = centers[series.series_id]
        try:
            tensor = preprocess_series(series, series.volume, config)
        except (ValueError, IndexError, MemoryError) as error:
            failed.append(type(error).__name__)
            continue
        yield series.series_id, np.ascontiguousarray(tensor, dtype=dtype)


def _batch_samples(
    storage: Storage,
    ledger: Ledger,
    labelled: pd.DataFrame,
    manifest: Manifest,
    failed: list[str],
) -> Iterable[tuple[str, np.ndarray]]:
    """(patient, patch) of each series of `labelled`, cut by `batch_patches`."""
    centers = {row.series_id: nodule_center(row) for row in labelled.itertuples(index=False)}
    patients = dict(zip(labelled["series_id"], labelled["patient_id"], strict=True))
    for series_id, tensor in batch_patches(storage, ledger, centers, manifest, failed):
        yield patients[series_id], tensor


def gather_drift_tables(
    settings: Settings, batch: str, dataset: DatasetRef, splits: Sequence[str] = ("train",)
) -> DriftTables:
    """The features of a batch's new series and of a dataset version's `splits`.

    The batch's patches are cut as a build would cut them: on the nodule its labels name,
    else on the largest lung, as prediction does. An unlabelled batch's patches are then all
    lung-centred while the reference's are mostly nodule-centred; that is the input the
    model gets in service, and the patch statistics show it (the lung statistics much less).

    Raises:
        DriftError: The batch has no ingested series, or the reference holds no sample.
        DatasetError: The version does not exist or was withdrawn by an erasure.
    """
    storage = Storage.from_settings(settings)
    manifest = load_manifest(storage, dataset.name, dataset.version)
    reference_samples, known = _reference_samples(storage, manifest, splits)
    if not known:
        raise DriftError(f"{dataset} holds no sample in {', '.join(splits)}: nothing to compare")

    ledger, frame, in_batch = ingested_batch(storage, batch, DriftError)
    current_ids = in_batch - known
    labelled = apply_labels(frame[frame["series_id"].isin(current_ids)], current_labels(storage))
    failed: list[str] = []
    current_samples = _sample_statistics(
        _batch_samples(storage, ledger, labelled, manifest, failed), manifest
    )
    if failed:
        log.warning("drift: %d series of the batch could not be preprocessed", len(failed))
    series = acquisition_table(frame)
    reference_series = series[series["series_id"].isin(known)]
    return DriftTables(
        reference_series=reference_series,
        current_series=series[series["series_id"].isin(current_ids)],
        reference_samples=reference_samples,
        current_samples=current_samples,
        counts=DriftCounts(
            reference_series=len(reference_series),
            reference_samples=len(reference_samples),
            current_series=len(current_ids),
            current_samples=len(current_samples),
            current_in_reference=len(in_batch & known),
            current_not_preprocessed=len(failed),
        ),
    )


def drift_report(
    settings: Settings,
    batch: str,
    *,
    dataset: DatasetRef | None = None,
    splits: Sequence[str] | None = None,
    scores: ModelScores | None = None,
    embeddings: tuple[np.ndarray, np.ndarray] | None = None,
) -> DriftReport:
    """The drift report of inbox batch `batch` (its folder name, as ingested).

    Args:
        settings: Where the root is, and the thresholds (`monitoring`).
        batch: The batch's folder under the inbox; the report names it by its pseudonym.
        dataset: The reference version; None: the champion's training data (and then
            `splits` defaults to the splits it trained on).
        splits: The reference splits (default: train).
        scores, embeddings: The model's, on (reference, batch) samples; see
            `build_drift_report` for which reference samples to score.
    """
    model = None
    if dataset is None:
        model, dataset, trained_on = champion_reference(settings)
        splits = splits or trained_on
    splits = list(splits or ["train"])
    tables = gather_drift_tables(settings, batch, dataset, splits)
    storage = Storage.from_settings(settings)
    return build_drift_report(
        tables,
        settings.monitoring,
        batch=batch_pseudonym(pseudonym_key(settings, storage), batch),
        reference=dataset,
        reference_splits=splits,
        model=model,
        scores=scores,
        embeddings=embeddings,
    )
