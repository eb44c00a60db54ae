"""Ingest: DICOM archives in `inbox/` -> de-identified series store, ledger and quarantine.

    lungcls ingest [--batch NAME] [--json]

Each archive is one unit of work (a Ray task): its members are streamed, decoded, grouped
into series, checked, de-identified and written as one series file. The driver commits each
finished archive to the ledger, so a rerun skips what is done and a crash costs at most the
archives in flight. Bad input is quarantined with a reason and the run goes on.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime

from tqdm import tqdm

from lungcls.config import IngestSettings, Settings
from lungcls.ingest.archive import ArchiveRef, ArchiveRejected, discover_archives
from lungcls.ingest.decode import decode_archive
from lungcls.ingest.deid import pseudonym, pseudonym_key
from lungcls.ingest.dicom_series import CTVolume
from lungcls.ingest.labels import BatchLabels, LabelProblem, parse_labels
from lungcls.ingest.ledger import Ledger, LedgerEntry
from lungcls.ingest.series_store import (
    SeriesRecord,
    new_series_file,
    read_series_index,
    write_series_file,
)
from lungcls.ingest.summary import IngestSummary
from lungcls.io.compute import map_unordered
from lungcls.io.quarantine import QuarantineItem, write_quarantine
from lungcls.io.runs import new_run_id
from lungcls.io.storage import ObjectInfo, Storage

log = logging.getLogger(__name__)

LEDGER_SAVE_INTERVAL_S = 1.0


@dataclass
class ArchiveOutcome:
    """What one archive produced; small enough to travel back from a Ray task."""

    key: str
    sha256: str
    bytes_read: int
    status: str  # "ingested" or "rejected"
    series_file: str = ""
    series: list[tuple[str, str, str]] = field(default_factory=list)  # series, study, patient
    quarantined: list[QuarantineItem] = field(default_factory=list)
    duplicate_files: int = 0


def ingest_archive(
    storage: Storage,
    ref: ArchiveRef,
    options: IngestSettings,
    key: bytes,
    labels: BatchLabels | None,
    run_id: str,
) -> ArchiveOutcome:
    """Ingest one archive: write its good series as one file, quarantine the rest."""
    try:
        decoded = decode_archive(storage, ref, options, key)
    except ArchiveRejected as rejected:
        item = QuarantineItem(
            level="archive",
            code=rejected.code,
            message=rejected.message,
            source_url=storage.url(ref.key),
        )
        written = write_quarantine(storage, run_id, [item])
        return ArchiveOutcome(ref.key, "", 0, "rejected", quarantined=written)

    records = [
        _record(
            v,
            pseudonym(key, "series", v.first.series_uid),
            key,
            ref,
            decoded.sha256,
            labels,
            run_id,
        )
        for v in decoded.volumes
    ]
    series_file = ""
    if records:
        series_file = new_series_file(decoded.sha256)
        write_series_file(storage, series_file, records)
    quarantined = write_quarantine(storage, run_id, decoded.quarantined)
    return ArchiveOutcome(
        key=ref.key,
        sha256=decoded.sha256,
        bytes_read=decoded.bytes_read,
        status="ingested",
        series_file=series_file,
        series=[(r.series_id, r.study_id, r.patient_id) for r in records],
        quarantined=quarantined,
        duplicate_files=sum(v.duplicates_dropped for v in decoded.volumes),
    )


def _record(
    volume: CTVolume,
    series_id: str,
    key: bytes,
    ref: ArchiveRef,
    archive_sha256: str,
    labels: BatchLabels | None,
    run_id: str,
) -> SeriesRecord:
    first = volume.first
    study_id = pseudonym(key, "study", first.study_uid)
    patient_id = pseudonym(key, "patient", first.patient_id)
    label = labels.lookup(series_id, study_id, patient_id) if labels else None
    split = labels.split_for(patient_id) if labels else None
    record = SeriesRecord(
        series_id=series_id,
        study_id=study_id,
        patient_id=patient_id,
        batch=ref.batch,
        archive_sha256=archive_sha256,
        spacing_zyx_mm=volume.spacing_zyx_mm,
        origin_xyz_mm=volume.origin_xyz_mm,
        orientation=volume.orientation,
        slice_ids=[pseudonym(key, "instance", s.sop_uid) for s in volume.slices],
        volume=volume.hu,
        transfer_syntax=first.transfer_syntax,
        duplicates_dropped=volume.duplicates_dropped,
        split=split,
        ingest_run=run_id,
        **volume.metadata,
    )
    if label is not None:
        record.label = label.label
        record.label_level = label.level
        record.nodule_center_xyz_mm = label.nodule_center_xyz_mm
        record.nodule_diameter_mm = label.nodule_diameter_mm
    return record


def inbox_fingerprint(settings: Settings, batch: str | None = None) -> str:
    """What an ingest run is a function of, from a listing only (ETag/mtime and size of every
    archive and labels file, and the ingest settings): equal fingerprints, nothing to do.

    The flows key their cache on it, so an unchanged inbox is not even opened again.
    """
    storage = Storage.from_settings(settings)
    archives, label_files = discover_archives(storage, settings.ingest.inbox)
    if batch is not None:
        archives = [a for a in archives if a.batch == batch]
        label_files = [f for f in label_files if f.path.split("/")[-2] == batch]
    payload = {
        "root": storage.root_url,
        "archives": sorted((a.key, a.version_tag) for a in archives),
        "labels": sorted((f.path, f.version_tag, f.size) for f in label_files),
        "ingest": settings.ingest.model_dump(mode="json"),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def ingest(
    settings: Settings, batch: str | None = None, progress: bool | None = None
) -> IngestSummary:
    """Ingest every new or changed archive under the inbox (or one batch of it)."""
    started = time.monotonic()
    storage = Storage.from_settings(settings)
    key = pseudonym_key(settings, storage)
    run_id = new_run_id("ingest")
    summary = IngestSummary(run_id=run_id, root=storage.root_url)

    archives, label_files = discover_archives(storage, settings.ingest.inbox)
    if batch is not None:
        archives = [a for a in archives if a.batch == batch]
        label_files = [f for f in label_files if f.path.split("/")[-2] == batch]
    summary.archives_seen = len(archives)
    ledger = Ledger.load(storage)
    todo = [a for a in archives if _needs_work(ledger, a)]
    summary.archives_skipped = len(archives) - len(todo)

    batches = sorted({a.batch for a in todo})
    labels = _load_labels(storage, key, label_files, batches, summary, run_id)
    jobs = [(storage, a, settings.ingest, key, labels.get(a.batch), run_id) for a in todo]
    refs = {a.key: a for a in todo}
    last_save = time.monotonic()
    bar = tqdm(
        total=len(jobs),
        desc="ingest",
        unit="archive",
        disable=None if progress is None else not progress,
    )
    for outcome in map_unordered(ingest_archive, jobs, settings):
        _commit(ledger, refs[outcome.key], outcome, summary, storage, run_id)
        bar.update(1)
        if time.monotonic() - last_save > LEDGER_SAVE_INTERVAL_S:
            ledger.save(storage)
            last_save = time.monotonic()
    bar.close()
    if jobs:
        ledger.save(storage)
    _check_unmatched_labels(storage, ledger, labels, label_files, summary, run_id)
    summary.seconds = round(time.monotonic() - started, 3)
    log.info(
        "ingest %s: %d archives (%d skipped, %d rejected), %d series, %d quarantined items",
        run_id,
        summary.archives_seen,
        summary.archives_skipped,
        summary.archives_rejected,
        summary.series_ingested,
        len(summary.quarantined),
    )
    return summary


def _needs_work(ledger: Ledger, ref: ArchiveRef) -> bool:
    entry = ledger.current(ref.key)
    return entry is None or entry.version_tag != ref.version_tag


def _commit(
    ledger: Ledger,
    ref: ArchiveRef,
    outcome: ArchiveOutcome,
    summary: IngestSummary,
    storage: Storage,
    run_id: str,
) -> None:
    """Record one finished archive in the ledger (in memory; saved by the caller)."""
    summary.bytes_read += outcome.bytes_read
    previous = ledger.current(ref.key)
    if previous is not None and previous.sha256 == outcome.sha256 and outcome.sha256:
        # Touched but byte-identical: keep the old version, drop what this run wrote.
        ledger.retag(ref.key, ref.version_tag)
        if outcome.series_file:
            storage.remove(outcome.series_file)
        summary.archives_skipped += 1
        return
    owned, duplicates = _owned_series(ledger, ref, outcome, storage)
    quarantined = outcome.quarantined + write_quarantine(storage, run_id, duplicates)
    rejected = outcome.status == "rejected"
    ledger.record(
        LedgerEntry(
            archive=ref.key,
            batch=ref.batch,
            kind=ref.kind,
            size=ref.size,
            version_tag=ref.version_tag,
            sha256=outcome.sha256,
            status="rejected" if rejected else "ingested",
            reason_code=outcome.quarantined[0].code if rejected else "",
            series_file=outcome.series_file,
            series_ids=owned,
            n_quarantined=len(quarantined),
            run_id=run_id,
            ingested_at=datetime.now(UTC).isoformat(timespec="seconds"),
        )
    )
    summary.archives_rejected += rejected
    summary.archives_ingested += not rejected
    summary.series_ingested += len(owned)
    summary.duplicate_files_dropped += outcome.duplicate_files
    for item in quarantined:
        summary.series_quarantined += item.level == "series"
        summary.files_quarantined += item.level == "file"
    summary.quarantined.extend(quarantined)


def _owned_series(
    ledger: Ledger, ref: ArchiveRef, outcome: ArchiveOutcome, storage: Storage
) -> tuple[list[str], list[QuarantineItem]]:
    """The archive's series that no other archive owns yet, and a quarantine item for each
    one another archive already brought in (the first copy is kept)."""
    owners = ledger.owned_series(excluding_archive=ref.key)
    owned, duplicates = [], []
    for series_id, _, _ in outcome.series:
        if series_id in owners:
            duplicates.append(
                QuarantineItem(
                    level="series",
                    code="duplicate_series",
                    message=f"series already ingested from {owners[series_id]}; kept that copy",
                    source_url=storage.url(ref.key),
                    series_id=series_id,
                )
            )
        else:
            owned.append(series_id)
    return owned, duplicates


def _load_labels(
    storage: Storage,
    key: bytes,
    label_files: list[ObjectInfo],
    batches: list[str],
    summary: IngestSummary,
    run_id: str,
) -> dict[str, BatchLabels]:
    """Parse the labels.csv of each batch that has work, quarantining its format problems."""
    out: dict[str, BatchLabels] = {}
    for info in label_files:
        batch = info.path.split("/")[-2]
        if batch not in batches:
            continue
        try:
            parsed = parse_labels(storage.read_text(info.path), key)
        except UnicodeDecodeError as error:
            problem = LabelProblem(None, "labels_unreadable", f"labels.csv is not UTF-8: {error}")
            parsed = BatchLabels([], [problem])
        out[batch] = parsed
        items = [
            QuarantineItem(
                level="labels",
                code=p.code,
                message=p.message,
                source_url=storage.url(info.path),
                row=p.row,
            )
            for p in parsed.problems
        ]
        summary.quarantined.extend(write_quarantine(storage, run_id, items))
    return out


def _check_unmatched_labels(
    storage: Storage,
    ledger: Ledger,
    labels: dict[str, BatchLabels],
    label_files: list[ObjectInfo],
    summary: IngestSummary,
    run_id: str,
) -> None:
    """Report label rows of the batches ingested now that name no series of their batch."""
    if not labels:
        return
    index = read_series_index(storage, ledger).select(
        ["batch", "series_id", "study_id", "patient_id"]
    )
    known: dict[str, set[str]] = defaultdict(set)
    for row in index.to_pylist():
        known[row["batch"]].update((row["series_id"], row["study_id"], row["patient_id"]))
    sources = {info.path.split("/")[-2]: storage.url(info.path) for info in label_files}
    items = [
        QuarantineItem(
            level="labels",
            code="labels_unmatched",
            message=f"row names a {label.level} that no ingested series of batch {batch!r} has",
            source_url=sources[batch],
            row=label.row,
        )
        for batch, parsed in labels.items()
        for label in parsed.labels
        if label.key not in known[batch]
    ]
    summary.quarantined.extend(write_quarantine(storage, run_id, items))
