"""Erasure, store by store: the series store, staging, the inbox, labels and quarantine.

Each function removes what an erasure names (`ErasureTargets`) from one part of the root
and counts it in a `Tally`; `lungcls.retention.erasure` runs them under the ingest and
dataset-build leases, after the request is in the erasure log. A file that also holds other
patients' data is written again without the erased rows under a NEW name, the record that
names it (the ledger, the labels history) is pointed at the new file, and only then is the
old one removed: a crash in between leaves both, never neither, and running the erasure
again finishes it.
"""

from __future__ import annotations

import codecs
import csv
import io
import posixpath
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from lungcls.ingest.archive import discover_archives
from lungcls.ingest.deid import pseudonym
from lungcls.ingest.label_table import LABELS_DIR, LabelsHistory, remove_label_rows
from lungcls.ingest.labels import KEY_COLUMNS, LabelProblem, decode_labels, sniff_delimiter
from lungcls.ingest.ledger import Ledger, LedgerEntry
from lungcls.ingest.series_store import (
    DROPPED_COLUMNS,
    OPTIONAL_COLUMNS,
    SERIES_DIR,
    SERIES_SCHEMA,
    VOLUME_COLUMN,
    SeriesRecord,
    new_series_file,
    write_series_file,
)
from lungcls.ingest.staging import STAGING_DIR
from lungcls.io.quarantine import QUARANTINE_DIR, QuarantineItem
from lungcls.io.storage import Storage
from lungcls.io.tables import check_columns
from lungcls.retention.erasure_log import Erased


@dataclass
class ErasureTargets:
    """What one erasure removes: `erased` is what the log records (and every row test
    uses), the rest is where it was found."""

    erased: Erased
    archive_keys: set[str]  # ledger keys (inbox paths) of every archive version holding it
    label_keys: set[str]  # pseudonyms whose labels rows go: patients, their studies, series
    holders: dict[str, set[str]]  # series file -> the erased series in it

    @property
    def found_anything(self) -> bool:
        return bool(self.holders or self.archive_keys)


@dataclass
class Tally:
    """What was removed so far (what `ErasureOutcome` reports)."""

    series_removed: int = 0
    archives_removed: int = 0
    files_removed: int = 0
    bytes_removed: int = 0
    files_rewritten: int = 0
    label_rows_removed: int = 0
    quarantine_records_removed: int = 0
    score_rows_removed: int = 0
    notes: list[str] = field(default_factory=list)

    def remove(self, storage: Storage, rel: str) -> None:
        """Delete one file (if it is still there), counting it."""
        if storage.exists(rel):
            self.bytes_removed += storage.info(rel).size
            storage.remove(rel)
            self.files_removed += 1

    def remove_tree(self, storage: Storage, folder: str) -> None:
        for info in storage.list_files(folder):
            self.remove(storage, info.path)
        storage.remove(folder)


def series_rows(storage: Storage) -> Iterator[tuple[str, dict[str, str]]]:
    """(file, row) for every row of every series file, current or not (ids only: the
    volumes are never read): an erasure must find copies nobody reads any more too."""
    columns = ["series_id", "study_id", "patient_id"]
    for info in storage.list_files(SERIES_DIR):
        if info.path.endswith(".parquet"):
            with storage.open(info.path, "rb") as f:
                for row in pq.ParquetFile(f).read(columns=columns).to_pylist():
                    yield info.path, row


def scrub_series_store(
    storage: Storage, ledger: Ledger, targets: ErasureTargets, run_id: str, tally: Tally
) -> None:
    """Write each current series file holding erased series again without them, record the
    new files in the ledger (one segment), then remove every file that held them."""
    current = ledger.series_files()
    replaced: dict[str, str] = {}  # old file -> its copy without the erased series ("": none)
    for rel in sorted(targets.holders):
        if rel in current:
            replaced[rel] = _copy_without(storage, rel, targets.erased, tally)
    updates = _ledger_updates(ledger, replaced, targets, run_id)
    if updates:
        ledger.record(*updates)
        ledger.save(storage)
    tally.series_removed = len({s for ids in targets.holders.values() for s in ids})
    for rel in sorted(targets.holders):
        tally.remove(storage, rel)


def _copy_without(storage: Storage, rel: str, erased: Erased, tally: Tally) -> str:
    """A new series file holding every row of `rel` but the erased ones (streamed, one
    series in memory at a time); "" when nothing is left."""
    archive_id = posixpath.basename(rel).removesuffix(".parquet").rsplit("-", 1)[0]
    target = new_series_file(archive_id)

    def kept() -> Iterator[SeriesRecord]:
        with storage.open(rel, "rb") as f:
            parquet = pq.ParquetFile(f)
            found = parquet.schema_arrow
            url = storage.url(rel)
            check_columns(
                found, SERIES_SCHEMA, url, "series file", OPTIONAL_COLUMNS, DROPPED_COLUMNS
            )
            columns = [name for name in SERIES_SCHEMA.names if name in found.names]
            for group in range(parquet.num_row_groups):
                table = parquet.read_row_group(group, columns=columns)
                volumes = table.column(VOLUME_COLUMN)
                for index, row in enumerate(table.drop_columns([VOLUME_COLUMN]).to_pylist()):
                    if not erased.refuses(row["patient_id"], row["series_id"]):
                        row[VOLUME_COLUMN] = volumes[index].as_buffer()
                        yield SeriesRecord.from_row(row)

    if not write_series_file(storage, target, kept()):
        storage.remove(target)
        return ""
    tally.files_rewritten += 1
    return target


def _ledger_updates(
    ledger: Ledger, replaced: dict[str, str], targets: ErasureTargets, run_id: str
) -> list[LedgerEntry]:
    """New current rows for the archives whose series or series file changed: an erased
    archive left without series reads as rejected with code `erased`."""
    now = datetime.now(UTC).isoformat(timespec="seconds")
    updates = []
    for archive in sorted({e.archive for e in ledger.entries}):
        entry = ledger.current(archive)
        if entry is None or entry.status != "ingested":
            continue
        ids = [s for s in entry.series_ids if s not in targets.erased.series]
        series_file = replaced.get(entry.series_file, entry.series_file)
        emptied = not ids and archive in targets.archive_keys
        if ids == entry.series_ids and series_file == entry.series_file and not emptied:
            continue
        updates.append(
            replace(
                entry,
                status="rejected" if emptied else "ingested",
                reason_code="erased" if emptied else "",
                series_file=series_file if ids else "",
                series_ids=ids,
                run_id=run_id,
                ingested_at=now,
            )
        )
    return updates


def scrub_staging(storage: Storage, erased: Erased, tally: Tally) -> None:
    """Remove staged slices of erased series left by killed ingests (no ingest runs while
    the erasure holds its lease, so no staging file is in use)."""
    for info in storage.list_files(STAGING_DIR):
        if info.path.endswith(".parquet") and _holds(storage, info.path, erased):
            tally.remove(storage, info.path)


def _holds(storage: Storage, rel: str, erased: Erased) -> bool:
    with storage.open(rel, "rb") as f:
        table = pq.ParquetFile(f).read(columns=["series_id", "patient_id"])
    rows = zip(table["patient_id"].to_pylist(), table["series_id"].to_pylist(), strict=True)
    return any(erased.refuses(patient, series) for patient, series in rows)


def scrub_inbox(
    storage: Storage, inbox: str, key: bytes, ledger: Ledger, targets: ErasureTargets, tally: Tally
) -> None:
    """Delete the inbox archives whose current bytes are erased, and the erased rows of
    every labels.csv (they hold raw patient IDs and UIDs)."""
    archives, label_files = discover_archives(storage, inbox)
    for ref in archives:
        entry = ledger.current(ref.key)
        # Never ingested (an archive erased by path): its bytes were read for the log.
        erased_bytes = entry is None or entry.sha256 in targets.erased.archives
        if ref.key in targets.archive_keys and erased_bytes:
            for info in ref.files:
                tally.remove(storage, info.path)
            tally.archives_removed += 1
    for info in label_files:
        tally.label_rows_removed += _scrub_labels_csv(storage, info.path, key, targets, tally)


def _scrub_labels_csv(
    storage: Storage, rel: str, key: bytes, targets: ErasureTargets, tally: Tally
) -> int:
    """Write a labels.csv again without the rows naming erased keys (found by pseudonymising
    each row's key columns); the next ingest reads it as a new labels version."""
    data = storage.read_bytes(rel)
    text = decode_labels(data)
    if isinstance(text, LabelProblem):
        tally.notes.append("an unreadable labels.csv was left as it is: check it by hand")
        return 0
    text = text.removeprefix("\ufeff")
    delimiter = sniff_delimiter(text)
    try:
        rows = list(csv.reader(io.StringIO(text, newline=""), delimiter=delimiter))
    except csv.Error:
        tally.notes.append("a labels.csv that is not valid CSV was left as it is: check it")
        return 0
    if not rows:
        return 0
    header = [c.strip().lower() for c in rows[0]]
    kinds = {i: KEY_COLUMNS[c] for i, c in enumerate(header) if c in KEY_COLUMNS}

    def erased(values: list[str]) -> bool:
        return any(
            i < len(values)
            and values[i].strip()
            and pseudonym(key, kind, values[i]) in targets.label_keys
            for i, kind in kinds.items()
        )

    kept = [rows[0], *(values for values in rows[1:] if not erased(values))]
    if len(kept) == len(rows):
        return 0
    out = io.StringIO()
    csv.writer(out, delimiter=delimiter, lineterminator="\n").writerows(kept)
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        encoded = out.getvalue().encode("utf-16")
    else:
        encoded = (
            codecs.BOM_UTF8 if data.startswith(codecs.BOM_UTF8) else b""
        ) + out.getvalue().encode()
    storage.write_atomic(rel, encoded)
    tally.files_rewritten += 1
    return len(rows) - len(kept)


def scrub_labels_tables(storage: Storage, targets: ErasureTargets, tally: Tally) -> None:
    """The erased rows of every labels version; tables no history row names (left by a
    killed refresh) are removed when they hold one."""
    removed = remove_label_rows(storage, targets.label_keys)
    tally.label_rows_removed += removed
    named = {v.table for v in LabelsHistory.load(storage).entries}
    for info in storage.list_files(LABELS_DIR):
        if info.path in named or not info.path.endswith(".parquet"):
            continue
        keys = pq.read_table(io.BytesIO(storage.read_bytes(info.path)), columns=["key"])
        if pc.any(pc.is_in(keys["key"], pa.array(sorted(targets.label_keys)))).as_py():
            tally.remove(storage, info.path)


def scrub_quarantine(storage: Storage, key: bytes, targets: ErasureTargets, tally: Tally) -> None:
    """Remove the quarantine records of erased series and archives (they name the inbox
    path, member names and series pseudonyms; the quarantine never copies the bytes)."""
    archive_ids = {pseudonym(key, "archive", sha) for sha in targets.erased.archives}
    archive_ids |= {pseudonym(key, "archive", k) for k in targets.archive_keys}  # unread ones
    for info in storage.list_files(QUARANTINE_DIR):
        if not info.path.endswith("/reason.json"):
            continue
        item = QuarantineItem.load(storage, info.path)
        if item.series_id in targets.erased.series or item.archive_id in archive_ids:
            tally.remove_tree(storage, posixpath.dirname(info.path))
            tally.quarantine_records_removed += 1
