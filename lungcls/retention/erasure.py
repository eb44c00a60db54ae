"""Erasure: a patient's (or an archive's) data removed from a root on request.

    lungcls pseudonym PATIENT_ID           the key holder finds the patient's pseudonym
    lungcls erase --patient patient-3f2a…  [--by NAME] [--reason TEXT] [--json]
    lungcls erase --archive inbox/b1/x.zip
    lungcls erase --report

One erasure, in order:
1. It takes the `dataset-build`, `ingest` and `train-publish` leases (in the order builds
   take the first two), so that nothing reads or writes the stores it changes meanwhile.
2. It finds the data: every series file row of the patient (current or not), the ledger's
   archive versions that own those series, their SHA-256s (`ErasureTargets`).
3. It appends the request to the erasure log (`lungcls.retention.erasure_log`) BEFORE it
   removes anything: from then on ingest refuses the archives and the patient's series
   (code `erased`) and builds leave them out, even if this erasure dies halfway.
4. It removes (`scrub`): series files are written again without the erased series under
   new names, the ledger records them, the old files go; stale staging files; the inbox
   archives whose current bytes are erased and the erased rows of every labels.csv; the
   erased rows of every labels version; the quarantine records of the erased series and
   archives.
5. Downstream (`withdraw`): shards holding erased samples are deleted and the versions
   naming them withdrawn; score tables lose the erased rows (records get new SHA-256s);
   reports and caches that name them are deleted; the model versions trained on a withdrawn
   version are listed for retraining.
6. It releases the leases and builds the next version of each dataset that lost a version,
   with the normal `build_dataset`, then records the outcome (`erasure/outcome/<seq>.json`).

Run again after a crash, the same request finds what is left, finishes it, and records the
outcome of its unfinished log entry. What stays, by design: the ledger's immutable log
segments name the inbox paths of erased archives and the series pseudonyms they owned (no
pixel, no patient pseudonym); manifests of withdrawn versions, and `label_changes` of
later ones, name series pseudonyms. An archive of the patient that ingest refused whole (or
whose series were all quarantined) is not in the ledger's series and is not found: delete
it by hand, or with `erase --archive`.
"""

from __future__ import annotations

import getpass
import os
import re
from collections.abc import Callable
from contextlib import ExitStack
from datetime import UTC, datetime
from typing import Literal

from lungcls.config import Settings
from lungcls.errors import LungclsError
from lungcls.ingest.deid import pseudonym_key
from lungcls.ingest.ledger import Ledger
from lungcls.io.guard import stage_lease
from lungcls.io.runs import new_run_id
from lungcls.io.storage import Storage
from lungcls.retention.erasure_log import (
    Erased,
    ErasureEntry,
    ErasureOutcome,
    append_entry,
    erasure_log,
    save_outcome,
)
from lungcls.retention.scrub import (
    ErasureTargets,
    Tally,
    scrub_inbox,
    scrub_labels_tables,
    scrub_quarantine,
    scrub_series_store,
    scrub_staging,
    series_rows,
)
from lungcls.retention.withdraw import (
    affected_models,
    publish_without,
    scrub_scores,
    sweep_text,
    withdraw_datasets,
)

PATIENT_PSEUDONYM = re.compile(r"patient-[0-9a-f]{24}")
# The leases an erasure holds, in the order `dataset build` takes the first two.
LEASES = ("dataset-build", "ingest", "train-publish")

Kind = Literal["patient", "archive"]
Finder = Callable[[Storage, Ledger], ErasureTargets]  # where the erased data is


class ErasureError(LungclsError):
    """An erasure cannot be done as asked; `code` is stable."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code


def operator_name() -> str:
    """Who erases by default: the OS user name (an operator, never a patient)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (containers)
        return os.environ.get("USER", "unknown")


def erase_patient(
    settings: Settings, patient: str, by: str | None = None, reason: str = ""
) -> ErasureOutcome:
    """Erase every series of the patient with pseudonym `patient` and every inbox archive
    holding one; refuse them from now on (see the module docstring)."""
    if not PATIENT_PSEUDONYM.fullmatch(patient):
        raise ErasureError(
            "not_a_pseudonym",
            "a patient is erased by pseudonym (patient-<24 hex digits>), never by patient ID "
            "(the log would keep it): the key holder finds it with `lungcls pseudonym "
            "PATIENT_ID`",
        )

    def find(storage: Storage, ledger: Ledger) -> ErasureTargets:
        holders: dict[str, set[str]] = {}
        studies = set()
        for rel, row in series_rows(storage):
            if row["patient_id"] == patient:
                holders.setdefault(rel, set()).add(row["series_id"])
                studies.add(row["study_id"])
        series = {s for ids in holders.values() for s in ids}
        owning = [e for e in ledger.entries if series.intersection(e.series_ids)]
        erased = Erased(
            patients=frozenset({patient}),
            archives=frozenset(e.sha256 for e in owning if e.sha256),
            series=frozenset(series),
        )
        keys = {patient, *studies, *series}
        return ErasureTargets(erased, {e.archive for e in owning}, keys, holders)

    return _erase(settings, "patient", find, by, reason)


def erase_archive(
    settings: Settings, path: str, by: str | None = None, reason: str = ""
) -> ErasureOutcome:
    """Erase one inbox archive (`path` under the root, or its URL) and every series it
    brought in; its bytes are refused from now on. The patients' other data stay."""

    def find(storage: Storage, ledger: Ledger) -> ErasureTargets:
        key = storage.rel(path) if "://" in path or path.startswith("/") else path.strip("/")
        versions = [e for e in ledger.entries if e.archive.rstrip("/") == key]
        shas = {e.sha256 for e in versions if e.sha256}
        if not versions:
            if not storage.exists(key) or storage.fs.isdir(storage.path(key)):
                raise ErasureError(
                    "unknown_archive",
                    "no ingested archive and no file at that path under this root (give a "
                    "path under the root, such as inbox/<batch>/<archive>.zip)",
                )
            shas.add(storage.sha256(key))  # delivered, never ingested: refuse its bytes
        series = {s for e in versions for s in e.series_ids}
        holders: dict[str, set[str]] = {}
        for rel, row in series_rows(storage):
            if row["series_id"] in series:
                holders.setdefault(rel, set()).add(row["series_id"])
        erased = Erased(archives=frozenset(shas), series=frozenset(series))
        keys = {e.archive for e in versions} or {key}
        return ErasureTargets(erased, keys, set(series), holders)

    return _erase(settings, "archive", find, by, reason)


def _erase(
    settings: Settings, kind: Kind, find: Finder, by: str | None, reason: str
) -> ErasureOutcome:
    """Steps 1-6 of the module docstring, for the data `find` finds."""
    storage = Storage.from_settings(settings)
    key = pseudonym_key(settings, storage)
    run_id = new_run_id("erase")
    tally = Tally()
    with ExitStack() as leases:
        for stage in LEASES:
            leases.enter_context(stage_lease(storage, stage, run_id, settings.storage.lease_only))
        ledger = Ledger.load(storage)
        targets = find(storage, ledger)
        entry = _log_entry(storage, kind, targets, run_id, by or operator_name(), reason)
        if not targets.found_anything:
            tally.notes.append("no stored data was found; later deliveries are refused")
        scrub_series_store(storage, ledger, targets, run_id, tally)
        scrub_staging(storage, targets.erased, tally)
        scrub_inbox(storage, settings.ingest.inbox, key, ledger, targets, tally)
        scrub_labels_tables(storage, targets, tally)
        scrub_quarantine(storage, key, targets, tally)
        withdrawn = withdraw_datasets(storage, targets.erased, entry.seq, tally)
        scrub_scores(storage, targets.erased, tally)
        sweep_text(storage, targets.erased, tally)
        models = affected_models(storage, withdrawn)
    published = publish_without(settings, storage, withdrawn, tally)
    outcome = ErasureOutcome(
        seq=entry.seq,
        run_id=run_id,
        finished_at=datetime.now(UTC).isoformat(timespec="seconds"),
        series_removed=tally.series_removed,
        archives_removed=tally.archives_removed,
        files_removed=tally.files_removed,
        bytes_removed=tally.bytes_removed,
        files_rewritten=tally.files_rewritten,
        label_rows_removed=tally.label_rows_removed,
        quarantine_records_removed=tally.quarantine_records_removed,
        score_rows_removed=tally.score_rows_removed,
        datasets_withdrawn=withdrawn,
        datasets_published=published,
        models_affected=models,
        notes=tally.notes,
    )
    save_outcome(storage, outcome)
    return outcome


def _log_entry(
    storage: Storage, kind: Kind, targets: ErasureTargets, run_id: str, by: str, reason: str
) -> ErasureEntry:
    """The request in the log: an unfinished entry that already covers it (an erasure that
    died) is finished now, else a new entry is appended."""
    erased = targets.erased
    for line in erasure_log(storage).erasures:
        old = line.entry
        covers = (
            set(erased.patients) <= set(old.patients)
            and set(erased.archives) <= set(old.archives)
            and set(erased.series) <= set(old.series)
        )
        if line.outcome is None and old.kind == kind and covers:
            return old
    entry = ErasureEntry(
        seq=0,
        run_id=run_id,
        requested_at=datetime.now(UTC).isoformat(timespec="seconds"),
        by=by,
        reason=reason,
        kind=kind,
        patients=sorted(erased.patients),
        archives=sorted(erased.archives),
        series=sorted(erased.series),
    )
    return append_entry(storage, entry)
