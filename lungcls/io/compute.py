"""Where parallel work runs: Ray tasks (a local Ray, or a cluster by `RAY_ADDRESS`) or in-process.

Heavy stages call `map_unordered(fn, jobs)`; it yields results as they finish so the caller
can commit each one (the ledger) and show progress. The same call uses two cores here and
a whole cluster there.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

from lungcls.config import Settings

R = TypeVar("R")
log = logging.getLogger(__name__)

# Ray gives a starting node's raylet a fixed 30 s to register; on a loaded machine it can
# miss that window and the start fails with this text. Starting again works (a training's
# rerun in `make stress` lost a round to it), so a local start is tried up to 3 times; the
# local stack's `ray start` nodes do the same (infra/local/ray_nodes.py).
RAYLET_TIMEOUT = "timed out during startup"
RAY_START_ATTEMPTS = 3


def ray_address(settings: Settings) -> str | None:
    return settings.ray.address or os.environ.get("RAY_ADDRESS") or None


def ensure_ray(settings: Settings) -> None:
    """Connect to the configured cluster, or start a local Ray with state under `work_dir`."""
    import ray

    if ray.is_initialized():
        return
    address = ray_address(settings)
    # Workers' output (Ray Data plans, Ray Train reports) stays in Ray's logs; stages report
    # progress through storage instead, which works the same on a cluster.
    if address:
        ray.init(address=address, log_to_driver=False)
        return
    _use_project_auth_token(settings)
    _trim_ray_train_for_one_machine()
    for attempt in range(1, RAY_START_ATTEMPTS + 1):
        try:
            ray.init(
                num_cpus=settings.ray.num_cpus or os.cpu_count(),
                include_dashboard=settings.ray.dashboard,
                log_to_driver=False,
                _temp_dir=str(ray_temp_dir(settings)),
                configure_logging=False,
            )
            return
        except Exception as error:
            if attempt == RAY_START_ATTEMPTS or RAYLET_TIMEOUT not in str(error):
                raise
            log.warning(
                "the local Ray did not start within Ray's 30 s (a loaded machine); "
                "starting it again (attempt %d of %d)",
                attempt + 1,
                RAY_START_ATTEMPTS,
            )
            ray.shutdown()


def _trim_ray_train_for_one_machine() -> None:
    """Ray Train defaults made for clusters, eased for a Ray started on this machine.

    No node of a one-machine Ray is preempted, so its watcher actor (one more process per
    training run) has nothing to watch; polling the workers every 0.5 s instead of 2 s lets a
    run start and finish about 3 s sooner (a run of a small dataset takes about 20 s). The
    variables reach Ray Train's controller through its own propagation; a value set by the
    user wins.
    """
    os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")


def _use_project_auth_token(settings: Settings) -> None:
    """Ray 2.60 turns token auth on and writes its token to ~/.ray; keep it in `work_dir`.

    Child processes (Ray workers, `ray` CLI calls) inherit the variables, so they agree.
    """
    if os.environ.get("RAY_AUTH_MODE", "token") != "token" or "RAY_AUTH_TOKEN" in os.environ:
        return
    path = Path(settings.work_dir).resolve() / "ray-auth-token"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(secrets.token_hex(32))
    os.environ.setdefault("RAY_AUTH_TOKEN_PATH", str(path))


def ray_temp_dir(settings: Settings) -> Path:
    """Ray's state folder, under `work_dir`, reached through a short path (see `short_path`)."""
    return short_path(Path(settings.work_dir).resolve() / "ray")


def short_path(real: Path) -> Path:
    """`real` (created if missing), or a short symbolic link to it when its path is long.

    Ray puts Unix sockets in its state folder, and socket paths may not exceed 107 bytes;
    deep project or test folders would. A short link in the system temp folder points at the
    real folder, which stays inside the project.
    """
    real.mkdir(parents=True, exist_ok=True)
    if len(str(real)) <= 40:
        return real
    digest = hashlib.sha256(str(real).encode()).hexdigest()[:10]
    link = Path(tempfile.gettempdir()) / f"lungcls-ray-{digest}"
    if not link.is_symlink():
        link.symlink_to(real, target_is_directory=True)
    return link


def map_unordered(
    fn: Callable[..., R],
    jobs: Sequence[tuple[Any, ...]],
    settings: Settings,
    num_cpus: float = 1,
) -> Iterator[R]:
    """Run `fn(*job)` for every job; yield results in completion order."""
    if settings.ray.executor == "local" or len(jobs) == 0:
        for job in jobs:
            yield fn(*job)
        return
    import ray

    ensure_ray(settings)
    remote = ray.remote(num_cpus=num_cpus, max_retries=2)(fn)
    # Bounded in flight: results are committed as they come, and memory stays flat.
    limit = max(2, int(ray.cluster_resources().get("CPU", 2) / num_cpus) * 2)
    pending: list[Any] = []
    queue = list(jobs)
    while queue or pending:
        while queue and len(pending) < limit:
            pending.append(remote.remote(*queue.pop(0)))
        done, pending = ray.wait(pending, num_returns=1)
        yield ray.get(done[0])
