"""A local lungcls stack without Docker: Prefect server, S3 (moto), a Ray head and a worker node.

Everything listens on loopback at free ports, and all state stays in one folder of the
project (`.lungcls-work/stack` unless `--dir`); Ray's sockets go through a short link in
the system temp folder (their paths are capped at 107 bytes).

    make stack                                       # = .venv/bin/python -m infra.local.stack up
    source .lungcls-work/stack/env.sh                # point lungcls (and Prefect, Ray) at it
    make demo                                        # runs against the stack
    .venv/bin/python -m infra.local.stack status     # what runs, where
    make stack-down                                  # = ... stack down: stop it all, by PID

S3 objects live in moto's memory and are gone after `down`; the Prefect database stays in
the stack folder. The AWS keys in env.sh are moto's dummies; the pseudonym key and the Ray
token are generated into files readable by this user only, and env.sh reads them from there.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
from pathlib import Path
from typing import Any

from infra.local import processes, ray_nodes
from infra.local.processes import Service

DEFAULT_DIR = Path(".lungcls-work/stack")
BUCKET = "lungcls"
STATE_FILE = "stack.json"
ENV_FILE = "env.sh"
# moto accepts any keys; these are its documented dummies, not credentials.
MOTO_KEYS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}


def up(
    folder: Path, cpus_per_node: int, worker_nodes: int, die_with_parent: bool = False
) -> dict[str, Any]:
    """Start every service (unless the stack already runs) and write stack.json and env.sh.

    `die_with_parent`: the services die with the calling process (for tests).
    """
    folder = folder.resolve()
    if (folder / STATE_FILE).exists():
        state = _load(folder)
        if any(processes.is_running(Service(**s)) for s in state["services"]):
            raise SystemExit(f"a stack already runs from {folder}: `stack down` first")
    folder.mkdir(parents=True, exist_ok=True)
    started: list[Service] = []
    try:
        return _start_all(folder, cpus_per_node, worker_nodes, die_with_parent, started)
    except BaseException:
        for service in reversed(started):
            processes.stop(service)
        raise


def _start_all(
    folder: Path,
    cpus_per_node: int,
    worker_nodes: int,
    die_with_parent: bool,
    started: list[Service],
) -> dict[str, Any]:
    # A shell that sourced an earlier stack's env.sh must not hand its addresses on.
    stale = ("LUNGCLS_", "PREFECT_API_", "RAY_", "AWS_")
    base = {k: v for k, v in os.environ.items() if not k.startswith(stale)}
    base.update(MOTO_KEYS, AWS_DEFAULT_REGION="us-east-1")
    s3_port, prefect_port = processes.free_ports(2)

    s3_url = f"http://127.0.0.1:{s3_port}"
    moto = processes.spawn(
        "s3",
        [ray_nodes.venv_tool("moto_server"), "-H", "127.0.0.1", "-p", str(s3_port)],
        base,
        folder / "s3.log",
        die_with_parent,
    )
    _record(folder, started, moto)

    prefect_url = f"http://127.0.0.1:{prefect_port}/api"
    prefect_env = {
        **base,
        "PREFECT_HOME": str(folder / "prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    argv = [ray_nodes.venv_tool("prefect"), "server", "start", "--host", "127.0.0.1"]
    argv += ["--port", str(prefect_port)]
    prefect = processes.spawn("prefect", argv, prefect_env, folder / "prefect.log", die_with_parent)
    _record(folder, started, prefect)

    # Ray's nodes start while moto and Prefect come up: the slowest parts overlap.
    token = ray_nodes.write_token(folder / "ray-auth-token")
    ray_env = ray_nodes.ray_env(base, token)
    head = ray_nodes.start_head(folder / "ray-head", ray_env, cpus_per_node, die_with_parent)
    _record(folder, started, head.service)
    for index in range(1, worker_nodes + 1):
        name = f"ray-node-{index}"
        node = ray_nodes.start_worker(
            folder / name, ray_env, head.address, cpus_per_node, name, die_with_parent
        )
        _record(folder, started, node.service)

    processes.wait_for(lambda: processes.http_ok(f"{s3_url}/moto-api/"), moto, "S3", 60)
    _create_bucket(s3_url)
    health = f"{prefect_url}/health"
    processes.wait_for(lambda: processes.http_ok(health), prefect, "Prefect API", 180)

    key = folder / "pseudonym.key"
    if not key.exists():
        key.touch(mode=0o600)
        key.write_text(secrets.token_hex(32))
    exports = {
        "PREFECT_API_URL": prefect_url,
        "RAY_ADDRESS": head.address,
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(token),
        "LUNGCLS_ROOT": f"s3://{BUCKET}/lungcls",
        "LUNGCLS_S3_ENDPOINT_URL": s3_url,
        **MOTO_KEYS,
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    state = {
        "folder": str(folder),
        "services": [s.to_json() for s in started],
        "exports": exports,
        "pseudonym_key_file": str(key),
        "dashboard": head.dashboard_url,
    }
    (folder / STATE_FILE).write_text(json.dumps(state, indent=2))
    (folder / ENV_FILE).write_text(env_script(state))
    return state


def _record(folder: Path, started: list[Service], service: Service) -> None:
    """Note a started service in stack.json at once: `stack down` can stop it even if
    `up` is killed before it finishes."""
    started.append(service)
    state = {"folder": str(folder), "services": [s.to_json() for s in started]}
    (folder / STATE_FILE).write_text(json.dumps(state, indent=2))


def _create_bucket(endpoint: str) -> None:
    import boto3

    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=MOTO_KEYS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=MOTO_KEYS["AWS_SECRET_ACCESS_KEY"],
    )
    client.create_bucket(Bucket=BUCKET)


def env_script(state: dict[str, Any]) -> str:
    """The `export` lines that point lungcls at the stack (secrets read from their files)."""
    lines = [f"# lungcls local stack in {state['folder']}: source this file"]
    lines += [f"export {name}={value}" for name, value in state["exports"].items()]
    lines.append(f'export LUNGCLS_PSEUDONYM_KEY="$(cat {state["pseudonym_key_file"]})"')
    return "\n".join(lines) + "\n"


def down(folder: Path) -> dict[str, list[int]]:
    """Stop every service of the stack, Ray nodes first, by the PIDs in stack.json."""
    state = _load(folder.resolve())
    killed = {}
    for entry in reversed(state["services"]):
        service = Service(**entry)
        killed[service.name] = processes.stop(service)
        left = processes.session_members(service)
        if left:
            raise SystemExit(f"{service.name}: processes {left} did not stop")
    for name in (STATE_FILE, ENV_FILE):
        (folder.resolve() / name).unlink(missing_ok=True)
    return killed


def status(folder: Path) -> list[dict[str, Any]]:
    state = _load(folder.resolve())
    return [
        {
            "name": entry["name"],
            "pid": entry["pid"],
            "running": processes.is_running(Service(**entry)),
            "processes": len(processes.session_members(Service(**entry))),
            "log": entry["log"],
        }
        for entry in state["services"]
    ]


def _load(folder: Path) -> dict[str, Any]:
    path = folder / STATE_FILE
    if not path.exists():
        raise SystemExit(f"no stack in {folder} (no {STATE_FILE}): `stack up` starts one")
    return json.loads(path.read_text())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.local.stack", description=__doc__)
    parser.add_argument("command", choices=["up", "down", "status", "env"])
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR, help="state folder")
    parser.add_argument("--cpus", type=int, default=1, help="CPUs each Ray node offers")
    parser.add_argument("--worker-nodes", type=int, default=1, help="Ray nodes besides the head")
    args = parser.parse_args(argv)
    if args.command == "up":
        state = up(args.dir, args.cpus, args.worker_nodes)
        print(f"stack up in {state['folder']}; Ray dashboard {state['dashboard']}")
        print(f"point lungcls at it:  source {Path(state['folder']) / ENV_FILE}\n")
        print(env_script(state), end="")
    elif args.command == "env":
        state = _load(args.dir.resolve())
        if "exports" not in state:
            raise SystemExit("the stack did not finish starting: `stack down`, then `stack up`")
        print(env_script(state), end="")
    elif args.command == "status":
        for row in status(args.dir):
            state = "running" if row["running"] else "STOPPED"
            print(
                f"{row['name']:<12} pid {row['pid']:<8} {state:<8} {row['processes']:>3} "
                f"processes  log {row['log']}"
            )
    else:
        for name, killed in down(args.dir).items():
            forced = f" ({len(killed)} processes killed)" if killed else ""
            print(f"stopped {name}{forced}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
