"""The ingest ledger: one row per archive version ever ingested, the commit point of ingest.

`ledger/archives.parquet` is rewritten atomically after archives finish. A series file only
counts once a ledger row names it and the series it owns, so a crash between writing series
data and writing the ledger leaves an unreferenced file, never a half-visible archive; the
rerun ingests that archive again and the ledger points at the new file.
"""

from __future__ import annotations

import io
from collections.abc import Container
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Literal

import pyarrow as pa
import pyarrow.parquet as pq

from lungcls.io.storage import Storage
from lungcls.io.tables import check_columns

LEDGER_PATH = "ledger/archives.parquet"
Status = Literal["ingested", "rejected", "superseded"]

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
    ]
)
# Columns ledgers written before them lack; their rows read with the field's default.
_OPTIONAL = frozenset({"archive_id", "n_skipped", "settings_hash"})


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


class Ledger:
    """All ledger rows, with the current (non-superseded) row of each archive at hand."""

    def __init__(self, entries: list[LedgerEntry]) -> None:
        self.entries = entries

    @classmethod
    def load(cls, storage: Storage) -> Ledger:
        if not storage.exists(LEDGER_PATH):
            return cls([])
        table = pq.read_table(io.BytesIO(storage.read_bytes(LEDGER_PATH)))
        check_columns(table.schema, _SCHEMA, storage.url(LEDGER_PATH), "ledger", _OPTIONAL)
        return cls([LedgerEntry(**row) for row in table.to_pylist()])

    def save(self, storage: Storage) -> None:
        names = [f.name for f in fields(LedgerEntry)]
        rows = [asdict(e) for e in self.entries]
        table = pa.Table.from_pylist(rows, schema=_SCHEMA) if rows else _SCHEMA.empty_table()
        buffer = io.BytesIO()
        pq.write_table(table.select(names), buffer, compression="zstd")
        storage.write_atomic(LEDGER_PATH, buffer.getvalue())

    def current(self, archive: str) -> LedgerEntry | None:
        for entry in reversed(self.entries):
            if entry.archive == archive and entry.status != "superseded":
                return entry
        return None

    def owners(self, excluding: Container[str] = ()) -> dict[str, LedgerEntry]:
        """Series id -> the current row of an archive that owns it, over every archive but
        those `excluding` (ledger keys)."""
        owners: dict[str, LedgerEntry] = {}
        for entry in self.entries:
            if entry.status == "ingested" and entry.archive not in excluding:
                owners.update(dict.fromkeys(entry.series_ids, entry))
        return owners

    def record(self, entry: LedgerEntry) -> None:
        """Add a new version of an archive; its previous current row becomes superseded."""
        self.entries = [
            replace(e, status="superseded")
            if e.archive == entry.archive and e.status != "superseded"
            else e
            for e in self.entries
        ]
        self.entries.append(entry)

    def retag(self, archive: str, version_tag: str) -> None:
        """Same bytes under a new ETag/mtime: remember the new tag, do no work."""
        self.entries = [
            replace(e, version_tag=version_tag)
            if e.archive == archive and e.status != "superseded"
            else e
            for e in self.entries
        ]

    def series_files(self) -> dict[str, list[str]]:
        """Series file -> the series ids in it that are current: what readers may see."""
        files: dict[str, list[str]] = {}
        for entry in self.entries:
            if entry.status == "ingested" and entry.series_file:
                files.setdefault(entry.series_file, []).extend(entry.series_ids)
        return files
