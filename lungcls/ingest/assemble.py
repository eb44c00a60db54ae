"""Phase 2 of ingest: staged slices -> checked, de-identified series, one at a time.

The archives of a batch that share a series form one *group* (most groups are a single
archive); a group's series are assembled from the slices of all its archives and written
as one series file, named after the group's first archive. A series that an archive
outside this run already brought in, or that another batch of this run holds too, stays
with that first copy and is quarantined here as `duplicate_series`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from lungcls.config import IngestSettings
from lungcls.ingest.ct_volume import CTVolume, assemble_series
from lungcls.ingest.decode import ArchiveScan, StagedSeries
from lungcls.ingest.dicom_series import Problem
from lungcls.ingest.series_store import SeriesRecord, new_series_file, write_series_file
from lungcls.ingest.staging import read_staged_series
from lungcls.io.quarantine import QuarantineItem
from lungcls.io.storage import Storage, StorageError


@dataclass
class SeriesGroup:
    """Archives of one batch that share series, assembled together (first = primary)."""

    batch: str
    archives: list[ArchiveScan]
    series: dict[str, StagedSeries] = field(default_factory=dict)

    @property
    def primary(self) -> ArchiveScan:
        return self.archives[0]

    @property
    def source_id(self) -> str:
        """What the group's series record as their archive: the archive's pseudonym, or for
        a series spread over several archives a pseudonym of all their contents."""
        if len(self.archives) == 1:
            return self.primary.archive_id
        joined = "+".join(sorted(a.archive_id for a in self.archives))
        return f"archive-{hashlib.sha256(joined.encode()).hexdigest()[:24]}"


@dataclass
class GroupOutcome:
    """What phase 2 stored for a group: one series file and the series in it."""

    keys: list[str]  # the group's archives (ledger keys), primary first
    series_file: str
    stored: list[tuple[str, str, str]]  # series, study, patient pseudonyms
    quarantined: list[QuarantineItem]
    duplicate_files: int = 0  # the same file delivered twice: dropped, harmless


def group_scans(
    scans: list[ArchiveScan],
    batch_of: Mapping[str, str],
    owners: Mapping[str, str],
    source_url: Mapping[str, str],
) -> tuple[list[SeriesGroup], dict[str, list[QuarantineItem]]]:
    """Group this run's archives by shared series, within each batch.

    `owners`: series id -> archive id of the copy kept by an earlier run (archives outside
    this run). Returns the groups and, by archive key, a `duplicate_series` item for every
    other copy.
    """
    duplicates: dict[str, list[QuarantineItem]] = {}
    claimed: dict[str, str] = {}  # series id -> batch that keeps it in this run
    parent: dict[str, str] = {}  # union-find over archive keys

    def root(k: str) -> str:
        while parent[k] != k:
            parent[k] = parent[parent[k]]
            k = parent[k]
        return k

    holder: dict[tuple[str, str], str] = {}  # (batch, series) -> first archive key
    for scan in sorted(scans, key=lambda s: (batch_of[s.key], s.key)):
        batch = batch_of[scan.key]
        parent[scan.key] = scan.key
        for series_id in list(scan.series):
            kept_by = owners.get(series_id)
            if kept_by is None and claimed.get(series_id, batch) != batch:
                kept_by = "an archive of another batch of this run"
            if kept_by is not None:
                del scan.series[series_id]
                scan.incomplete.pop(series_id, None)
                duplicates.setdefault(scan.key, []).append(
                    QuarantineItem(
                        level="series",
                        code="duplicate_series",
                        message=f"series already ingested from {kept_by}; kept that copy",
                        source_url=source_url[scan.key],
                        archive_id=scan.archive_id,
                        series_id=series_id,
                    )
                )
                continue
            claimed[series_id] = batch
            first = holder.setdefault((batch, series_id), scan.key)
            parent[root(scan.key)] = root(first)
    groups: dict[str, SeriesGroup] = {}
    for scan in sorted(scans, key=lambda s: (batch_of[s.key], s.key)):
        group = groups.setdefault(root(scan.key), SeriesGroup(batch_of[scan.key], []))
        group.archives.append(scan)
        for series_id, staged in scan.series.items():
            seen = group.series.get(series_id)
            slices = staged.slices + (seen.slices if seen else 0)
            group.series[series_id] = StagedSeries(staged.study_id, staged.patient_id, slices)
    return list(groups.values()), duplicates


def assemble_group(
    storage: Storage,
    group: SeriesGroup,
    options: IngestSettings,
    source_url: str,
    run_id: str,
) -> GroupOutcome:
    """Assemble and store every series of a group, one series in memory at a time."""
    quarantined: list[QuarantineItem] = []
    duplicate_files = 0
    staged = [a.staged for a in group.archives if a.staged]
    incomplete = _refused_slice_codes(group)

    def refuse(series_id: str, code: str, message: str) -> None:
        quarantined.append(_series_item(group, source_url, series_id, code, message))

    def records() -> Iterator[SeriesRecord]:
        for series_id in sorted(group.series):
            if series_id in incomplete:
                refuse(series_id, "incomplete_series", _incomplete_message(incomplete[series_id]))
                continue
            try:
                slices = read_staged_series(storage, staged, series_id)
                volume = assemble_series(slices, options.slice_position_tolerance_mm)
                if isinstance(volume, Problem):
                    refuse(series_id, volume.code, f"{volume.message} ({len(slices)} files)")
                    continue
                nonlocal duplicate_files
                duplicate_files += volume.duplicates_dropped
                record = _record(volume, series_id, group, run_id)
                # Memory: one series. The stacked volume holds the pixels now; release the
                # slices before the record is written, and all of it before the next series.
                del slices, volume
                yield record
                del record
            except (StorageError, OSError):
                raise
            except Exception as error:  # a bug met on some input: this series only
                refuse(
                    series_id,
                    "internal_error",
                    f"unexpected {type(error).__name__} while assembling this series; "
                    "please report it",
                )

    series_file = new_series_file(group.primary.archive_id)
    stored = write_series_file(storage, series_file, records())
    if not stored:
        storage.remove(series_file)
        series_file = ""
    facts = [(s, group.series[s].study_id, group.series[s].patient_id) for s in stored]
    keys = [a.key for a in group.archives]
    return GroupOutcome(keys, series_file, facts, quarantined, duplicate_files)


def _refused_slice_codes(group: SeriesGroup) -> dict[str, list[str]]:
    """By series, the codes of its slices that the group's archives refused."""
    codes: dict[str, list[str]] = {}
    for scan in group.archives:
        for series_id, refused in scan.incomplete.items():
            codes.setdefault(series_id, []).extend(refused)
    return codes


def _series_item(
    group: SeriesGroup, source_url: str, series_id: str, code: str, message: str
) -> QuarantineItem:
    return QuarantineItem(
        level="series",
        code=code,
        message=message,
        source_url=source_url,
        archive_id=group.primary.archive_id,
        series_id=series_id,
    )


def _incomplete_message(codes: list[str]) -> str:
    return (
        f"{len(codes)} slice(s) of this series were refused ({', '.join(sorted(set(codes)))}); "
        "it is not stored short. Fix or replace those files"
    )


def _record(volume: CTVolume, series_id: str, group: SeriesGroup, run_id: str) -> SeriesRecord:
    """The stored form of one assembled series (its slices carry pseudonyms already).
    Labels are not stamped here: the labels table is applied when a dataset is built."""
    facts = group.series[series_id]
    return SeriesRecord(
        series_id=series_id,
        study_id=facts.study_id,
        patient_id=facts.patient_id,
        batch=group.batch,
        archive_id=group.source_id,
        spacing_zyx_mm=volume.spacing_zyx_mm,
        origin_xyz_mm=volume.origin_xyz_mm,
        orientation=volume.orientation,
        slice_ids=[s.sop_uid for s in volume.slices],
        volume=volume.hu,
        transfer_syntax=volume.first.transfer_syntax,
        duplicates_dropped=volume.duplicates_dropped,
        ingest_run=run_id,
        **volume.metadata,
    )
