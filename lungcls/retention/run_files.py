"""What runs leave that no record names: Ray Train checkpoints and cached Prefect results.

- `ray-train/<run>/checkpoint_*`: Ray Train keeps the best two and the latest of a run; once
  the run's model is published they are only history (the model version holds the weights).
- `prefect-results/<key>`: Prefect's cached task results. lungcls sets no expiration on them
  (`flows.common`), so gc is where they expire, after `storage.gc_cache_days`: every stage
  decides from storage what is left to do, and a removed result costs a recomputation.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from datetime import datetime, timedelta

from lungcls.io.storage import ObjectInfo, Storage
from lungcls.retention.sweep import Sweep, at_or_before, by_folder, latest_write, parse_time
from lungcls.train.runs import TRAIN_RUNS, TrainRun

# Folders whose writers' modules load torch or Prefect (checked equal in tests/retention).
RESULTS_DIR = "prefect-results"  # flows.common.RESULTS_DIR
RAY_TRAIN_DIR = "ray-train"  # lungcls.train.trainer: Ray Train's storage_path
RAY_TUNE_DIR = "ray-tune"  # lungcls.train.tune: Ray Tune's storage_path
_FOLD_RUN = re.compile(r"^(?P<run>.+)-fold-(?P<fold>\d+)$")
_TUNE_TRIAL = re.compile(r"^(?P<search>tune-\d{8}T\d{6}Z-[0-9a-f]{6})-.+$")


def expired_cache(
    sweep: Sweep, storage: Storage, files: list[ObjectInfo], now: datetime, max_age: timedelta
) -> None:
    """Cached Prefect results older than `storage.gc_cache_days`, or past the expiration
    Prefect wrote into them. Every stage decides from storage what is left to do, so a
    removed result costs at most a recomputation."""
    for info in files:
        aged = at_or_before(info.modified, now - max_age)
        if aged or (
            at_or_before(info.modified, sweep.cutoff) and _expired(storage, info.path, now)
        ):
            sweep.offer(info, "expired_cache")


def old_checkpoints(
    sweep: Sweep, storage: Storage, runs: list[ObjectInfo], searches: set[str], keep: int
) -> None:
    """`ray-train/<run>/checkpoint_*`: beyond the newest `keep` of each run whose model is
    published (or whose search or fold is done, or that nobody can resume), once the whole
    run folder is older than the grace period. A training run that can still be resumed
    (`runs/<run>/train.json` says running) keeps all: `lungcls run` resumes it from them."""
    status = {
        r.run_id: r.status
        for r in (TrainRun.load(storage, i.path) for i in runs if _is_run_record(i.path))
    }
    paths = {i.path for i in runs}
    active = {  # searches whose Ray Tune state was written within the grace period
        folder.rsplit("/", 1)[-1]
        for folder, group in by_folder(storage.list_files(RAY_TUNE_DIR), 2).items()
        if not at_or_before(latest_write(group), sweep.cutoff)
    }
    for folder, files in by_folder(storage.list_files(RAY_TRAIN_DIR), 2).items():
        in_use = _resumable(folder.rsplit("/", 1)[-1], status, paths, searches, active)
        checkpoints: dict[str, list[ObjectInfo]] = defaultdict(list)
        for info in files:
            parts = info.path.split("/")
            if len(parts) > 3 and parts[2].startswith("checkpoint_"):
                checkpoints[parts[2]].append(info)
        newest = latest_write(files)
        old = sorted(checkpoints)[: max(0, len(checkpoints) - keep)]
        for info in (i for checkpoint in old for i in checkpoints[checkpoint]):
            sweep.offer(info, "old_checkpoint", since=newest, in_use=in_use)


def _resumable(
    name: str, status: dict[str, str], paths: set[str], searches: set[str], active: set[str]
) -> bool:
    """Whether the Ray Train run `ray-train/<name>` may still be restored from its
    checkpoints: a training run not finished, a fold of one that has no record yet, a trial
    of a search that is still running (its Ray Tune state changes) and published nothing."""
    if name in status:
        return status[name] == "running"
    fold = _FOLD_RUN.match(name)
    if fold and fold["run"] in status:
        done = f"{TRAIN_RUNS}/{fold['run']}/folds/{fold['fold']}.json" in paths
        return status[fold["run"]] == "running" and not done
    trial = _TUNE_TRIAL.match(name)
    if trial:
        return trial["search"] not in searches and trial["search"] in active
    return False  # unknown to every record: only its age protects it


def _is_run_record(path: str) -> bool:
    parts = path.split("/")
    return len(parts) == 3 and parts[2] == "train.json"


def _expired(storage: Storage, rel: str, now: datetime) -> bool:
    """Whether a Prefect result record says it expired (`metadata.expiration`)."""
    try:
        expiration = json.loads(storage.read_bytes(rel))["metadata"]["expiration"]
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        return False
    moment = parse_time(expiration) if isinstance(expiration, str) else None
    return moment is not None and moment <= now
