"""DICOM archives -> CT slices: the one way lungcls opens DICOM (ingest and predict).

Members are streamed from the archive and decoded one by one (`read_file`); whatever cannot
be used becomes a quarantine item with a stable code, and fine files that are not axial CT
(localizers, dose reports, …) are counted as skipped.

- `scan_archive` (ingest, phase 1) stages each archive's slices, pseudonymised, for series
  to be assembled across the archives of a batch (`lungcls.ingest.assemble`).
- `decode_archive` (predict) assembles one small input's series in memory.
"""

from __future__ import annotations

import posixpath
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field

from lungcls.config import IngestSettings
from lungcls.ingest.archive import ArchiveReader, ArchiveRef, ArchiveRejected, Member
from lungcls.ingest.ct_volume import CTVolume, assemble_series
from lungcls.ingest.deid import pseudonym
from lungcls.ingest.dicom_series import CTSlice, Problem, Skipped, read_file
from lungcls.ingest.staging import SliceWriter
from lungcls.io.quarantine import QuarantineItem
from lungcls.io.storage import Storage, StorageError
from lungcls.retention.erasure_log import Erased

IGNORED_MEMBERS = {"DICOMDIR"}  # an index of the files beside it, not an image
ERASED_ARCHIVE = (
    "these archive bytes were erased from this root (`lungcls erase --report`): a "
    "re-delivery is refused, and nothing of it is stored"
)
ERASED_SERIES = (
    "this series, or its patient, was erased from this root (`lungcls erase --report`): it "
    "is refused, and nothing of it is stored"
)


@dataclass(frozen=True)
class StagedSeries:
    """What phase 1 learned of one series in one archive (pseudonyms only)."""

    study_id: str
    patient_id: str
    slices: int


@dataclass
class ArchiveScan:
    """Phase 1 of one archive; small enough to travel back from a Ray task. Holds no path
    but `key` (the ledger's) and no raw identifier."""

    key: str
    archive_id: str  # keyed pseudonym of the archive's bytes (of its path if unread)
    sha256: str
    bytes_read: int
    rejected: QuarantineItem | None = None  # the whole archive was refused
    staged: str = ""  # its staging file; "" when no slice was staged
    series: dict[str, StagedSeries] = field(default_factory=dict)
    # Series with a refused slice: quarantined whole, never stored short.
    incomplete: dict[str, list[str]] = field(default_factory=dict)
    quarantined: list[QuarantineItem] = field(default_factory=list)  # file level
    skipped: dict[str, int] = field(default_factory=dict)
    duplicate_files: int = 0
    erased: set[str] = field(default_factory=set)  # series refused as erased: never staged


def archive_pseudonym(key: bytes, sha256: str, archive_key: str) -> str:
    """The archive's name outside the operator's view: a keyed pseudonym of its bytes (so
    a series records which content it came from), or of its path when unread."""
    return pseudonym(key, "archive", sha256) if sha256 else pseudonym(key, "archive", archive_key)


def scan_archive(
    storage: Storage,
    ref: ArchiveRef,
    options: IngestSettings,
    key: bytes,
    staging: str,
    erased: Erased | None = None,
) -> ArchiveScan:
    """Phase 1: read one archive to its end, staging its slices; never raises for its bytes.

    A refused archive comes back with `rejected` set and nothing staged. What the erasure
    log names (`erased`) is refused with code `erased` and never staged: an archive with
    erased bytes whole (a zip before its first member is decoded, other kinds once read),
    a series of an erased patient (or an erased series) alone. Storage failures
    raise (`StorageError`, `OSError`): a rerun finishes the job. Anything else that goes
    wrong is a bug met on some input: the archive is refused as `internal_error`, named by
    the exception type only (messages can carry header values), and the run goes on.
    """
    source = storage.url(ref.key)
    reader = ArchiveReader(storage, ref, options.limits)
    writer = SliceWriter(storage, f"{staging}/{pseudonym(key, 'archive', ref.key)}.parquet")
    scan = ArchiveScan(ref.key, "", "", 0)
    erased = erased or Erased()
    try:
        _read_members(reader, writer, scan, source, key, erased)
    except (StorageError, OSError):
        raise
    except ArchiveRejected as rejected:
        writer.abort()
        scan.rejected = _archive_item(source, rejected.code, rejected.message)
    except Exception as error:
        writer.abort()
        message = (
            f"unexpected {type(error).__name__} while reading this archive; it is kept in "
            "the inbox: please report it (`lungcls ingest --retry-rejected` reads it again)"
        )
        scan.rejected = _archive_item(source, "internal_error", message)
    scan.sha256, scan.bytes_read = reader.sha256, reader.bytes_read
    scan.archive_id = archive_pseudonym(key, reader.sha256, ref.key)
    _quarantine_erased_series(scan, source)
    if scan.rejected:  # a refused archive keeps nothing but its rejection
        scan.rejected.archive_id = scan.archive_id
        scan.series, scan.incomplete, scan.quarantined, scan.staged = {}, {}, [], ""
    for item in scan.quarantined:
        item.archive_id = scan.archive_id
    return scan


def _read_members(
    reader: ArchiveReader,
    writer: SliceWriter,
    scan: ArchiveScan,
    source: str,
    key: bytes,
    erased: Erased,
) -> None:
    """Stage the slices of every member and note the rest in `scan`; raises ArchiveRejected
    (so does an archive whose bytes were erased, once its digest is known)."""
    for result in _member_results(reader, source):
        if reader.sha256 in erased.archives:  # a zip's digest is known before its members
            raise ArchiveRejected("erased", ERASED_ARCHIVE)
        if isinstance(result, QuarantineItem):
            scan.quarantined.append(result)
        elif isinstance(result, tuple):
            _note_incomplete(scan, key, *result)
        elif isinstance(result, Skipped):
            scan.skipped[result.code] = scan.skipped.get(result.code, 0) + 1
        else:
            for piece in result:
                _stage(writer, scan, key, piece, erased)
    if reader.sha256 in erased.archives:
        raise ArchiveRejected("erased", ERASED_ARCHIVE)
    scan.staged = writer.close()


def _quarantine_erased_series(scan: ArchiveScan, source: str) -> None:
    """A series refused as erased is one `erased` item, not an incomplete series."""
    for series_id in sorted(scan.erased):
        scan.incomplete.pop(series_id, None)
        scan.quarantined.append(
            QuarantineItem(
                level="series",
                code="erased",
                message=ERASED_SERIES,
                source_url=source,
                series_id=series_id,
            )
        )


def _stage(
    writer: SliceWriter, scan: ArchiveScan, key: bytes, piece: CTSlice, erased: Erased
) -> None:
    series_id = pseudonym(key, "series", piece.series_uid)
    known = scan.series.get(series_id)
    if known is None:
        patient_id = pseudonym(key, "patient", piece.patient_id)
        if series_id in scan.erased or erased.refuses(patient_id, series_id):
            scan.erased.add(series_id)
            return
        known = StagedSeries(pseudonym(key, "study", piece.study_uid), patient_id, 0)
    scan.series[series_id] = StagedSeries(known.study_id, known.patient_id, known.slices + 1)
    instance_id = pseudonym(key, "instance", piece.sop_uid)
    writer.add(piece, series_id, known.study_id, known.patient_id, instance_id)


def _note_incomplete(scan: ArchiveScan, key: bytes, series_uid: str, code: str) -> None:
    scan.incomplete.setdefault(pseudonym(key, "series", series_uid), []).append(code)


def _archive_item(source: str, code: str, message: str) -> QuarantineItem:
    return QuarantineItem(level="archive", code=code, message=message, source_url=source)


def _member_results(
    reader: ArchiveReader, source: str
) -> Iterator[list[CTSlice] | Skipped | QuarantineItem | tuple[str, str]]:
    """Each member's slices, skip or quarantine item; after a refused CT slice also
    `(series_uid, code)`: its series is incomplete. Raises ArchiveRejected."""
    known_series: set[str] = set()
    for item in reader.members():
        if not isinstance(item, Member):
            yield QuarantineItem(
                level="file",
                code=item.code,
                message=item.message,
                source_url=source,
                member=item.name,
            )
            continue
        if posixpath.basename(item.name) in IGNORED_MEMBERS:
            continue
        decoded = read_file(item.name, item.data, item.sha256, known_series)
        if isinstance(decoded, Problem):
            yield QuarantineItem(
                level="file",
                code=decoded.code,
                message=decoded.message,
                source_url=source,
                member=item.name,
                sha256=item.sha256,
            )
            if decoded.series_uid:
                yield (decoded.series_uid, decoded.code)
        elif isinstance(decoded, Skipped):
            yield decoded
        else:
            known_series.update(piece.series_uid for piece in decoded)
            yield decoded


@dataclass
class DecodedArchive:
    """The checked CT volumes of one small input and what was refused; raw UIDs inside."""

    volumes: list[CTVolume]
    quarantined: list[QuarantineItem]
    sha256: str
    bytes_read: int


def decode_archive(
    storage: Storage, ref: ArchiveRef, options: IngestSettings, key: bytes
) -> DecodedArchive:
    """Decode and assemble one input in memory (predict: one patient's series at a time).

    Raises ArchiveRejected when the whole input is refused.
    """
    source = storage.url(ref.key)
    reader = ArchiveReader(storage, ref, options.limits)
    by_series: dict[str, list[CTSlice]] = defaultdict(list)
    incomplete: set[str] = set()
    quarantined: list[QuarantineItem] = []
    for result in _member_results(reader, source):
        if isinstance(result, QuarantineItem):
            quarantined.append(result)
        elif isinstance(result, tuple):
            incomplete.add(result[0])
        elif isinstance(result, list):
            for piece in result:
                by_series[piece.series_uid].append(piece)
    volumes = []
    for series_uid, slices in by_series.items():
        series_id = pseudonym(key, "series", series_uid)
        volume = (
            Problem("incomplete_series", "a slice of this series was refused")
            if series_uid in incomplete
            else assemble_series(slices, options.slice_position_tolerance_mm)
        )
        if isinstance(volume, Problem):
            quarantined.append(
                QuarantineItem(
                    level="series",
                    code=volume.code,
                    source_url=source,
                    series_id=series_id,
                    message=f"{volume.message} ({len(slices)} files)",
                )
            )
        else:
            volumes.append(volume)
    return DecodedArchive(volumes, quarantined, reader.sha256, reader.bytes_read)
