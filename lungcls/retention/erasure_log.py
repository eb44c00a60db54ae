"""The erasure log: what was erased from a root, which every later ingest and build honours.

    erasure/log/<seq:012d>.json       one request (`ErasureEntry`): the patient pseudonyms,
                                      archive SHA-256s and series pseudonyms erased, when, by
                                      whom and why; written with an exclusive create BEFORE
                                      anything is removed
    erasure/outcome/<seq:012d>.json   what that request removed (`ErasureOutcome`), written
                                      once it is done; an entry without one is unfinished

The entry comes first so that nothing erased can come back while the erasure runs or after
it died halfway: ingest refuses an archive whose SHA-256 is in the log, and a series of a
patient (or a series) in the log, with code `erased`, and a dataset build leaves them out
even if a series file still holds them (`without_erased`). Running the same erasure again
finishes what a killed one left.

The log holds no PHI: pseudonyms (keyed hashes), SHA-256s of archive bytes (never inbox
paths, which may name patients), counts, and who asked (`--by`, an operator's name).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Literal

from lungcls.dataset.manifest import DatasetRef
from lungcls.io.records import Part, Record
from lungcls.io.storage import Storage

if TYPE_CHECKING:  # ingest's workers import this module: pandas only where a build runs
    import pandas as pd

log = logging.getLogger(__name__)

LOG_DIR = "erasure/log"
OUTCOME_DIR = "erasure/outcome"
_NUMBERED = re.compile(r"(\d{12})\.json")


class ErasureEntry(Record):
    """`erasure/log/<seq>.json`: one erasure request, recorded before anything is removed."""

    SCHEMA: ClassVar[str] = "lungcls.erasure/1"

    seq: int
    run_id: str
    requested_at: str  # ISO 8601, UTC
    by: str  # who asked: an operator's name, never a patient's
    reason: str
    kind: Literal["patient", "archive"]
    patients: list[str]  # patient pseudonyms: every series of theirs is refused from now on
    archives: list[str]  # SHA-256 of archive bytes: a re-delivery is refused
    series: list[str]  # series pseudonyms removed: refused again in any archive


class AffectedModel(Part):
    """A model version trained on a dataset version that held erased data: retrain it."""

    name: str
    version: int
    dataset: DatasetRef

    def __str__(self) -> str:
        return f"{self.name} v{self.version} (trained on {self.dataset})"


class ErasureOutcome(Record):
    """`erasure/outcome/<seq>.json`: what the erasure `seq` removed, once it is done."""

    SCHEMA: ClassVar[str] = "lungcls.erasure-outcome/1"

    seq: int
    run_id: str
    finished_at: str  # ISO 8601, UTC
    series_removed: int  # rows of the series store
    archives_removed: int  # inbox archives deleted
    files_removed: int  # every file deleted (old copies of rewritten files included)
    bytes_removed: int  # their sizes
    files_rewritten: int  # new copies of files that held others' data too
    label_rows_removed: int  # labels tables and inbox labels.csv rows
    quarantine_records_removed: int
    score_rows_removed: int  # out-of-fold, evaluation, fold and prediction score rows
    datasets_withdrawn: list[DatasetRef]  # versions whose shards held erased samples
    datasets_published: list[DatasetRef]  # the versions built without them
    models_affected: list[AffectedModel]  # trained on a withdrawn version: retrain them
    notes: list[str]  # what could not be done, and why

    def lines(self) -> list[str]:
        removed = (
            f"  removed {self.series_removed} series, {self.archives_removed} inbox archives, "
            f"{self.label_rows_removed} label rows, {self.quarantine_records_removed} "
            f"quarantine records, {self.score_rows_removed} score rows: {self.files_removed} "
            f"files ({self.bytes_removed} bytes) deleted, {self.files_rewritten} rewritten"
        )
        lines = [removed]
        if self.datasets_withdrawn:
            withdrawn = ", ".join(str(d) for d in self.datasets_withdrawn)
            lines.append(f"  dataset versions withdrawn: {withdrawn}")
        if self.datasets_published:
            published = ", ".join(str(d) for d in self.datasets_published)
            lines.append(f"  dataset versions published without them: {published}")
        lines += [f"  retrain: model {m}" for m in self.models_affected]
        lines += [f"  note: {note}" for note in self.notes]
        return lines


class ErasureLogLine(Part):
    """One request of the log with its outcome (None: unfinished)."""

    entry: ErasureEntry
    outcome: ErasureOutcome | None

    def lines(self) -> list[str]:
        e = self.entry
        what = ", ".join(e.patients) if e.kind == "patient" else f"{len(e.archives)} archive(s)"
        archives = ", ".join(sha[:12] for sha in e.archives) or "none"
        lines = [
            f"erasure #{e.seq} of {e.kind} {what}: {e.requested_at} by {e.by}"
            + (f" ({e.reason})" if e.reason else ""),
            f"  archives refused from now on (SHA-256): {archives}; {len(e.series)} series",
        ]
        if self.outcome is None:
            return [*lines, "  UNFINISHED: run the same `lungcls erase` again to finish it"]
        return [*lines, *self.outcome.lines()]


class ErasureReport(Part):
    """`lungcls erase --report`: the whole log, oldest first."""

    erasures: list[ErasureLogLine]

    def lines(self) -> list[str]:
        if not self.erasures:
            return ["no erasures recorded under this root"]
        return [line for item in self.erasures for line in item.lines()]


@dataclass(frozen=True)
class Erased:
    """Everything the log says must not come back (empty on a root without erasures)."""

    patients: frozenset[str] = frozenset()
    archives: frozenset[str] = frozenset()  # SHA-256 of archive bytes
    series: frozenset[str] = frozenset()

    def __bool__(self) -> bool:
        return bool(self.patients or self.archives or self.series)

    def refuses(self, patient_id: str | None, series_id: str | None) -> bool:
        """Whether a series (or a row about one) is erased data."""
        return patient_id in self.patients or series_id in self.series

    def fingerprint(self) -> str:
        """What a dataset build depends on: a new erasure makes a new version."""
        payload = [sorted(self.patients), sorted(self.archives), sorted(self.series)]
        return hashlib.sha256(json.dumps(payload).encode()).hexdigest()


def _numbered(storage: Storage, folder: str) -> dict[int, str]:
    found = {}
    for info in storage.list_files(folder):
        match = _NUMBERED.fullmatch(info.path.rsplit("/", 1)[-1])
        if match:  # not the temporary file of a local exclusive create
            found[int(match.group(1))] = info.path
    return found


def log_entries(storage: Storage) -> list[ErasureEntry]:
    """Every erasure request, oldest first."""
    return [
        ErasureEntry.load(storage, rel) for _, rel in sorted(_numbered(storage, LOG_DIR).items())
    ]


def erasure_log(storage: Storage) -> ErasureReport:
    """Every erasure request with what it removed (`lungcls erase --report`)."""
    outcomes = _numbered(storage, OUTCOME_DIR)
    return ErasureReport(
        erasures=[
            ErasureLogLine(
                entry=entry,
                outcome=ErasureOutcome.load(storage, outcomes[entry.seq])
                if entry.seq in outcomes
                else None,
            )
            for entry in log_entries(storage)
        ]
    )


def read_erased(storage: Storage) -> Erased:
    """What ingest and dataset builds must refuse, from the whole log."""
    entries = log_entries(storage)
    return Erased(
        patients=frozenset(p for e in entries for p in e.patients),
        archives=frozenset(a for e in entries for a in e.archives),
        series=frozenset(s for e in entries for s in e.series),
    )


def erased_patients(storage: Storage) -> frozenset[str]:
    return read_erased(storage).patients


def erased_archives(storage: Storage) -> frozenset[str]:
    return read_erased(storage).archives


def append_entry(storage: Storage, entry: ErasureEntry) -> ErasureEntry:
    """Write `entry` as the next number of the log (exclusive create: two erasures at once
    never share one); returns it with its number."""
    while True:
        taken = _numbered(storage, LOG_DIR)
        numbered = entry.model_copy(update={"seq": max(taken, default=0) + 1})
        if numbered.save(storage, f"{LOG_DIR}/{numbered.seq:012d}.json", exclusive=True):
            return numbered


def save_outcome(storage: Storage, outcome: ErasureOutcome) -> None:
    """Record what erasure `outcome.seq` removed: it is finished."""
    outcome.save(storage, f"{OUTCOME_DIR}/{outcome.seq:012d}.json", exclusive=True)


def without_erased(frame: pd.DataFrame, erased: Erased) -> pd.DataFrame:
    """A series frame without the series of erased patients (or erased series): a dataset
    build never uses them, even if a series file still holds them."""
    if not erased or frame.empty:
        return frame
    drop = frame["patient_id"].isin(erased.patients) | frame["series_id"].isin(erased.series)
    if drop.any():
        log.warning("left out %d series of erased data (lungcls erase --report)", int(drop.sum()))
    return frame[~drop]
