"""What `lungcls gc` may delete, area by area: the files no committed record names.

Each finder reads the commit records of its area (manifests, model and evaluation records,
the ledger, lease files, training-run records) and offers every file it could delete to a
`Sweep`, which holds back what a committed record names, what is younger than the grace
period, and what a stage running now may still read or commit (its lease is live). Listings
only say which files exist; whether a version is committed is asked of its marker.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from datetime import datetime, timedelta

from lungcls.config import StorageSettings
from lungcls.dataset.manifest import MANIFEST, Manifest
from lungcls.ingest.ledger import CHECKPOINT_DIR, Ledger, compacted_segments
from lungcls.ingest.series_store import SERIES_DIR
from lungcls.ingest.staging import STAGING_DIR
from lungcls.io.leases import LEASES_DIR, LeaseState, current_lease, stale_lease_files
from lungcls.io.storage import ObjectInfo, Storage
from lungcls.io.store_probe import PROBES_DIR
from lungcls.io.versions import CLAIM
from lungcls.registry.records import ModelRecord
from lungcls.retention.run_files import RESULTS_DIR, expired_cache, old_checkpoints
from lungcls.retention.sweep import Sweep, by_folder, latest_write, parse_time
from lungcls.train.runs import TRAIN_RUNS

# Markers whose writers' modules load torch or scikit-learn (checked equal in tests).
MODEL_RECORD = "model.json"  # lungcls.registry.store.RECORD
EVALUATION_RECORD = "report.json"  # lungcls.evaluate.report.REPORT
_TEMP = re.compile(r"^\..+\.[0-9a-f]{32}$")  # Storage._local_temp: `.<name>.<uuid4 hex>`
_VERSION = re.compile(r"^v\d+$")
_CHECKPOINT_FILE = re.compile(r"^\d{12}\.parquet$")
# Stages whose runs write files gc must not take from under them.
_STAGES = ("ingest", "dataset-build", "train-publish")


def find_leftovers(storage: Storage, settings: StorageSettings, now: datetime) -> Sweep:
    """Every file of the root that gc may delete now, and what it holds back."""
    sweep = Sweep(cutoff=now - timedelta(hours=settings.gc_grace_hours))
    leases = {stage: _live(current_lease(storage, stage), now) for stage in _STAGES}
    tops = (SERIES_DIR, "datasets", "models", "ledger", LEASES_DIR, TRAIN_RUNS, RESULTS_DIR)
    listed = {top: storage.list_files(top) for top in tops}
    # Everything committed records name is known before anything is offered.
    datasets = _version_folders(listed["datasets"], 3)
    manifests = [
        Manifest.load(storage, f"{folder}/{MANIFEST}")
        for folder, files in datasets.items()
        if _committed(storage, folder, MANIFEST, files)
    ]
    sweep.protected |= {shard.path for m in manifests for shard in m.shards}
    ledger = Ledger.load(storage)
    sweep.protected |= set(ledger.series_files())

    committed_datasets = _versions(sweep, storage, datasets, MANIFEST, leases["dataset-build"])
    for folder in committed_datasets:
        for info in datasets[folder]:
            if info.path.startswith(f"{folder}/shards/"):
                sweep.offer(info, "unreferenced_shard")
    models = _version_folders(listed["models"], 3)
    committed_models = _versions(sweep, storage, models, MODEL_RECORD, leases["train-publish"])
    evaluated = [i for f in committed_models for i in models[f] if "/evaluations/" in i.path]
    evaluations = _version_folders(evaluated, 6)
    _versions(sweep, storage, evaluations, EVALUATION_RECORD, None)
    records = [ModelRecord.load(storage, f"{f}/{MODEL_RECORD}") for f in committed_models]

    _series(sweep, ledger, listed[SERIES_DIR], leases)
    _ledger(sweep, storage, listed["ledger"])
    infos = {i.path: i for i in listed[LEASES_DIR]}
    for rel in stale_lease_files(storage):
        if rel in infos:
            sweep.offer(infos[rel], "stale_lease")
    _staging(sweep, storage.list_files(STAGING_DIR), leases["ingest"])
    for info in storage.list_files(PROBES_DIR):
        sweep.offer(info, "stale_probe")
    expired_cache(sweep, storage, listed[RESULTS_DIR], now, timedelta(days=settings.gc_cache_days))
    searches = {r.tune.search for r in records if r.tune is not None}
    old_checkpoints(sweep, storage, listed[TRAIN_RUNS], searches, settings.gc_keep_checkpoints)
    for info in (i for files in listed.values() for i in files):
        if _TEMP.match(info.path.rsplit("/", 1)[-1]):
            sweep.offer(info, "temp_file")
    return sweep


def _versions(
    sweep: Sweep,
    storage: Storage,
    folders: dict[str, list[ObjectInfo]],
    marker: str,
    lease: LeaseState | None,
) -> list[str]:
    """Offer the files of each uncommitted version folder but its claim (which keeps the
    number taken: `claim_version` counts folders); returns the committed folders.

    A folder is held back whole while any file in it is young, or while the run that
    claimed it holds the lease under which that stage commits (`lease`)."""
    committed = []
    for folder, files in folders.items():
        if _committed(storage, folder, marker, files):
            committed.append(folder)
            continue
        claim = f"{folder}/{CLAIM}"
        run_id = _claimed_by(storage, claim) if any(i.path == claim for i in files) else None
        in_use = lease is not None and run_id is not None and lease.claim.holder.run_id == run_id
        newest = latest_write(files)
        for info in files:
            if info.path != claim:
                guard = f"{folder}/{marker}"
                sweep.offer(info, "uncommitted_version", since=newest, in_use=in_use, guard=guard)
    return committed


def _series(
    sweep: Sweep, ledger: Ledger, files: list[ObjectInfo], leases: dict[str, LeaseState | None]
) -> None:
    """Series files the current ledger rows do not name. A superseded one is held back
    while a dataset build runs (it may have read the ledger before the row that superseded
    it); an orphan one while an ingest that started before it was written runs."""
    named = {e.series_file for e in ledger.entries if e.series_file}
    superseded_at = _superseded_times(ledger)
    build, ingest = leases["dataset-build"], leases["ingest"]
    for info in files:
        if "/" in info.path.removeprefix(f"{SERIES_DIR}/") or not info.path.endswith(".parquet"):
            continue
        if info.path in named:
            since = superseded_at.get(info.path)
            sweep.offer(info, "superseded_series", since=since, in_use=build is not None)
        else:
            sweep.offer(info, "orphan_series", in_use=_written_under(info, ingest))


def _superseded_times(ledger: Ledger) -> dict[str, datetime]:
    """Series file -> when the last ledger row naming it was superseded (by the time the
    superseding row was recorded; rows without a time leave the file's own)."""
    latest: dict[str, str] = {}  # archive -> the series file of its latest row so far
    times: dict[str, datetime] = {}
    for entry in ledger.entries:
        previous = latest.get(entry.archive)
        moment = parse_time(entry.ingested_at)
        if previous and moment is not None:
            times[previous] = max(times.get(previous, moment), moment)
        latest[entry.archive] = entry.series_file
    return times


def _ledger(sweep: Sweep, storage: Storage, files: list[ObjectInfo]) -> None:
    """Log segments and older checkpoints that the newest checkpoint holds, once that
    checkpoint is older than the grace period (a reader that started before it has long
    caught up; `Ledger` rereads from a checkpoint when segments are gone)."""
    infos = {i.path: i for i in files}
    checkpoints = sorted(
        i.path
        for i in files
        if i.path.startswith(f"{CHECKPOINT_DIR}/")
        and _CHECKPOINT_FILE.match(i.path.rsplit("/", 1)[-1])
    )
    if not checkpoints:
        return
    since = infos[checkpoints[-1]].modified
    for rel in [*compacted_segments(storage), *checkpoints[:-1]]:
        if rel in infos:
            sweep.offer(infos[rel], "compacted_ledger_segment", since=since)


def _staging(sweep: Sweep, files: list[ObjectInfo], ingest: LeaseState | None) -> None:
    """`staging/<run>/`: an ingest removes its own when it ends; a folder left behind is
    a killed run's, unless that run holds the ingest lease now."""
    for folder, group in by_folder(files, 2).items():
        run_id = folder.rsplit("/", 1)[-1]
        in_use = ingest is not None and ingest.claim.holder.run_id == run_id
        newest = latest_write(group)
        for info in group:
            sweep.offer(info, "stale_staging", since=newest, in_use=in_use)


# -- helpers -----------------------------------------------------------------------------
def _version_folders(files: Iterable[ObjectInfo], depth: int) -> dict[str, list[ObjectInfo]]:
    """Files grouped by their version folder: the first `depth` parts of the path, the
    last of them `v<N>` (files of the folder itself, not beside it)."""
    return {
        folder: group
        for folder, group in by_folder(files, depth).items()
        if _VERSION.match(folder.rsplit("/", 1)[-1])
    }


def _committed(storage: Storage, folder: str, marker: str, files: list[ObjectInfo]) -> bool:
    """Whether the version is committed: its marker listed, or there when asked."""
    path = f"{folder}/{marker}"
    return any(i.path == path for i in files) or storage.exists(path)


def _claimed_by(storage: Storage, claim: str) -> str | None:
    try:
        return str(json.loads(storage.read_bytes(claim))["run_id"])
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        return None


def _live(state: LeaseState | None, now: datetime) -> LeaseState | None:
    # A holder this machine sees dead (`kill -9`) protects nothing, expired or not.
    held = state is not None and state.is_held(now) and not state.claim.holder.is_gone()
    return state if held else None


def _written_under(info: ObjectInfo, lease: LeaseState | None) -> bool:
    """Whether `info` may be a file of the run holding `lease` (written after it took it,
    within the clock skew the leases allow)."""
    if lease is None:
        return False
    skew = timedelta(seconds=lease.claim.ttl_s / 4)
    return info.modified is None or info.modified >= lease.claim.acquired_at - skew
