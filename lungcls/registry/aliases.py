"""Aliases: named pointers (`champion`) at model versions, moved atomically.

An alias is a sequence of immutable pointer files `models/<name>/aliases/<alias>/<seq>.json`
(`AliasPointer`); the highest number is the current one. Moving it means creating the next
number with an exclusive create, so of two concurrent moves from the same state exactly one
wins, on any backend, and the files are the alias's whole history.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import ClassVar

from lungcls.io.records import Record
from lungcls.io.storage import Storage


class AliasPointer(Record):
    """One move of an alias: where it points, where it pointed before, and which decision
    (a promotion or a rollback) moved it. Pointers written before 0.3 name no action: they
    were promotions."""

    SCHEMA: ClassVar[str] = "lungcls.alias/1"
    LEGACY_UNTAGGED: ClassVar[bool] = True

    alias: str
    version: int
    previous_version: int | None
    decision: str
    at: str
    action: str = "promote"


@dataclass(frozen=True)
class AliasState:
    """An alias as read: `sequence` is its current pointer's number (0: never set), the one a
    move must follow; `decision`, `action` and `at` say which decision made the current move,
    of which kind and when."""

    alias: str
    sequence: int
    version: int | None
    previous_version: int | None
    decision: str | None = None
    action: str | None = None
    at: str | None = None


def alias_dir(name: str, alias: str) -> str:
    return f"models/{name}/aliases/{alias}"


def read_alias(storage: Storage, name: str, alias: str) -> AliasState:
    """Where `alias` points now, and where it pointed before."""
    pointers = sorted(
        (int(stem), info.path)
        for info in storage.list_files(alias_dir(name, alias))
        if info.path.endswith(".json") and (stem := info.path.rsplit("/", 1)[-1][:-5]).isdigit()
    )
    if not pointers:
        return AliasState(alias, 0, None, None)
    sequence, path = pointers[-1]
    current = AliasPointer.from_json(storage.read_bytes(path), storage.url(path))
    return AliasState(
        alias,
        sequence,
        current.version,
        current.previous_version,
        current.decision,
        current.action,
        current.at,
    )


def move_alias(
    storage: Storage,
    name: str,
    state: AliasState,
    version: int,
    decision_id: str,
    action: str = "promote",
) -> bool:
    """Point `state.alias` at `version` if nobody moved it since `state` was read."""
    pointer = AliasPointer(
        alias=state.alias,
        version=version,
        previous_version=state.version,
        decision=decision_id,
        at=datetime.now(UTC).isoformat(timespec="seconds"),
        action=action,
    )
    rel = f"{alias_dir(name, state.alias)}/{state.sequence + 1:08d}.json"
    return pointer.save(storage, rel, exclusive=True)
