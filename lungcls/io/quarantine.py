"""Quarantine: what was refused, why, and where the original is, as machine-readable records.

Every rejected archive, file, series or labels row gets
`quarantine/<run>/<level>-<id>/reason.json`. Codes are stable (tests and dashboards key on
them); messages are for people. The record points at the original in the read-only inbox
(URL, member path, SHA-256) instead of copying patient data a second time. Records never
hold raw identifiers: series are named by pseudonym, labels rows by row number.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import ClassVar, Literal

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
    source_url: str  # the original (archive, labels.csv, series file)
    member: str | None = None  # the file inside an archive
    sha256: str | None = None
    series_id: str | None = None  # pseudonym
    row: int | None = None  # labels.csv row
    details: ContractViolation | None = None

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

    @property
    def where(self) -> str:
        """What was refused within its source: member, series or labels row."""
        found = self.member or self.series_id or self.row
        return str(found) if found else ""

    def line(self) -> str:
        """How the CLI reports it."""
        return f"  quarantined {self.level} {self.where}: {self.code}: {self.message}"

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
