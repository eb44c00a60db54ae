"""Start long-running services in their own sessions, and stop exactly those, by PID.

Each service is started as the leader of a new session, so every process it forks (Ray's
GCS, raylet, workers; Prefect's web server) carries the leader's PID as its session id.
Stopping reads /proc for the members of that session and signals them by PID: nothing
else on the machine is touched (unlike `ray stop`, which kills every Ray process of the
user). Linux only, like the rest of the local stack.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class Service:
    """A started service: the session leader's PID, its start time (against PID reuse), its log."""

    name: str
    pid: int
    start_ticks: int
    log: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def free_ports(count: int) -> list[int]:
    """Distinct free TCP ports on 127.0.0.1 (held open together so none repeats)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def spawn(
    name: str,
    argv: Sequence[str],
    env: Mapping[str, str],
    log: Path,
    die_with_parent: bool = False,
    cwd: Path | None = None,
) -> Service:
    """Start `argv` as a new session in `cwd` (default: this process's), output to `log`.

    `die_with_parent` asks the kernel to SIGKILL the service if this process dies first
    (tests: a killed pytest leaves no cluster behind; Ray's own processes die with their
    `ray start`); a stack started from the command line outlives the command.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    preexec = _die_with_parent if die_with_parent else None
    with open(log, "wb") as out:  # a fresh log: readiness is read from it
        process = subprocess.Popen(
            list(argv),
            env=dict(env),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=preexec,  # only a prctl call: safe between fork and exec
        )
    return Service(name, process.pid, _start_ticks(process.pid) or 0, str(log))


def _die_with_parent() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def wait_for(check: Callable[[], bool], service: Service, what: str, timeout_s: float) -> None:
    """Poll `check` until it is true; fail early if the service died, with its log's tail."""
    deadline = time.monotonic() + timeout_s
    while not check():
        if not is_running(service):
            raise RuntimeError(f"{service.name} exited before {what}:\n{log_tail(service)}")
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"{service.name}: no {what} after {timeout_s:.0f} s:\n{log_tail(service)}"
            )
        time.sleep(0.2)


def http_ok(url: str, headers: Mapping[str, str] | None = None) -> bool:
    try:
        request = urllib.request.Request(url, headers=dict(headers or {}))
        with urllib.request.urlopen(request, timeout=2) as response:
            return 200 <= response.status < 300
    except OSError:
        return False


def log_contains(service: Service, text: str) -> bool:
    try:
        return text in Path(service.log).read_text(errors="replace")
    except FileNotFoundError:
        return False


def log_tail(service: Service, lines: int = 30) -> str:
    try:
        return "\n".join(Path(service.log).read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


def is_running(service: Service) -> bool:
    """The leader still runs and is the process we started (not a reused PID)."""
    return _start_ticks(service.pid) == service.start_ticks


def session_members(service: Service) -> list[int]:
    """PIDs of the live processes in the service's session (the leader and its descendants)."""
    members = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        # Session ids are the leader's PID; a leader that is gone cannot have been replaced
        # by a new session of the same id while members remain.
        if fields and int(fields[3]) == service.pid and fields[0] != "Z":
            members.append(int(entry.name))
    return members


def stop(service: Service, grace_s: float = 20.0) -> list[int]:
    """SIGTERM the leader (Ray and Prefect shut their children down on it), wait, then
    SIGKILL whatever is left of the session. Returns the PIDs that had to be killed."""
    members = session_members(service) if _leader_matches(service) else []
    if not members:
        return []
    if is_running(service):
        _signal(service.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(_alive(pid) for pid in members):
        time.sleep(0.2)
    # Members forked after the first look (Ray workers) belong to the session too.
    left = sorted({pid for pid in members if _alive(pid)} | set(session_members(service)))
    for pid in left:
        _signal(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_alive(pid) for pid in left):
        time.sleep(0.1)
    return left


def _leader_matches(service: Service) -> bool:
    # The leader may be gone while its session lives on; only a live PID of another
    # process (reused) means the session is not ours any more.
    ticks = _start_ticks(service.pid)
    return ticks is None or ticks == service.start_ticks


def _signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):  # gone already: nothing to stop
        os.kill(pid, sig)


def _alive(pid: int) -> bool:
    fields = _stat_fields(pid)
    return bool(fields) and fields[0] != "Z"


def _start_ticks(pid: int) -> int | None:
    fields = _stat_fields(pid)
    return int(fields[19]) if fields and fields[0] != "Z" else None


def _stat_fields(pid: int) -> list[str]:
    """/proc/PID/stat after the command name: state, ppid, pgrp, session, ... starttime."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return []
    return stat[stat.rindex(")") + 2 :].split()
