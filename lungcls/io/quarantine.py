"""Quarantine: what was refused, why, and where the original is, as machine-readable records.

Every rejected archive, file, series or labels row gets
`quarantine/<run>/<level>-<id>/reason.json`. Codes are stable (tests and dashboards key on
them); messages are for people. The record points at the original in the read-only inbox
(URL, member path, SHA-256) instead of copying patient data a second time. Records never
hold raw identifiers: series are named by pseudonym, labels rows by row number.

Inbox paths (folder and file names can name patients) stay in these records, the operator's
view with the inbox's access. Every copy that travels further (stage results, Prefect
artifacts, logs) is `redacted()`: the archive is named by its keyed pseudonym only.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any, ClassVar, Literal

from pydantic import SerializerFunctionWrapHandler, model_serializer

from lungcls.io.records import Part, Record
from lungcls.io.storage import Storage

QUARANTINE_DIR = "quarantine"

Level = Literal["archive", "file", "series", "labels"]


class ContractViolation(Part):
    """Why a data contract refused a series: the expectations it failed, what was seen."""

    contract: str
    version: str
    expectations: list[str]
    observed: dict[str, str]  # column -> the value the expectation refused


class QuarantineItem(Record):
    """One refused input; `run` and `at` are stamped when it is written (`stamped`)."""

    SCHEMA: ClassVar[str] = "lungcls.quarantine/1"

    run: str | None = None
    at: str | None = None  # ISO 8601, UTC
    level: Level
    code: str  # stable, machine-readable
    message: str  # for people
    source_url: str  # the original (archive, labels.csv, series file); "" once redacted
    archive_id: str | None = None  # the archive's keyed pseudonym (ingest)
    member: str | None = None  # the file inside an archive
    sha256: str | None = None
    series_id: str | None = None  # pseudonym
    row: int | None = None  # labels.csv row
    details: ContractViolation | None = None

    @model_serializer(mode="wrap")
    def _archive_id_only_when_known(self, handler: SerializerFunctionWrapHandler) -> Any:
        # Records written before archive pseudonyms (and by stages other than ingest) are
        # written as they always were.
        data = handler(self)
        if data.get("archive_id") is None:
            data.pop("archive_id", None)
        return data

    @property
    def item_id(self) -> str:
        identity = f"{self.level}|{self.source_url}|{self.member}|{self.series_id}|{self.row}"
        return hashlib.sha256(f"{identity}|{self.code}".encode()).hexdigest()[:16]

    def path(self, run_id: str) -> str:
        return f"{QUARANTINE_DIR}/{run_id}/{self.level}-{self.item_id}/reason.json"

    def stamped(self, run_id: str) -> QuarantineItem:
        """This item as written by run `run_id`, now."""
        at = datetime.now(UTC).isoformat(timespec="seconds")
        return self.model_copy(update={"run": run_id, "at": at})

    def redacted(self) -> QuarantineItem:
        """This item without inbox paths (source URL, member name): what may leave the
        operator's view. The record on disk keeps them."""
        return self.model_copy(update={"source_url": "", "member": None})

    @property
    def where(self) -> str:
        """What was refused within its source: member, series, labels row or archive."""
        if self.member or self.series_id:
            return str(self.member or self.series_id)
        if self.row is not None:
            return f"row {self.row}"
        return f"file {self.sha256[:12]}" if self.sha256 else (self.archive_id or "")

    def line(self) -> str:
        """How the CLI reports it; with the source's URL unless redacted."""
        source = f"{self.source_url} " if self.source_url else ""
        return f"  quarantined {self.level} {source}{self.where}: {self.code}: {self.message}"

    def table_row(self, record_url: str) -> dict[str, str]:
        """A row of an artifact table; no source URL (inbox paths may name patients)."""
        return {
            "level": self.level,
            "code": self.code,
            "reason": self.message,
            "series": self.series_id or "",
            "record": record_url,
        }


def write_quarantine(
    storage: Storage, run_id: str, items: list[QuarantineItem]
) -> list[QuarantineItem]:
    """Write one reason.json per item; returns the items as written (stamped with the run)."""
    written = [item.stamped(run_id) for item in items]
    for item in written:
        item.save(storage, item.path(run_id))
    return written


def read_quarantine(storage: Storage, run_id: str | None = None) -> list[QuarantineItem]:
    """All reason records, or one run's, oldest run first."""
    prefix = f"{QUARANTINE_DIR}/{run_id}" if run_id else QUARANTINE_DIR
    return [
        QuarantineItem.load(storage, info.path)
        for info in storage.list_files(prefix)
        if info.path.endswith("/reason.json")
    ]
