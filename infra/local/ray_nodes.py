"""Ray nodes on this machine, on 127.0.0.1: a head and worker nodes that join it.

Each node is a `ray start --block` process in its own session (see `processes`), with its
own state folder (reached through a short link: Ray's socket paths are capped at 107
bytes) and its own free ports, so two nodes, or two engineers, never collide. Token
authentication (on by default since Ray 2.60) uses one token file for the head, every node
and every driver: set `RAY_AUTH_MODE=token` and `RAY_AUTH_TOKEN_PATH` to it.

Worker processes inherit the environment of `ray start`: S3 credentials and endpoint must
be in `env` here, as they would be in a pod's or VM's environment on a real cluster.
"""

from __future__ import annotations

import functools
import secrets
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from infra.local.processes import Service, free_ports, http_ok, log_contains, spawn, wait_for
from lungcls.io.compute import RAY_START_ATTEMPTS, RAYLET_TIMEOUT, short_path

# Ray swaps the literals 127.0.0.1 and localhost for the address of the default route (the
# interface other machines would reach); any other loopback address it keeps as given.
HEAD_IP = "127.0.0.2"
# Printed by `ray start` once every process of the node is up.
READY_LINE = "Ray runtime started"
# `ray start` gives a node's raylet a fixed 30 s to register with the head; on a loaded
# machine it can take longer, and the node exits with RAYLET_TIMEOUT's line. Starting it
# again works, as for a Ray started in process (`lungcls.io.compute.ensure_ray`).


@dataclass(frozen=True)
class RayNode:
    service: Service
    address: str  # the cluster's GCS address, host:port (what RAY_ADDRESS takes)
    dashboard_url: str | None  # head only: the dashboard and state API


def venv_tool(name: str) -> str:
    """A console script of the Python running this module (the project's .venv)."""
    return str(Path(sys.executable).parent / name)


def write_token(path: Path) -> Path:
    """A random auth token, readable by this user only; kept if it exists."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(secrets.token_hex(32))
    return path


def ray_env(base: Mapping[str, str], token_path: Path) -> dict[str, str]:
    """`base` with token auth on a given token and no inherited cluster address."""
    env = {k: v for k, v in base.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN")}
    env.update(
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN_PATH=str(token_path),
        RAY_USAGE_STATS_ENABLED="0",
        # On SIGTERM a node first drains for Ray Serve (30 s by default); lungcls serves
        # nothing from Ray, so nodes stop at once.
        RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="0",
    )
    return env


def start_head(
    folder: Path,
    env: Mapping[str, str],
    num_cpus: int,
    die_with_parent: bool = False,
    timeout_s: float = 90,
) -> RayNode:
    gcs, dashboard, client, agent_http, agent_grpc, metrics, runtime_env = free_ports(7)
    argv = [
        venv_tool("ray"),
        "start",
        "--head",
        "--block",
        f"--node-ip-address={HEAD_IP}",
        f"--port={gcs}",
        f"--num-cpus={num_cpus}",
        f"--dashboard-host={HEAD_IP}",
        f"--dashboard-port={dashboard}",
        f"--ray-client-server-port={client}",
        *_node_ports(folder, agent_http, agent_grpc, metrics, runtime_env),
    ]
    service = _start_node("ray-head", argv, env, folder, die_with_parent, "Ray head", timeout_s)
    # `ray start` returns before the dashboard (and with it the state API and job
    # submission) answers; on a loaded machine that took over a minute once. Up means both.
    dashboard_url = f"http://{HEAD_IP}:{dashboard}"
    auth = {"Authorization": f"Bearer {Path(env['RAY_AUTH_TOKEN_PATH']).read_text().strip()}"}
    wait_for(lambda: http_ok(f"{dashboard_url}/api/version", auth), service, "dashboard", timeout_s)
    return RayNode(service, f"{HEAD_IP}:{gcs}", dashboard_url)


def start_worker(
    folder: Path,
    env: Mapping[str, str],
    head_address: str,
    num_cpus: int,
    name: str = "ray-node-1",
    die_with_parent: bool = False,
    timeout_s: float = 90,
) -> RayNode:
    agent_http, agent_grpc, metrics, runtime_env = free_ports(4)
    # No --node-ip-address: a worker node takes the address it reaches the head from,
    # 127.0.0.1 here (an explicit 127.0.0.1 would be swapped as on the head). The switch
    # the head turns off must be on for a node to join.
    argv = [
        venv_tool("ray"),
        "start",
        "--block",
        f"--address={head_address}",
        f"--num-cpus={num_cpus}",
        *_node_ports(folder, agent_http, agent_grpc, metrics, runtime_env),
    ]
    service = _start_node(name, argv, env, folder, die_with_parent, f"{name} joined", timeout_s)
    return RayNode(service, head_address, None)


def _start_node(
    name: str,
    argv: list[str],
    env: Mapping[str, str],
    folder: Path,
    die_with_parent: bool,
    what: str,
    timeout_s: float,
) -> Service:
    """`ray start` until Ray says it started, again when its raylet missed the window."""
    for attempt in range(1, RAY_START_ATTEMPTS + 1):
        service = spawn(name, argv, env, folder / "ray-start.log", die_with_parent)
        try:
            wait_for(functools.partial(log_contains, service, READY_LINE), service, what, timeout_s)
            return service
        except RuntimeError:
            if attempt == RAY_START_ATTEMPTS or not log_contains(service, RAYLET_TIMEOUT):
                raise
    raise AssertionError("unreachable: the last attempt returns or raises")


def _node_ports(
    folder: Path, agent_http: int, agent_grpc: int, metrics: int, runtime_env: int
) -> list[str]:
    """Options every node needs to share a machine: its own state folder and agent ports
    (their defaults are fixed numbers), random worker ports."""
    return [
        f"--temp-dir={short_path(folder / 'ray')}",
        f"--dashboard-agent-listen-port={agent_http}",
        f"--dashboard-agent-grpc-port={agent_grpc}",
        f"--metrics-export-port={metrics}",
        f"--runtime-env-agent-port={runtime_env}",
        "--min-worker-port=0",
        "--max-worker-port=0",
        "--disable-usage-stats",
    ]
