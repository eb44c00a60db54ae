"""Ingest: DICOM archives in `inbox/` -> de-identified series store, ledger and quarantine.

    lungcls ingest [--batch NAME] [--retry-rejected] [--json]

Two phases, each a set of Ray tasks:
1. *scan* each new or changed archive to its end (`scan_archive`): members are decoded,
   de-identified and staged slice by slice; a refused archive is committed at once.
2. *assemble* series (`assemble_group`) across the archives of a batch that share them, one
   series in memory at a time, into one series file per group.
The driver commits each finished group to the ledger, so a rerun skips what is done and a
crash costs at most the work in flight. Nothing an archive holds can stop the run: whatever
goes wrong inside one archive, file or series is quarantined with a stable code; only a
storage failure raises (retrying then finishes the job).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections import Counter
from collections.abc import Iterable
from datetime import UTC, datetime

from tqdm import tqdm

from lungcls.config import IngestSettings, Settings
from lungcls.ingest.archive import ArchiveRef, discover_archives
from lungcls.ingest.assemble import GroupOutcome, SeriesGroup, assemble_group, group_scans
from lungcls.ingest.decode import ArchiveScan, scan_archive
from lungcls.ingest.deid import pseudonym_key
from lungcls.ingest.label_matching import unmatched_labels
from lungcls.ingest.label_table import (
    batch_pseudonym,
    current_labels,
    refresh_labels,
)
from lungcls.ingest.ledger import Ledger, LedgerEntry
from lungcls.ingest.staging import staging_folder
from lungcls.ingest.summary import IngestSummary
from lungcls.io.compute import map_unordered
from lungcls.io.guard import stage_lease
from lungcls.io.quarantine import QuarantineItem, write_quarantine
from lungcls.io.runs import new_run_id
from lungcls.io.storage import Storage
from lungcls.retention.erasure_log import Erased, read_erased

log = logging.getLogger(__name__)

LEDGER_SAVE_INTERVAL_S = 1.0


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


def settings_hash(options: IngestSettings) -> str:
    """The ingest settings that judge an archive (limits, tolerances); the inbox aside."""
    judged = options.model_dump(mode="json", exclude={"inbox"})
    return hashlib.sha256(json.dumps(judged, sort_keys=True).encode()).hexdigest()[:16]


def ingest(
    settings: Settings,
    batch: str | None = None,
    progress: bool | None = None,
    retry_rejected: bool = False,
) -> IngestSummary:
    """Ingest every new or changed archive under the inbox (or one batch of it).

    With `retry_rejected`, archives refused before (or with refused files or series) are
    read again; that also happens by itself when the ingest settings changed since.
    """
    storage = Storage.from_settings(settings)
    key = pseudonym_key(settings, storage)
    run = _Run(settings, storage, key, new_run_id("ingest"), progress)
    # One ingest at a time per root: a second waits, then finds done what the first did.
    with stage_lease(storage, "ingest", run.run_id, settings.storage.lease_only):
        run.erased = read_erased(storage)  # what was erased never comes back (`erased`)
        return _ingest(run, batch, retry_rejected)


def _ingest(run: _Run, batch: str | None, retry_rejected: bool) -> IngestSummary:
    started = time.monotonic()
    settings, storage, key, summary = run.settings, run.storage, run.key, run.summary
    archives, label_files = discover_archives(storage, settings.ingest.inbox)
    if batch is not None:
        archives = [a for a in archives if a.batch == batch]
        label_files = [f for f in label_files if f.path.split("/")[-2] == batch]
    summary.archives_seen = len(archives)
    ledger = Ledger.load(storage)
    judged_by = settings_hash(settings.ingest)
    reasons = {
        a.key: _why_read(ledger.current(a.key), a, judged_by, retry_rejected) for a in archives
    }
    todo = [a for a in archives if reasons[a.key]]
    summary.archives_skipped = len(archives) - len(todo)

    batches = sorted({a.batch for a in todo})
    # Labels are their own versioned table, read whenever a labels.csv changed (archives
    # or not) and applied when a dataset is built.
    refreshed = refresh_labels(storage, key, label_files, run.run_id)
    summary.quarantined.extend(item.redacted() for item in refreshed.quarantined)
    try:
        scans = run.scan(todo, ledger, reasons, judged_by)
        # An archive that adds slices to a series an earlier archive of its batch brought
        # in: read that one again, and assemble the series from both.
        earlier = _earlier_parts(scans, todo, archives, ledger)
        scans += run.scan(
            earlier, ledger, dict.fromkeys((a.key for a in earlier), "join"), judged_by
        )
        run.assemble(scans, todo + earlier, ledger, judged_by)
    finally:
        storage.remove(staging_folder(run.run_id))
    run.save(ledger)
    changed = sorted(set(refreshed.batches) | set(batches))
    unmatched = unmatched_labels(storage, ledger, current_labels(storage), run.run_id, changed)
    summary.quarantined.extend(item.redacted() for item in unmatched)
    summary.seconds = round(time.monotonic() - started, 3)
    log.info(
        "ingest %s: %d archives (%d skipped, %d rejected), %d series, %d quarantined items",
        run.run_id,
        summary.archives_seen,
        summary.archives_skipped,
        summary.archives_rejected,
        summary.series_ingested,
        len(summary.quarantined),
    )
    return summary


def _earlier_parts(
    scans: list[ArchiveScan], todo: list[ArchiveRef], archives: list[ArchiveRef], ledger: Ledger
) -> list[ArchiveRef]:
    """Archives outside this run, still in the inbox, that own a series of the same batch as
    an archive of this run: the series continues there."""
    batch_of = {a.key: a.batch for a in todo}
    in_inbox = {a.key: a for a in archives}
    owners = ledger.owners(excluding=set(batch_of))
    keys = {
        owner.archive
        for scan in scans
        for series_id in scan.series
        if (owner := owners.get(series_id)) is not None
        and owner.batch == batch_of[scan.key]
        and owner.archive in in_inbox
    }
    return [in_inbox[k] for k in sorted(keys)]


def _why_read(
    entry: LedgerEntry | None, ref: ArchiveRef, judged_by: str, retry_rejected: bool
) -> str:
    """Why an archive is read in this run: "new", "changed", "retry", or "" (it is not)."""
    if entry is None:
        return "new"
    if entry.version_tag != ref.version_tag:
        return "changed"
    refused_something = entry.status == "rejected" or entry.n_quarantined > 0
    if refused_something and (retry_rejected or entry.settings_hash != judged_by):
        return "retry"
    return ""


class _Run:
    """One ingest run's driver state: where it writes, what it has counted."""

    def __init__(
        self, settings: Settings, storage: Storage, key: bytes, run_id: str, progress: bool | None
    ) -> None:
        self.settings, self.storage, self.key, self.run_id = settings, storage, key, run_id
        self.summary = IngestSummary(run_id=run_id, root=storage.root_url)
        self.disable_bars = None if progress is None else not progress
        self.last_save = time.monotonic()
        self.unsaved = False  # ledger rows committed in memory since the last save
        self.erased = Erased()  # the erasure log, read under the lease

    def scan(
        self, todo: list[ArchiveRef], ledger: Ledger, reasons: dict[str, str], judged_by: str
    ) -> list[ArchiveScan]:
        """Phase 1. Archives that are refused, hold no series, or turn out byte-identical to
        the version already ingested are committed here; the rest go on to assembly."""
        jobs = [
            (
                self.storage,
                a,
                self.settings.ingest,
                self.key,
                staging_folder(self.run_id),
                self.erased,
            )
            for a in todo
        ]
        refs = {a.key: a for a in todo}
        scans: list[ArchiveScan] = []
        bar = tqdm(total=len(jobs), desc="read", unit="archive", disable=self.disable_bars)
        for scan in map_unordered(scan_archive, jobs, self.settings):
            bar.update(1)
            ref = refs[scan.key]
            self.summary.bytes_read += scan.bytes_read
            previous = ledger.current(ref.key)
            same = reasons[ref.key] == "changed" and previous and scan.sha256 == previous.sha256
            if same and not (scan.rejected and scan.rejected.code == "erased"):
                # Touched but byte-identical: keep the old version, drop what was staged.
                ledger.retag(ref.key, ref.version_tag)
                self.unsaved = True
                if scan.staged:
                    self.storage.remove(scan.staged)
                self.summary.archives_skipped += 1
            elif scan.rejected is not None or not scan.series:
                ledger.record(self._entry(ref, scan, [], "", [], judged_by))
            else:
                scans.append(scan)
            self._save_now_and_then(ledger)
        bar.close()
        return scans

    def assemble(
        self,
        scans: list[ArchiveScan],
        todo: list[ArchiveRef],
        ledger: Ledger,
        judged_by: str,
    ) -> None:
        """Phase 2: assemble each group's series and commit its archives."""
        refs = {a.key: a for a in todo}
        sources = {k: self.storage.url(k) for k in refs}
        owners = {
            series_id: entry.archive_id or "an earlier archive"
            for series_id, entry in ledger.owners(excluding=set(refs)).items()
        }
        # Outside the ledger a batch is named by its pseudonym: folder names can name patients.
        batch_of = {k: batch_pseudonym(self.key, ref.batch) for k, ref in refs.items()}
        groups, duplicates = group_scans(scans, batch_of, owners, sources)
        jobs = [
            (
                self.storage,
                group,
                self.settings.ingest,
                sources[group.primary.key],
                self.run_id,
            )
            for group in groups
        ]
        by_primary: dict[str, SeriesGroup] = {g.primary.key: g for g in groups}
        total = sum(len(g.series) for g in groups)
        bar = tqdm(total=total, desc="assemble", unit="series", disable=self.disable_bars)
        for outcome in map_unordered(assemble_group, jobs, self.settings):
            bar.update(len(by_primary[outcome.keys[0]].series))
            group = by_primary[outcome.keys[0]]
            self._commit_group(ledger, refs, group, outcome, duplicates, judged_by)
            self._save_now_and_then(ledger)
        bar.close()

    def _commit_group(
        self,
        ledger: Ledger,
        refs: dict[str, ArchiveRef],
        group: SeriesGroup,
        outcome: GroupOutcome,
        duplicates: dict[str, list[QuarantineItem]],
        judged_by: str,
    ) -> None:
        # Another run may have ingested the same archives meanwhile: read what it appended.
        # If it recorded any archive of this group with the same bytes, its rows count and
        # this group's series file is referenced by nothing (garbage collection removes it);
        # an archive of this group it did not have is left for the next run.
        ledger.refresh(self.storage)
        if any(ledger.recorded_meanwhile(a.key, a.sha256, self.run_id) for a in group.archives):
            log.info(
                "ingest %s: %d archive(s) recorded by another run meanwhile; %s is left unused",
                self.run_id,
                len(group.archives),
                outcome.series_file or "no series file",
            )
            self.summary.archives_skipped += len(group.archives)
            return
        stored = [series_id for series_id, _, _ in outcome.stored]
        self.summary.series_ingested += len(stored)
        self.summary.duplicate_files_dropped += outcome.duplicate_files
        entries = []
        for index, scan in enumerate(group.archives):
            primary = index == 0
            items = duplicates.get(scan.key, []) + (outcome.quarantined if primary else [])
            # The primary owns the whole series file; the others the series they add to.
            owned = stored if primary else [s for s in stored if s in scan.series]
            series_file = outcome.series_file if primary else ""
            entries.append(self._entry(refs[scan.key], scan, owned, series_file, items, judged_by))
        ledger.record(*entries)  # one unit: the group's rows are appended together or not

    def _entry(
        self,
        ref: ArchiveRef,
        scan: ArchiveScan,
        owned: list[str],
        series_file: str,
        items: Iterable[QuarantineItem],
        judged_by: str,
    ) -> LedgerEntry:
        """The ledger row of one archive (to record in memory; saved now and then); its
        refused parts are quarantined and counted."""
        rejected = scan.rejected is not None
        refused = [scan.rejected] if scan.rejected else [*scan.quarantined, *items]
        written = write_quarantine(self.storage, self.run_id, refused)
        entry = LedgerEntry(
            archive=ref.key,
            batch=ref.batch,
            kind=ref.kind,
            size=ref.size,
            version_tag=ref.version_tag,
            sha256=scan.sha256,
            status="rejected" if rejected else "ingested",
            reason_code=scan.rejected.code if scan.rejected else "",
            series_file=series_file,
            series_ids=owned,
            n_quarantined=len(written),
            n_skipped=sum(scan.skipped.values()),
            archive_id=scan.archive_id,
            settings_hash=judged_by,
            run_id=self.run_id,
            ingested_at=datetime.now(UTC).isoformat(timespec="seconds"),
        )
        self.unsaved = True
        summary = self.summary
        summary.archives_rejected += rejected
        summary.archives_ingested += not rejected
        summary.skipped = dict(Counter(summary.skipped) + Counter(scan.skipped))
        for item in written:
            summary.series_quarantined += item.level == "series"
            summary.files_quarantined += item.level == "file"
        summary.quarantined.extend(item.redacted() for item in written)
        return entry

    def _save_now_and_then(self, ledger: Ledger) -> None:
        if self.unsaved and time.monotonic() - self.last_save > LEDGER_SAVE_INTERVAL_S:
            self.save(ledger)

    def save(self, ledger: Ledger) -> None:
        """Append this run's new rows to the ledger's log (one segment)."""
        dropped = ledger.save(self.storage)
        if dropped:  # recorded by another run between the group's check and this save
            log.info(
                "ingest %s: %d archive row(s) left out, recorded by another run meanwhile; "
                "their series files are left unused",
                self.run_id,
                len(dropped),
            )
        self.last_save, self.unsaved = time.monotonic(), False
