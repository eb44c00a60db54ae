"""One prediction input -> model-ready tensors: decode, checks, HU, centre, preprocess.

This is the expensive part of a prediction (reading and decoding DICOM is most of it; the
forward pass is cheap once batched), and it needs no model, so `predict --batch` fans it
out over the archives as Ray tasks with `map_unordered`, like ingest's reading phase, while
the model scores what comes back in batches. It imports no torch: a Ray worker that only
prepares inputs stays small.

The tensors are the ones evaluation scored: `decode_archive` is ingest's reader, then
`preprocess_series` with the model's recorded preprocessing and the dataset shards' dtype
rounding. The result names the input by pseudonyms only; what was refused in it is
counted by code (item messages and member names may hold file names).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, replace

import numpy as np

from lungcls.config import IngestSettings, PreprocessSettings
from lungcls.dataset.preprocess import preprocess_series
from lungcls.ingest.archive import ArchiveRef, ArchiveRejected
from lungcls.ingest.ct_volume import CTVolume
from lungcls.ingest.decode import decode_archive
from lungcls.ingest.deid import pseudonym
from lungcls.ingest.labels import BatchLabels
from lungcls.io.storage import Storage, StorageError

Center = tuple[float, float, float]


@dataclass(frozen=True)
class ModelInput:
    """How the model under use wants its input: its preprocessing and the shards' dtype."""

    preprocess: PreprocessSettings
    dtype: str

    def tensor(self, volume: CTVolume, center_xyz_mm: Center | None) -> np.ndarray:
        aimed = replace(volume, nodule_center_xyz_mm=center_xyz_mm)  # shallow: HU not copied
        tensor = preprocess_series(aimed, volume.hu, self.preprocess)
        # The shards store this dtype: rounding the same way gives the evaluation's scores.
        return tensor.astype(self.dtype).astype(np.float32)


@dataclass
class PreparedSeries:
    series_id: str  # pseudonym, as the series store names it
    center: str  # "given", "labels", "lung", or "image" (the model takes whole slices)
    tensor: np.ndarray


@dataclass
class PreparedInput:
    """One input, ready to score, or the reason it cannot be (`refusal`)."""

    key: str  # the input's path under its storage: the caller's, never written to outputs
    archive_id: str  # pseudonym of its bytes; of its URL when it could not be read through
    series: list[PreparedSeries] = field(default_factory=list)
    refused: dict[str, int] = field(default_factory=dict)  # "<level> <code>" -> count
    refusal: str = ""  # why nothing of it can be scored; "" when `series` holds its series


def prepare_input(
    storage: Storage,
    ref: ArchiveRef,
    options: IngestSettings,
    key: bytes,
    labels: BatchLabels,
    model_input: ModelInput,
    center: Center | None = None,
) -> PreparedInput:
    """Decode one input and make a tensor per usable series.

    Storage failures propagate (the run is worth retrying, not this input refused); any
    other failure becomes the input's `refusal`, by exception type only, since a message
    may hold header values.
    """
    url = storage.url(ref.key)
    try:
        decoded = decode_archive(storage, ref, options, key)
    except ArchiveRejected as rejected:  # its message may name a member: the code says why
        unread = input_pseudonym(key, url)
        return PreparedInput(
            ref.key, unread, refusal=f"input {unread} was refused whole: {rejected.code}"
        )
    except (StorageError, OSError):
        raise
    except Exception as error:  # one input never stops a batch
        return PreparedInput(ref.key, input_pseudonym(key, url), refusal=internal_error(error))
    prepared = PreparedInput(ref.key, pseudonym(key, "archive", decoded.sha256))
    prepared.refused = dict(Counter(f"{i.level} {i.code}" for i in decoded.quarantined))
    if not decoded.volumes:
        prepared.refusal = (
            f"input {prepared.archive_id} holds no usable CT series "
            f"({len(decoded.quarantined)} items refused, see the warnings)"
        )
        return prepared
    try:
        for volume in decoded.volumes:
            where, how = aim(volume, key, center, labels)
            if model_input.preprocess.crop_center == "image":
                how = "image"  # whole slices: a nodule center plays no part
            series_id = pseudonym(key, "series", volume.first.series_uid)
            prepared.series.append(
                PreparedSeries(series_id, how, model_input.tensor(volume, where))
            )
    except Exception as error:
        prepared.series, prepared.refusal = [], internal_error(error)
    return prepared


def aim(
    volume: CTVolume, key: bytes, given: Center | None, labels: BatchLabels
) -> tuple[Center | None, str]:
    """Where the patch is centred, and why: the given centre, the label's, else the lung."""
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


def input_pseudonym(key: bytes, url: str) -> str:
    """The name of an input that could not be read to its end (no digest of its bytes):
    a keyed pseudonym of its URL, which the batch's ledger file maps back."""
    return pseudonym(key, "archive", url)


def internal_error(error: Exception) -> str:
    """An unexpected failure, by exception type only: its message may hold header values."""
    return f"internal_error ({type(error).__name__})"
