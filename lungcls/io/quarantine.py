"""Quarantine: what was refused, why, and where the original is, as machine-readable records.

Every rejected archive, file, series or labels row gets
`quarantine/<run>/<level>-<id>/reason.json`. Codes are stable (tests and dashboards key on
them); messages are for people. The record points at the original in the read-only inbox
(URL, member path, SHA-256) instead of copying patient data a second time. Records never
hold raw identifiers: series are named by pseudonym, labels rows by row number.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Literal

from lungcls.io.storage import Storage

QUARANTINE_DIR = "quarantine"
SCHEMA = "lungcls.quarantine/1"

Level = Literal["archive", "file", "series", "labels"]


@dataclass(frozen=True)
class QuarantineItem:
    level: Level
    code: str
    message: str
    source_url: str
    member: str | None = None
    sha256: str | None = None
    series_id: str | None = None
    row: int | None = None
    details: dict[str, object] | None = None

    @property
    def item_id(self) -> str:
        identity = f"{self.level}|{self.source_url}|{self.member}|{self.series_id}|{self.row}"
        return hashlib.sha256(f"{identity}|{self.code}".encode()).hexdigest()[:16]

    def summary(self) -> dict[str, object]:
        """The record without empty fields, for run summaries and `--json`."""
        return {k: v for k, v in asdict(self).items() if v is not None}

    def to_json(self, run_id: str) -> dict[str, object]:
        return {
            "schema": SCHEMA,
            "run": run_id,
            "at": datetime.now(UTC).isoformat(timespec="seconds"),
            **asdict(self),
        }


def write_quarantine(storage: Storage, run_id: str, items: list[QuarantineItem]) -> list[str]:
    """Write one reason.json per item; returns their paths under the root."""
    paths = []
    for item in items:
        rel = f"{QUARANTINE_DIR}/{run_id}/{item.level}-{item.item_id}/reason.json"
        storage.write_atomic(rel, json.dumps(item.to_json(run_id), indent=2).encode())
        paths.append(rel)
    return paths


def read_quarantine(storage: Storage, run_id: str | None = None) -> list[dict[str, object]]:
    """All reason records, or one run's, oldest run first."""
    prefix = f"{QUARANTINE_DIR}/{run_id}" if run_id else QUARANTINE_DIR
    return [
        json.loads(storage.read_bytes(info.path))
        for info in storage.list_files(prefix)
        if info.path.endswith("/reason.json")
    ]
