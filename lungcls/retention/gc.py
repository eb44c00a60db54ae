"""`lungcls gc`: delete the files no committed record names, and nothing else.

    plan = plan_gc(storage, settings)        # what would go, and what is held back
    result = apply_gc(storage, plan)          # delete it; result.removed_bytes reclaimed

What goes (`sweep.Reason`; found area by area in `leftovers.py` and `run_files.py`):

- `uncommitted_version`: files of a `datasets/`, `models/` or evaluation `v<N>/` folder
  whose commit marker (manifest.json, model.json, report.json) never came: a killed build,
  training or evaluation. Its `claim.json` stays: `claim_version` numbers one above every
  `v<N>` folder present, and the claim keeps the folder, so the number is never claimed
  again (a folder without one, from lungcls 0.1, gets a tombstone claim first).
- `unreferenced_shard`: a shard in a committed version that no committed manifest names
  (a version reuses older versions' shards, so the union over all manifests counts).
- `superseded_series`, `orphan_series`: series files only superseded ledger rows name, or
  none (an ingest killed before its segment, or a row another run recorded first).
- `old_checkpoint`: Ray Train checkpoints of a finished run beyond
  `storage.gc_keep_checkpoints` (the model version holds the weights).
- `expired_cache`: cached Prefect stage results older than `storage.gc_cache_days` or past
  their own expiration; the next run recomputes what it needs.
- `compacted_ledger_segment`, `stale_lease`, `stale_staging`, `stale_probe`, `temp_file`:
  ledger segments a checkpoint holds, old lease generations, staged slices of a killed
  ingest, store probes and temporary files of killed local writes.

Never touched: anything a manifest, model record, evaluation report, current ledger row or
alias names; `inbox/`, `quarantine/` (evidence), `labels/`, `runs/` records, decisions,
aliases, predictions. Safe while other runs write: nothing younger than
`storage.gc_grace_hours` (default 24) goes; a version whose claiming run holds its stage's
lease, series files an ingest or build running now may read, staging of the ingest holding
the lease and checkpoints of a resumable run are kept. Just before deleting, a version's
marker is asked again (committed meanwhile: skipped) and the ledger is read again (a
series file named again: skipped). Files already gone (another gc) are passed over.
"""

from __future__ import annotations

import json
import os
import posixpath
from collections import defaultdict
from datetime import UTC, datetime
from typing import ClassVar

from lungcls.config import Settings
from lungcls.ingest.ledger import Ledger
from lungcls.io.records import Part, Record
from lungcls.io.storage import Storage
from lungcls.io.versions import CLAIM
from lungcls.retention.leftovers import find_leftovers
from lungcls.retention.sweep import GcCandidate, GcKept, Reason

_SERIES_REASONS = frozenset({"superseded_series", "orphan_series"})
_EXAMPLES = 3  # paths shown per reason in the text output (--json has them all)


class GcTotal(Part):
    """Files and bytes of one reason."""

    reason: Reason
    files: int
    bytes: int


class GcPlan(Record):
    """What `lungcls gc` would delete now (`candidates`), and what it holds back."""

    SCHEMA: ClassVar[str] = "lungcls.gc-plan/1"

    root: str
    planned_at: datetime
    grace_hours: float
    candidates: list[GcCandidate]
    kept: list[GcKept]

    @property
    def files(self) -> int:
        return len(self.candidates)

    @property
    def bytes(self) -> int:
        return sum(c.bytes for c in self.candidates)

    def summary_lines(self) -> list[str]:
        """What `lungcls gc` prints without `--apply`."""
        return [
            f"gc of {self.root} (grace {self.grace_hours:g} h): {_count(self.files)}, "
            f"{_size(self.bytes)} to delete",
            *_reason_lines(self.candidates),
            *_kept_lines(self.kept, self.grace_hours),
            "dry run: nothing deleted; `lungcls gc --apply` deletes these files",
        ]


class GcResult(Record):
    """What `apply_gc` deleted (`removed_bytes` reclaimed), by reason."""

    SCHEMA: ClassVar[str] = "lungcls.gc-result/1"

    root: str
    grace_hours: float
    removed_files: int
    removed_bytes: int
    removed: list[GcTotal]
    already_gone: int  # deleted by someone else between the plan and now
    skipped: list[GcCandidate]  # committed or named again since the plan
    kept: list[GcKept]

    def summary_lines(self) -> list[str]:
        """What `lungcls gc --apply` prints."""
        lines = [
            f"gc of {self.root} (grace {self.grace_hours:g} h): deleted "
            f"{_count(self.removed_files)}, {_size(self.removed_bytes)} reclaimed",
            *(_total_line(t) for t in self.removed),
        ]
        if self.already_gone:
            lines.append(f"  {_count(self.already_gone)} already gone")
        if self.skipped:
            lines.append(
                f"  {_count(len(self.skipped))} skipped: committed or named again since the plan"
            )
        return lines + _kept_lines(self.kept, self.grace_hours)


def plan_gc(storage: Storage, settings: Settings, now: datetime | None = None) -> GcPlan:
    """Everything `apply_gc` would delete at `now` (default: now), and what is held back."""
    now = now or datetime.now(UTC)
    sweep = find_leftovers(storage, settings.storage, now)
    return GcPlan(
        root=storage.root_url,
        planned_at=now,
        grace_hours=settings.storage.gc_grace_hours,
        candidates=sorted(sweep.candidates.values(), key=lambda c: (c.reason, c.path)),
        kept=sweep.kept(),
    )


def apply_gc(storage: Storage, plan: GcPlan) -> GcResult:
    """Delete the plan's files, checking the commit records once more first."""
    committed: dict[str, bool] = {}  # guard marker -> committed by now
    current: set[str] | None = None  # series files the ledger names now
    removed: list[GcCandidate] = []
    skipped: list[GcCandidate] = []
    gone = 0
    for candidate in plan.candidates:
        if candidate.guard is not None:
            if candidate.guard not in committed:
                committed[candidate.guard] = _committed_or_claimed(storage, candidate.guard)
            if committed[candidate.guard]:
                skipped.append(candidate)
                continue
        if candidate.reason in _SERIES_REASONS:
            if current is None:
                current = set(Ledger.load(storage).series_files())
            if candidate.path in current:
                skipped.append(candidate)
                continue
        if _remove(storage, candidate.path):
            removed.append(candidate)
        else:
            gone += 1
    if storage.is_local:
        _prune_empty_folders(storage, [c.path for c in removed])
    return GcResult(
        root=plan.root,
        grace_hours=plan.grace_hours,
        removed_files=len(removed),
        removed_bytes=sum(c.bytes for c in removed),
        removed=_totals(removed),
        already_gone=gone,
        skipped=skipped,
        kept=plan.kept,
    )


def _committed_or_claimed(storage: Storage, marker: str) -> bool:
    """True when the version of `marker` is committed by now; otherwise make sure its claim
    exists before its files go, so that its number stays taken."""
    if storage.exists(marker):
        return True
    folder = posixpath.dirname(marker)
    tombstone = {
        "run_id": "gc",
        "claimed_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "note": "written by lungcls gc: this version was never committed; its files were "
        "deleted and its number stays taken",
    }
    storage.create(f"{folder}/{CLAIM}", json.dumps(tombstone).encode())  # False: one exists
    return False


def _remove(storage: Storage, rel: str) -> bool:
    """Delete one file; False when it was gone already."""
    try:
        storage.fs.rm_file(storage.path(rel))
    except FileNotFoundError:
        return False
    return True


def _prune_empty_folders(storage: Storage, removed: list[str]) -> None:
    """Remove the local folders the deletions emptied (checkpoint and staging folders),
    up to the top-level folder; S3 has no folders. A version folder keeps its claim."""
    folders = {posixpath.dirname(rel) for rel in removed}
    for folder in sorted(folders, key=lambda f: -f.count("/")):
        while folder.count("/") >= 1:
            try:
                os.rmdir(storage.path(folder))
            except OSError:  # not empty (or gone): its parents are not empty either
                break
            folder = posixpath.dirname(folder)


def _totals(candidates: list[GcCandidate]) -> list[GcTotal]:
    by_reason: dict[Reason, list[int]] = defaultdict(lambda: [0, 0])
    for c in candidates:
        by_reason[c.reason][0] += 1
        by_reason[c.reason][1] += c.bytes
    return [GcTotal(reason=r, files=n, bytes=b) for r, (n, b) in sorted(by_reason.items())]


def _reason_lines(candidates: list[GcCandidate]) -> list[str]:
    lines = []
    for total in _totals(candidates):
        lines.append(_total_line(total))
        paths = [c.path for c in candidates if c.reason == total.reason]
        lines += [f"      {p}" for p in paths[:_EXAMPLES]]
        if len(paths) > _EXAMPLES:
            lines.append(f"      … {len(paths) - _EXAMPLES} more (--json lists all)")
    return lines


def _kept_lines(kept: list[GcKept], grace_hours: float) -> list[str]:
    why = {
        "young": f"younger than {grace_hours:g} h",
        "in_use": "in use: a running stage, or a training run that can resume",
    }
    return [f"  kept {k.reason} ({why[k.why]}): {_count(k.files)}, {_size(k.bytes)}" for k in kept]


def _total_line(total: GcTotal) -> str:
    return f"  {total.reason:<26} {_count(total.files):>13} {_size(total.bytes):>10}"


def _count(files: int) -> str:
    return f"{files} file" if files == 1 else f"{files} files"


def _size(n: int) -> str:
    if n < 1000:
        return f"{n} B"
    value, unit = float(n), "B"
    for unit in ("kB", "MB", "GB"):  # noqa: B007 (the unit reached is the one printed)
        value /= 1000
        if value < 1000:
            break
    return f"{value:.1f} {unit}"
