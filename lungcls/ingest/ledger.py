"""The ingest ledger: one row per archive version ever ingested, the commit point of ingest.

The ledger is an append-only log, in the spirit of Delta Lake's, so that two ingests at once
cannot lose each other's rows:

    ledger/log/<seq:012d>.parquet          one immutable segment per save of a run: the rows
                                           it added since its last save
    ledger/checkpoint/<seq:012d>.parquet   every row up to `seq`, folded (written every
                                           `COMPACT_EVERY` segments by whoever saved `seq`)
    ledger/archives.parquet                the whole ledger of lungcls before the log: read
                                           as the checkpoint at seq 0, never written again

A segment is created with an exclusive create (`Storage.create`): a writer that loses the race
for a seq reads what the winner appended, checks its rows against it, and takes the next seq.
Loading is the latest checkpoint plus the segments after it; the rows fold in log order: an
archive's current row is its last one (the earlier ones read as "superseded"), and a "retag"
row gives the current row a new ETag/mtime. A checkpoint never changes what loading gives;
the segments it covers stay until garbage collection removes them (`compacted_segments`).

A series file only counts once a ledger row names it and the series it owns, so a crash
between writing series data and appending the segment leaves an unreferenced file, never a
half-visible archive; the rerun ingests that archive again and the ledger points at the new
file. Series files are made durable before the segment that names them is written.
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Container, Iterable
from dataclasses import asdict, dataclass, field, replace
from typing import Literal

import pyarrow as pa
import pyarrow.parquet as pq

from lungcls.errors import LungclsError
from lungcls.io.storage import Storage, StorageError
from lungcls.io.tables import check_columns

LEGACY_PATH = "ledger/archives.parquet"
LOG_DIR = "ledger/log"
CHECKPOINT_DIR = "ledger/checkpoint"
COMPACT_EVERY = 50  # segments between checkpoints: loading reads fewer than 2x this many
Status = Literal["ingested", "rejected", "superseded"]
RowKind = Literal["entry", "retag"]

# A log row: the entry's fields, what kind of row it is and the segment that appended it.
_SCHEMA = pa.schema(
    [
        ("archive", pa.string()),
        ("batch", pa.string()),
        ("kind", pa.string()),
        ("size", pa.int64()),
        ("version_tag", pa.string()),
        ("sha256", pa.string()),
        ("archive_id", pa.string()),
        ("status", pa.string()),
        ("reason_code", pa.string()),
        ("series_file", pa.string()),
        ("series_ids", pa.list_(pa.string())),
        ("n_quarantined", pa.int32()),
        ("n_skipped", pa.int32()),
        ("settings_hash", pa.string()),
        ("run_id", pa.string()),
        ("ingested_at", pa.string()),
        ("row_kind", pa.string()),
        ("seq", pa.int64()),
    ]
)
# Columns ledgers written before them lack; their rows read with the field's default.
_OPTIONAL = frozenset({"archive_id", "n_skipped", "settings_hash", "row_kind", "seq"})
_NUMBERED = re.compile(r"(\d{12})\.parquet")


class LedgerError(LungclsError):
    """The ledger's log cannot be read as a whole; `code` is stable."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code


@dataclass(frozen=True)
class LedgerEntry:
    archive: str  # path under the root
    batch: str
    kind: str
    size: int
    version_tag: str
    sha256: str
    status: Status
    reason_code: str  # why a rejected archive was refused; "" otherwise
    series_file: str  # "" when no series came out of it
    # The series this version owns; a series spread over several archives of a batch is
    # owned by each of them and stored in the series file of the first.
    series_ids: list[str] = field(default_factory=list)
    n_quarantined: int = 0
    n_skipped: int = 0  # files that are fine but not axial CT (localizers, dose reports, …)
    archive_id: str = ""  # the keyed pseudonym that names the archive outside the ledger
    settings_hash: str = ""  # the ingest settings that judged it (a change retries rejects)
    run_id: str = ""
    ingested_at: str = ""


@dataclass(frozen=True)
class _Row:
    kind: RowKind
    entry: LedgerEntry  # a retag row: the current entry with its new version_tag
    seq: int = -1  # the segment that appended it (0: the single-file ledger; -1: not yet)


class _Fold:
    """What a sequence of log rows folds to: every entry in log order, and where each
    archive's current one is."""

    def __init__(self, rows: list[_Row] | None = None, current: dict[str, int] | None = None):
        self.rows = rows or []
        self.current = current or {}

    def copy(self) -> _Fold:
        return _Fold(list(self.rows), dict(self.current))

    def apply(self, row: _Row) -> None:
        at = self.current.get(row.entry.archive)
        if row.kind == "retag":
            # Only for the bytes it was made for: a newer version appended meanwhile by
            # another run keeps its own tag.
            if at is not None and self.rows[at].entry.sha256 == row.entry.sha256:
                old = self.rows[at]
                self.rows[at] = replace(
                    old, entry=replace(old.entry, version_tag=row.entry.version_tag)
                )
            return
        if row.entry.status != "superseded":  # superseded rows come from the single-file ledger
            if at is not None:
                old = self.rows[at]
                self.rows[at] = replace(old, entry=replace(old.entry, status="superseded"))
            self.current[row.entry.archive] = len(self.rows)
        self.rows.append(row)


class Ledger:
    """All ledger rows, with the current (non-superseded) row of each archive at hand.

    Rows recorded here are pending until `save` appends them to the log; `entries`,
    `current`, `owners` and `series_files` see the log as last read plus the pending rows.
    """

    def __init__(self, entries: Iterable[LedgerEntry] = ()) -> None:
        self.seq = -1  # the last segment read or written; -1: the log not read yet
        self.loaded_seq = -1  # the last segment when the log was first read
        self._log = _Fold()  # the rows in the log
        self._pending: list[list[_Row]] = []  # units of rows, appended together or not at all
        self._view = self._log  # the log and the pending rows (a copy once there are some)
        for entry in entries:
            self.record(entry)

    @classmethod
    def load(cls, storage: Storage) -> Ledger:
        ledger = cls()
        ledger.refresh(storage)
        return ledger

    def refresh(self, storage: Storage) -> None:
        """Read the segments other runs appended since this ledger last read or wrote."""
        self._catch_up(storage)
        self._view = self._log
        if self._pending:
            self._view = self._log.copy()
            for unit in self._pending:
                for row in unit:
                    self._view.apply(row)

    @property
    def entries(self) -> list[LedgerEntry]:
        return [row.entry for row in self._view.rows]

    def current(self, archive: str) -> LedgerEntry | None:
        at = self._view.current.get(archive)
        return None if at is None else self._view.rows[at].entry

    def owners(self, excluding: Container[str] = ()) -> dict[str, LedgerEntry]:
        """Series id -> the current row of an archive that owns it, over every archive but
        those `excluding` (ledger keys)."""
        owners: dict[str, LedgerEntry] = {}
        for entry in self.entries:
            if entry.status == "ingested" and entry.archive not in excluding:
                owners.update(dict.fromkeys(entry.series_ids, entry))
        return owners

    def record(self, *entries: LedgerEntry) -> None:
        """Add new versions of archives, appended together or not at all (the archives of
        one series group); each one's previous current row becomes superseded."""
        self._add([_Row("entry", entry) for entry in entries])

    def retag(self, archive: str, version_tag: str) -> None:
        """Same bytes under a new ETag/mtime: remember the new tag, do no work."""
        entry = self.current(archive)
        if entry is not None:
            self._add([_Row("retag", replace(entry, version_tag=version_tag))])

    def series_files(self, batches: Container[str] | None = None) -> dict[str, list[str]]:
        """Series file -> the series ids in it that are current: what readers may see; only
        those of `batches` (inbox names) when given (a series never spans batches)."""
        files: dict[str, list[str]] = {}
        for entry in self.entries:
            if batches is not None and entry.batch not in batches:
                continue
            if entry.status == "ingested" and entry.series_file:
                files.setdefault(entry.series_file, []).extend(entry.series_ids)
        return files

    def recorded_meanwhile(self, archive: str, sha256: str, run_id: str) -> LedgerEntry | None:
        """The current row of `archive` if another run appended it for these same bytes
        after this ledger was first read (the work was done twice; only one row counts)."""
        at = self._log.current.get(archive)
        if at is None:
            return None
        row = self._log.rows[at]
        later = row.seq > self.loaded_seq and row.entry.run_id != run_id
        return row.entry if later and row.entry.sha256 == sha256 else None

    def save(self, storage: Storage) -> list[LedgerEntry]:
        """Append the pending rows to the log as one new segment.

        Returns the rows left out because another run appended the same archive versions
        meanwhile (their series files are then referenced by nothing: garbage collection
        removes them). Every `COMPACT_EVERY`th segment also writes a checkpoint.
        """
        if not self._pending:
            return []
        _make_durable(storage, [r.entry.series_file for u in self._pending for r in u])
        dropped: list[LedgerEntry] = []
        lost = -1  # the last seq another writer created first
        while True:
            self._catch_up(storage)
            if self.seq < lost:
                raise StorageError(
                    f"{storage.url(_numbered_path(LOG_DIR, lost))} exists but is not listed: "
                    "the store's listing lags its writes; retry the ingest"
                )
            kept = []
            for unit in self._pending:
                if any(self._duplicate(row) for row in unit):
                    dropped += [row.entry for row in unit]
                else:
                    kept.append(unit)
            self._pending = kept
            if not kept:
                break
            seq = self.seq + 1
            rows = [replace(row, seq=seq) for unit in kept for row in unit]
            if storage.create(_numbered_path(LOG_DIR, seq), _table_bytes(rows)):
                for row in rows:
                    self._log.apply(row)
                self.seq, self._pending = seq, []
                if seq % COMPACT_EVERY == 0:
                    # Everything up to seq is in self._log: every segment before it was read.
                    checkpoint = _table_bytes(self._log.rows)
                    storage.create(_numbered_path(CHECKPOINT_DIR, seq), checkpoint)
                break
            lost = seq
        self._view = self._log
        return dropped

    # -- the log ------------------------------------------------------------------------
    def _add(self, unit: list[_Row]) -> None:
        if self._view is self._log:
            self._view = self._log.copy()
        self._pending.append(unit)
        for row in unit:
            self._view.apply(row)

    def _duplicate(self, row: _Row) -> bool:
        return row.kind == "entry" and (
            self.recorded_meanwhile(row.entry.archive, row.entry.sha256, row.entry.run_id)
            is not None
        )

    def _catch_up(self, storage: Storage) -> None:
        """Read the log from where this ledger stands; from the latest checkpoint when the
        segments in between are gone (or on first reading)."""
        if self.seq < 0:
            self._start_from_checkpoint(storage, _latest_checkpoint(storage))
        for _ in range(3):
            segments = _numbered(storage, LOG_DIR)
            newer = sorted(seq for seq in segments if seq > self.seq)
            contiguous = newer == list(range(self.seq + 1, self.seq + 1 + len(newer)))
            # This ledger's own last segment gone and none after it: garbage collection
            # removed what a newer checkpoint holds, and that may be more than was read here.
            unsure = not newer and self.seq > 0 and self.seq not in segments
            if contiguous and not unsure:
                break
            checkpoint = _latest_checkpoint(storage)
            if checkpoint is not None and checkpoint[0] > self.seq:
                self._start_from_checkpoint(storage, checkpoint)
                continue
            if contiguous:  # nothing appended since; only compacted
                break
            raise _gap(storage, self.seq)
        else:  # garbage collection kept overtaking this reader
            raise _gap(storage, self.seq)
        for seq in newer:
            for row in _read_rows(storage, segments[seq], seq):
                self._log.apply(row)
            self.seq = seq
        if self.loaded_seq < 0:
            self.loaded_seq = self.seq

    def _start_from_checkpoint(self, storage: Storage, checkpoint: tuple[int, str] | None) -> None:
        self._log = _Fold()
        self.seq = 0
        if checkpoint is not None:
            seq, rel = checkpoint
            for row in _read_rows(storage, rel, 0):
                self._log.apply(row)
            self.seq = seq


def _gap(storage: Storage, seq: int) -> LedgerError:
    return LedgerError(
        "ledger_log_gap",
        f"{storage.url(LOG_DIR)} lacks segments after {seq} that no checkpoint holds: the "
        "log was damaged; restore ledger/ from a backup",
    )


def compacted_segments(storage: Storage) -> list[str]:
    """The log segments the latest checkpoint holds (what garbage collection may remove)."""
    checkpoint = _latest_checkpoint(storage)
    if checkpoint is None:
        return []
    return [rel for seq, rel in sorted(_numbered(storage, LOG_DIR).items()) if seq <= checkpoint[0]]


def _numbered_path(folder: str, seq: int) -> str:
    return f"{folder}/{seq:012d}.parquet"


def _numbered(storage: Storage, folder: str) -> dict[int, str]:
    """Seq -> path of the numbered files in `folder` (not the temp files of a local create)."""
    found = {}
    for info in storage.list_files(folder):
        match = _NUMBERED.fullmatch(info.path.rsplit("/", 1)[-1])
        if match:
            found[int(match.group(1))] = info.path
    return found


def _latest_checkpoint(storage: Storage) -> tuple[int, str] | None:
    """The newest checkpoint (the single-file ledger as seq 0); None on a fresh root."""
    checkpoints = _numbered(storage, CHECKPOINT_DIR)
    if checkpoints:
        seq = max(checkpoints)
        return seq, checkpoints[seq]
    return (0, LEGACY_PATH) if storage.exists(LEGACY_PATH) else None


def _read_rows(storage: Storage, rel: str, seq: int) -> list[_Row]:
    """The rows of a segment or checkpoint (`seq`: theirs where the file has no seq column)."""
    table = pq.read_table(io.BytesIO(storage.read_bytes(rel)))
    check_columns(table.schema, _SCHEMA, storage.url(rel), "ledger", _OPTIONAL)
    rows = []
    for values in table.to_pylist():
        kind = values.pop("row_kind", None) or "entry"
        row_seq = values.pop("seq", None)
        rows.append(_Row(kind, LedgerEntry(**values), seq if row_seq is None else row_seq))
    return rows


def _table_bytes(rows: list[_Row]) -> bytes:
    values = [{**asdict(r.entry), "row_kind": r.kind, "seq": r.seq} for r in rows]
    table = pa.Table.from_pylist(values, schema=_SCHEMA) if values else _SCHEMA.empty_table()
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd")
    return buffer.getvalue()


def _make_durable(storage: Storage, series_files: Iterable[str]) -> None:
    """Flush series files to disk before a segment names them: they are streamed through
    fsspec, which does not fsync, and a power cut must not leave a row naming lost bytes.

    The segments and checkpoints themselves need nothing more: `Storage.create` (like
    `write_atomic`) fsyncs the temp file before linking it and the folder after. On S3 an
    object is durable once its PUT (or multipart upload) has completed.
    """
    if not storage.is_local:
        return
    paths = {storage.path(rel) for rel in series_files if rel}
    for path in sorted(paths | {os.path.dirname(p) for p in paths}):
        descriptor = os.open(path, os.O_RDONLY)  # fsync through a read-only descriptor
        try:  # flushes the file's (or folder's) dirty pages all the same
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
