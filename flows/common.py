"""What every stage task shares: retries for transient failures only, content-keyed caching,
results persisted under the storage root (so a fresh run, on any worker, finds them), and
publishing a result's views (rendered by the library, as the CLI prints them) as artifacts."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from prefect import Task, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE, TASK_SOURCE, CachePolicy
from prefect.filesystems import RemoteFileSystem, WritableFileSystem

from lungcls.config import Settings
from lungcls.errors import is_transient
from lungcls.io.artifacts import Artifact
from lungcls.io.storage import Storage
from lungcls.pipeline import content_key

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


def content_cache(key_fn: Callable[..., str]) -> CachePolicy:
    """Cache on what the task's output is a function of (plus the task's source), never on
    the run id: Prefect's default policy includes it, so a new run would always miss."""
    return TASK_SOURCE + CachePolicy.from_cache_key_fn(lambda _ctx, params: key_fn(**params))


def stage_task(name: str, key_fn: Callable[..., str] | None = None) -> Callable[[Callable], Task]:
    """A stage task: transient-only retries with backoff, JSON results, optional caching.

    Tasks return typed records; Prefect's JSON serializer stores a record with its class
    name, so a cached result comes back as the same record type."""
    return task(
        name=name,
        retries=RETRIES,
        retry_delay_seconds=RETRY_DELAYS_S,
        retry_jitter_factor=0.2,
        retry_condition_fn=retry_transient,
        persist_result=True,
        result_serializer="json",
        cache_policy=NO_CACHE if key_fn is None else content_cache(key_fn),
    )


Result = TypeVar("Result")


def run_stage(
    stage: Task[..., Result], settings: Settings, *args: Any, refresh: bool = False
) -> tuple[Result, bool]:
    """Run a stage task with its results under this run's storage root; returns its result
    and whether it came from the cache (work done by an earlier run)."""
    bound = stage.with_options(result_storage=result_storage(settings), refresh_cache=refresh)
    state = bound(settings, *args, return_state=True)
    return state.result(), state.name == "Cached"


def publish(artifacts: list[Artifact]) -> None:
    for a in artifacts:
        if a.table is not None:
            create_table_artifact(a.table, key=a.key, description=a.description)
        else:
            create_markdown_artifact(a.markdown or "", key=a.key, description=a.description)
