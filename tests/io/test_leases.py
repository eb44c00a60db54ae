"""Leases on a local folder and on the moto S3 server: threads and real processes contend,
one holds at a time; a holder killed with SIGKILL or stalled with SIGSTOP loses its lease
after the ttl; renewals keep a long holder's lease; the refusal names the holder.

Mutual exclusion is checked from what the holders wrote, not from timing: each holder
appends `enter` and `exit` lines to one local file while it holds the lease, and the lines
must pair up (no holder enters before the previous one has left).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from lungcls.config import Settings
from lungcls.io.holders import LeaseHolder, process_space
from lungcls.io.leases import (
    LEASES_DIR,
    LeaseHeld,
    LeaseLost,
    current_lease,
    hold_lease,
    stale_lease_files,
)
from lungcls.io.storage import Storage
from tests.io.test_store_probe import s3_proxy

REPO = Path(__file__).resolve().parents[2]
# Short, so that expiry happens within a test; long enough for a renewal (three requests to
# the moto server) on a loaded machine.
TTL_S = 5.0


def endpoint(storage: Storage) -> str | None:
    return (getattr(storage.fs, "client_kwargs", None) or {}).get("endpoint_url")


def append_line(path: str, line: str) -> None:
    # One write with O_APPEND: lines of concurrent writers never interleave.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{line}\n".encode())
    finally:
        os.close(fd)


def contend(
    root: str,
    endpoint_url: str | None,
    log_path: str,
    name: str,
    rounds: int,
    settle_s: float,
    start_gate: str | None = None,
) -> None:
    """Take the `ingest` lease `rounds` times (waiting for it) and log entering and leaving;
    with `start_gate`, say ready there and start once it holds "go" (processes start apart)."""
    storage = Storage(root, endpoint_url)
    if start_gate:
        append_line(start_gate, f"ready {name}")
        while "go" not in Path(start_gate).read_text():
            time.sleep(0.01)
    for round_ in range(rounds):
        with hold_lease(
            storage,
            "ingest",
            f"{name}-{round_}",
            wait=True,
            timeout_s=300,
            ttl_s=TTL_S,
            settle_s=settle_s,
        ) as lease:
            append_line(log_path, f"enter {name} {lease.claim.generation}")
            time.sleep(0.5)  # widen the window in which an overlap would show
            lease.ensure_held()
            append_line(log_path, f"exit {name} {lease.claim.generation}")


def hold_and_report(
    root: str, endpoint_url: str | None, marker: str, elsewhere: bool = False
) -> None:
    """Take the `ingest` lease, say so in `marker`, then hold it until the lease is lost
    (after a SIGSTOP) or the process is killed. `elsewhere`: claim it as a process of
    another machine would, whose liveness the others cannot see."""
    storage = Storage(root, endpoint_url)
    space = "another-machine:1" if elsewhere else process_space()
    holder = LeaseHolder(host="h", pid=os.getpid(), run_id="victim", process_space=space)
    with hold_lease(storage, "ingest", holder, ttl_s=TTL_S) as lease:
        append_line(marker, f"held {lease.claim.generation}")
        while True:
            time.sleep(0.05)
            try:
                lease.ensure_held()
            except LeaseLost as error:
                append_line(marker, f"lost {error}")
                return


def spawn(function: str, *args: object) -> subprocess.Popen[bytes]:
    """`function` of this module in a new Python process (inherits the S3 credentials)."""
    code = (
        "import json, sys; from tests.io import test_leases as t; "
        f"t.{function}(*json.loads(sys.argv[1]))"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-c", code, json.dumps(args)], cwd=REPO, env=env)


def check_one_holder_at_a_time(log_path: Path, holders: list[str], rounds: int) -> None:
    lines = [line.split() for line in log_path.read_text().splitlines()]
    assert len(lines) == 2 * len(holders) * rounds
    generations = []
    for enter, leave in zip(lines[::2], lines[1::2], strict=True):
        assert enter[0] == "enter" and leave[0] == "exit", (enter, leave)
        assert enter[1:] == leave[1:]  # the one who entered left before anyone else entered
        generations.append(int(enter[2]))
    assert generations == sorted(set(generations))  # every hold claimed a new generation
    for holder in holders:
        assert sum(1 for line in lines if line[:2] == ["enter", holder]) == rounds


def wait_for_lines(
    path: Path, prefix: str, count: int, processes: list[subprocess.Popen[bytes]]
) -> list[str]:
    """The first `count` lines starting with `prefix` that the processes write to `path`."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        lines = path.read_text().splitlines() if path.exists() else []
        found = [line for line in lines if line.startswith(prefix)]
        if len(found) >= count:
            return found[:count]
        for process in processes:
            assert process.poll() is None, f"a process exited ({process.returncode})"
        time.sleep(0.05)
    raise AssertionError(f"fewer than {count} {prefix!r} lines in {path}")


def wait_for_line(path: Path, prefix: str, process: subprocess.Popen[bytes]) -> str:
    return wait_for_lines(path, prefix, 1, [process])[0]


def test_threads_hold_one_at_a_time(local_or_s3: Storage, tmp_path: Path) -> None:
    storage = local_or_s3
    log_path = tmp_path / "holders.log"
    names, rounds = ["a", "b", "c"], 3
    threads = [
        threading.Thread(
            target=contend,
            args=(storage.root_url, endpoint(storage), str(log_path), name, rounds, 0.0),
        )
        for name in names
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    check_one_holder_at_a_time(log_path, names, rounds)
    state = current_lease(storage, "ingest")
    assert state is not None and state.released_at is not None


def test_processes_hold_one_at_a_time(local_or_s3: Storage, tmp_path: Path) -> None:
    storage = local_or_s3
    log_path, gate = tmp_path / "holders.log", tmp_path / "start-gate"
    names, rounds = ["p1", "p2"], 3
    args = (storage.root_url, endpoint(storage), str(log_path))
    processes = [spawn("contend", *args, name, rounds, 0.0, str(gate)) for name in names]
    wait_for_lines(gate, "ready", len(names), processes)
    append_line(str(gate), "go")
    assert [process.wait(timeout=600) for process in processes] == [0, 0]
    check_one_holder_at_a_time(log_path, names, rounds)
    state = current_lease(storage, "ingest")
    assert state is not None and state.claim.generation == len(names) * rounds
    assert state.released_at is not None


@pytest.mark.parametrize("elsewhere", [False, True], ids=["this-machine", "another-machine"])
def test_a_killed_holders_lease_is_taken_once_it_is_known_dead_or_expired(
    local_or_s3: Storage, tmp_path: Path, elsewhere: bool
) -> None:
    storage = local_or_s3
    marker = tmp_path / "victim.log"
    victim = spawn("hold_and_report", storage.root_url, endpoint(storage), str(marker), elsewhere)
    try:
        held = int(wait_for_line(marker, "held", victim).split()[1])
    finally:
        victim.send_signal(signal.SIGKILL)
        victim.wait()
    left = current_lease(storage, "ingest")
    assert left is not None and left.claim.generation == held
    assert left.claim.holder.pid == victim.pid and left.released_at is None

    with hold_lease(storage, "ingest", "next", wait=True, timeout_s=120, ttl_s=TTL_S) as lease:
        assert lease.claim.generation == held + 1
        if elsewhere:  # nobody here can see that process: taken only once expired
            assert lease.claim.acquired_at >= left.expires_at
        else:  # its pid is gone from this machine: taken at once, without waiting the ttl
            assert lease.claim.acquired_at < left.expires_at


def test_a_stalled_holder_finds_its_lease_lost(tmp_path: Path) -> None:
    storage = Storage(str(tmp_path / "root"))
    marker = tmp_path / "victim.log"
    victim = spawn("hold_and_report", storage.root_url, None, str(marker))
    try:
        held = int(wait_for_line(marker, "held", victim).split()[1])
        victim.send_signal(signal.SIGSTOP)  # neither renews nor releases, but lives on
        with hold_lease(storage, "ingest", "next", wait=True, timeout_s=120, ttl_s=60) as lease:
            assert lease.claim.generation == held + 1
            victim.send_signal(signal.SIGCONT)
            lost = wait_for_line(marker, "lost", victim)
            assert victim.wait(timeout=120) == 0
            state = current_lease(storage, "ingest")
            assert state is not None and state.claim.token == lease.claim.token
            assert state.is_held()  # the woken holder left the new lease alone
    finally:
        victim.kill()
        victim.wait()
    assert "the ingest lease of run victim" in lost and "was lost" in lost
    leftover = [p.path for p in storage.list_files(LEASES_DIR) if p.path.endswith("released.json")]
    assert len(leftover) == 1  # only "next" released; the lost lease was left to expire


def test_lease_held_names_the_holder(local_or_s3: Storage) -> None:
    storage = local_or_s3
    with hold_lease(storage, "dataset-build", "build-20261201T0200Z-a1", ttl_s=60) as lease:
        with pytest.raises(LeaseHeld) as held:
            hold_lease(storage, "dataset-build", "build-other")
        with pytest.raises(LeaseHeld) as waited:
            hold_lease(storage, "dataset-build", "build-other", wait=True, timeout_s=0.3)
        other_stage = hold_lease(storage, "ingest", "ingest-1", ttl_s=60)
        other_stage.release()
    message = str(held.value)
    assert held.value.code == "lease_held"
    assert held.value.state.claim.token == lease.claim.token
    assert "dataset-build lease" in message and storage.root_url in message
    assert "run build-20261201T0200Z-a1" in message
    assert f"pid {os.getpid()} on {socket.gethostname()}" in message
    assert f"since {lease.claim.acquired_at:%Y-%m-%dT%H:%M:%S}Z" in message
    assert "expires by itself" in message and "run this again" in message
    assert "waited" in str(waited.value) and "waited" not in message

    released = current_lease(storage, "dataset-build")
    assert released is not None and released.released_at is not None
    with hold_lease(storage, "dataset-build", "build-other") as after:  # no wait needed
        assert after.claim.generation == lease.claim.generation + 1


def test_renewal_keeps_a_long_holder(local_or_s3: Storage) -> None:
    storage = local_or_s3
    # Longer than TTL_S: renewals must land within ttl/4 each, and a suite of real Ray and
    # lungcls processes can hold the moto server back for seconds.
    with hold_lease(storage, "train-publish", "train-long", ttl_s=3 * TTL_S) as lease:
        past_first_expiry = lease.claim.expires_at + timedelta(seconds=1)
        while datetime.now(UTC) < past_first_expiry:
            time.sleep(0.1)
        lease.ensure_held()
        state = current_lease(storage, "train-publish")
        assert state is not None and state.claim.token == lease.claim.token
        assert state.renewals >= 2 and state.expires_at > past_first_expiry
        with pytest.raises(LeaseHeld):
            hold_lease(storage, "train-publish", "train-other")
    assert not lease.lost


def test_lease_only_mode_on_a_store_without_exclusive_create(
    s3_settings: Settings, s3_server: str, tmp_path: Path
) -> None:
    log_path = tmp_path / "holders.log"
    names, rounds = ["a", "b"], 2
    with s3_proxy(s3_server, drop_if_none_match=True) as proxy:
        threads = [
            threading.Thread(
                target=contend, args=(s3_settings.root, proxy.url, str(log_path), n, rounds, 1.0)
            )
            for n in names
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert proxy.dropped >= 2 * len(names) * rounds  # no create was conditional
    check_one_holder_at_a_time(log_path, names, rounds)


def test_stale_lease_files_are_older_generations(local_or_s3: Storage) -> None:
    storage = local_or_s3
    for round_ in range(3):
        with hold_lease(storage, "ingest", f"ingest-{round_}", ttl_s=60):
            pass
    with hold_lease(storage, "train-publish", "train-1", ttl_s=60):
        stale = stale_lease_files(storage)
    every = [info.path for info in storage.list_files(LEASES_DIR)]
    older = [
        p
        for p in every
        if p.startswith(("leases/ingest/000000000001.", "leases/ingest/000000000002."))
    ]
    assert len(older) == 4  # a claim and a release each
    assert stale == sorted(older)


def test_stage_names_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="lease stage"):
        hold_lease(Storage(str(tmp_path)), "../ingest", "run-1")
