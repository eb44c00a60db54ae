"""The champion's penultimate-layer embeddings, for the drift report's domain classifier.

    reference, batch = drift_embeddings(settings, "later-001")
    report = drift_report(settings, "later-001", embeddings=(reference, batch))

A batch can look like the training data in every header and HU statistic and still land
elsewhere in what the model makes of it; the embeddings (`features()` of the network: the
pooled features its last linear layer weighs; a cross-validated champion's fold members'
side by side) show that. Both sides are data the champion did not fit, as for its scores
(`prospective.drift_scores`): on its own training samples a network's features are more
typical of its training set than any new sample's, which a domain classifier would read as
drift. So the reference is its dataset version's test split (read from the shards, each
verified against the manifest's SHA-256), and the batch side is the series
`prospective.evaluate_batch` scores: the batch's series the champion never saw, cut as
evaluation cuts them (`gather.batch_patches`).

One row per patient: the mean of its patches' embeddings. A patient's samples are not
independent (a 2D dataset has a slice per series and about ten series per patient), and the
domain classifier is cross-validated by sample: with a patient's near-copies on both sides
of a fold it would learn patients, not sites, and call any new set of them drifted (the
drift report's tables are compared per patient for the same reason).

Cheap on purpose: at most `MAX_EMBEDDED` patches a side (a fixed-seed sample when there are
more: the batch's series are sampled before any preprocessing), one forward pass in chunks.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch

from lungcls.config import Settings
from lungcls.dataset.shards import iter_samples
from lungcls.io.storage import Storage
from lungcls.monitor.batch_evaluation import MonitoringError
from lungcls.monitor.gather import batch_patches
from lungcls.monitor.prospective import champion_record, forward_in_chunks, unseen_series
from lungcls.registry.records import ModelRecord
from lungcls.registry.store import load_model

MAX_EMBEDDED = 256  # patches a side: a domain classifier needs no more, a forward pass is quick
SAMPLE_SEED = 0  # the same sample of a large side on every run


def penultimate_features(
    model: torch.nn.Module, patches: Iterable[np.ndarray], tensor_shape: Sequence[int]
) -> np.ndarray:
    """The model's penultimate-layer features of each patch, (patches, dimensions) float32;
    (0, dimensions) for no patch (`tensor_shape`, without the batch axis, gives the width).

    Raises:
        MonitoringError: The network has no `features` method (not a lungcls CNN).
    """
    features = getattr(model, "features", None)
    if not callable(features):
        raise MonitoringError(
            f"{type(model).__name__} has no features() method: no penultimate layer to compare"
        )
    model.eval()
    out = [f.numpy() for f in forward_in_chunks(features, patches)]
    if not out:
        with torch.no_grad():
            width = features(torch.zeros(1, *tensor_shape)).shape[1]
        return np.empty((0, width), dtype=np.float32)
    return np.concatenate(out).astype(np.float32, copy=False)


def mean_per_patient(features: np.ndarray, patients: Sequence[str]) -> np.ndarray:
    """One row per patient (in order of first appearance): the mean of its rows."""
    if len(patients) != len(features):
        raise MonitoringError(f"{len(features)} embeddings for {len(patients)} patient ids")
    index = {patient: i for i, patient in enumerate(dict.fromkeys(patients))}
    rows = np.array([index[patient] for patient in patients], dtype=np.int64)
    sums = np.zeros((len(index), features.shape[1]), dtype=np.float64)
    np.add.at(sums, rows, features)
    counts = np.bincount(rows, minlength=len(index))[:, None]
    return (sums / np.maximum(counts, 1)).astype(np.float32)


def _chosen(count: int, limit: int) -> set[int]:
    """Which of `count` items to keep: all up to `limit`, else a fixed-seed sample."""
    if count <= limit:
        return set(range(count))
    rng = np.random.default_rng(SAMPLE_SEED)
    return {int(i) for i in rng.choice(count, size=limit, replace=False)}


def reference_embeddings(
    storage: Storage, record: ModelRecord, model: torch.nn.Module, limit: int = MAX_EMBEDDED
) -> np.ndarray:
    """The features of (a sample of) the test split of the version `record` trained on,
    one row per patient."""
    from lungcls.dataset.manifest import load_manifest

    manifest = load_manifest(storage, record.dataset.name, record.dataset.version)
    shards = manifest.shards_of("test")
    keep = _chosen(sum(shard.rows for shard in shards), limit)
    patients: list[str] = []

    def patches() -> Iterable[np.ndarray]:  # one shard in memory at a time
        for index, sample in enumerate(iter_samples(storage, shards)):
            if index in keep:
                patients.append(sample.patient_id)
                yield sample.array()

    features = penultimate_features(model, patches(), record.tensor_shape)
    return mean_per_patient(features, patients)


def batch_embeddings(
    storage: Storage,
    record: ModelRecord,
    model: torch.nn.Module,
    batch: str,
    limit: int = MAX_EMBEDDED,
) -> np.ndarray:
    """The features of (a sample of) the series of `batch` that `record` never saw, cut as
    `evaluate_batch` cuts them, one row per patient; a series whose patch cannot be made is
    left out (as there).

    Raises:
        MonitoringError: The batch has no ingested series.
    """
    series = unseen_series(storage, record, batch)
    centers = series.centers()
    ids = sorted(centers)
    kept = {ids[i] for i in _chosen(len(ids), limit)}
    centers = {series_id: centers[series_id] for series_id in ids if series_id in kept}
    of_series = dict(zip(series.labelled["series_id"], series.labelled["patient_id"], strict=True))
    patients: list[str] = []

    def patches() -> Iterable[np.ndarray]:  # unpreprocessable series: left out, as there
        cut = batch_patches(storage, series.ledger, centers, series.manifest, failed=[])
        for series_id, patch in cut:
            patients.append(of_series[series_id])
            yield patch

    features = penultimate_features(model, patches(), record.tensor_shape)
    return mean_per_patient(features, patients)


def drift_embeddings(
    settings: Settings, batch: str, record: ModelRecord | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(reference, batch) embeddings for `drift_report(..., embeddings=...)`, by `record`
    (default: the champion), one row per patient (see the module).

    Raises:
        MonitoringError: No champion, or the batch has no ingested series.
    """
    storage = Storage.from_settings(settings)
    record = record or champion_record(storage, settings.model.name)
    model = load_model(storage, record)
    return (
        reference_embeddings(storage, record, model),
        batch_embeddings(storage, record, model, batch),
    )
