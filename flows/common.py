"""What every stage task shares: retries for transient failures only, content-keyed caching,
and results persisted under the storage root (so a fresh run, on any worker, finds them)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prefect import Task, task
from prefect.cache_policies import NO_CACHE, TASK_SOURCE, CachePolicy
from prefect.filesystems import RemoteFileSystem, WritableFileSystem

from lungcls.config import Settings
from lungcls.errors import is_transient
from lungcls.io.storage import Storage

RESULTS_DIR = "prefect-results"
RETRIES = 3
RETRY_DELAYS_S = [10, 30, 90]  # backoff: a storage outage gets about two minutes to pass


def result_storage(settings: Settings) -> Path | WritableFileSystem:
    """Prefect's result storage inside the lungcls root (`<root>/prefect-results/`).

    Prefect wants remote storage as a block saved on its server: one per root, holding the
    URL and endpoint only (credentials stay in the workers' AWS environment).
    """
    storage = Storage.from_settings(settings)
    if storage.is_local:
        return Path(storage.path(RESULTS_DIR))
    url = storage.url(RESULTS_DIR)
    block = RemoteFileSystem(basepath=url, settings=storage.fsspec_options)
    block.save(f"lungcls-results-{content_key(url, storage.fsspec_options)[:12]}", overwrite=True)
    return block


def retry_transient(_task: Task, _run: Any, state: Any) -> bool:
    """Retry storage and network failures; bad data fails at once (it would fail again)."""
    return isinstance(state.data, BaseException) and is_transient(state.data)


def content_key(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def content_cache(key_fn: Callable[..., str]) -> CachePolicy:
    """Cache on what the task's output is a function of (plus the task's source), never on
    the run id: Prefect's default policy includes it, so a new run would always miss."""
    return TASK_SOURCE + CachePolicy.from_cache_key_fn(lambda _ctx, params: key_fn(**params))


def stage_task(name: str, key_fn: Callable[..., str] | None = None) -> Callable[[Callable], Task]:
    """A stage task: transient-only retries with backoff, JSON results, optional caching."""
    options: dict[str, Any] = {
        "name": name,
        "retries": RETRIES,
        "retry_delay_seconds": RETRY_DELAYS_S,
        "retry_jitter_factor": 0.2,
        "retry_condition_fn": retry_transient,
        "persist_result": True,
        "result_serializer": "json",
    }
    options["cache_policy"] = NO_CACHE if key_fn is None else content_cache(key_fn)
    return task(**options)


def run_stage(
    stage: Task, settings: Settings, *args: Any, refresh: bool = False
) -> tuple[dict[str, Any], bool]:
    """Run a stage task with its results under this run's storage root; returns its result
    and whether it came from the cache (work done by an earlier run)."""
    bound = stage.with_options(result_storage=result_storage(settings), refresh_cache=refresh)
    state = bound(settings, *args, return_state=True)
    return state.result(), state.name == "Cached"
