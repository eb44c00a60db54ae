"""The sorting of `lungcls gc`: what finders offer goes, unless a record names it, it is
young, or a running stage may still use it (the records of a plan are defined here)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

from lungcls.io.records import Part
from lungcls.io.storage import ObjectInfo

Reason = Literal[
    "uncommitted_version",  # a claimed version folder whose commit marker never came
    "unreferenced_shard",  # a shard in a committed version that no manifest names
    "superseded_series",  # a series file only superseded ledger rows name
    "orphan_series",  # a series file no ledger row names (a killed or lost ingest)
    "old_checkpoint",  # Ray Train checkpoints beyond storage.gc_keep_checkpoints
    "expired_cache",  # cached Prefect stage results past their expiry
    "compacted_ledger_segment",  # ledger segments and checkpoints a newer checkpoint holds
    "stale_lease",  # files of lease generations before the current one
    "stale_staging",  # staged slices of an ingest that did not finish
    "stale_probe",  # a store probe its process could not remove
    "temp_file",  # the temporary file of a local write killed before its rename
]
Why = Literal["young", "in_use"]


class GcCandidate(Part):
    """A file `lungcls gc` deletes, and why. `guard`: the commit marker that must still be
    absent when it is deleted (a version folder's)."""

    path: str
    bytes: int
    reason: Reason
    modified: datetime | None
    guard: str | None = None


class GcKept(Part):
    """Files that are garbage by their records but were kept: younger than the grace
    period, or in use by a stage whose lease is live (or a run that can still resume)."""

    reason: Reason
    why: Why
    files: int
    bytes: int


@dataclass
class Sweep:
    """What the finders offered, sorted into deletions and files held back."""

    cutoff: datetime  # files written after this are young
    protected: set[str] = field(default_factory=set)  # named by a committed record
    candidates: dict[str, GcCandidate] = field(default_factory=dict)
    _kept: dict[tuple[Reason, Why], list[int]] = field(default_factory=dict)

    def offer(
        self,
        info: ObjectInfo,
        reason: Reason,
        *,
        since: datetime | None = None,
        in_use: bool = False,
        guard: str | None = None,
    ) -> None:
        """`info` is garbage for `reason` since `since` (default: its last write)."""
        if info.path in self.protected or info.path in self.candidates:
            return
        why: Why | None = "in_use" if in_use else None
        old = at_or_before(info.modified, self.cutoff) and (since is None or since <= self.cutoff)
        if why is None and not old:
            why = "young"  # an undated file counts as young: it is never deleted
        if why is not None:
            kept = self._kept.setdefault((reason, why), [0, 0])
            kept[0], kept[1] = kept[0] + 1, kept[1] + info.size
            return
        self.candidates[info.path] = GcCandidate(
            path=info.path, bytes=info.size, reason=reason, modified=info.modified, guard=guard
        )

    def kept(self) -> list[GcKept]:
        return [
            GcKept(reason=reason, why=why, files=files, bytes=size)
            for (reason, why), (files, size) in sorted(self._kept.items())
        ]


def by_folder(files: Iterable[ObjectInfo], depth: int) -> dict[str, list[ObjectInfo]]:
    """Files under a folder `depth` parts deep, by that folder."""
    groups: dict[str, list[ObjectInfo]] = defaultdict(list)
    for info in files:
        parts = info.path.split("/")
        if len(parts) > depth:
            groups["/".join(parts[:depth])].append(info)
    return dict(groups)


def latest_write(files: Iterable[ObjectInfo]) -> datetime | None:
    """The latest write among `files`; None when any is undated (then each file's own date
    decides, and the undated one stays)."""
    times = [i.modified for i in files]
    if not times or None in times:
        return None
    return max(t for t in times if t is not None)


def at_or_before(moment: datetime | None, cutoff: datetime) -> bool:
    return moment is not None and moment <= cutoff


def parse_time(text: str) -> datetime | None:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
