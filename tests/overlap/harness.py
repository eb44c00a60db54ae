"""Real `lungcls` processes for the overlap and kill tests: started together, killed with
SIGKILL at a random point, on a local root or the moto S3 server.

How many rounds come from the environment, so that the regular suite stays quick and
`make stress` runs the acceptance numbers of issue 15:

    LUNGCLS_OVERLAP_ROUNDS   rounds of runs at once (default 1)
    LUNGCLS_KILL_ROUNDS      kill -9 rounds per stage and backend (default 1)
    LUNGCLS_STRESS=1         real `lungcls train` runs in every train test, on S3 too (slow)
    LUNGCLS_OVERLAP_SEED     the seed of the kill delays (default: a new one, printed on failure)
"""

from __future__ import annotations

import itertools
import json
import os
import random
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import yaml

from lungcls.config import Settings
from lungcls.io.storage import Storage
from tests.support import TEST_KEY, make_settings

REPO = Path(__file__).resolve().parents[2]
SEED = int(os.environ.get("LUNGCLS_OVERLAP_SEED") or secrets.randbelow(1_000_000))
STRESS = os.environ.get("LUNGCLS_STRESS") == "1"
PROCESS_TIMEOUT_S = 900  # a loaded 2-core machine runs a Ray Train process in minutes


def overlap_rounds() -> int:
    return int(os.environ.get("LUNGCLS_OVERLAP_ROUNDS") or 1)


def kill_rounds() -> int:
    return int(os.environ.get("LUNGCLS_KILL_ROUNDS") or 1)


# -- roots -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Backend:
    """Where a test's roots live: folders under `base` (a local folder or an S3 bucket URL)."""

    name: str  # "local" or "s3"
    base: str
    endpoint: str | None
    scratch: Path  # local folder for configs, logs and work dirs

    def settings(self, root: str, **overrides: object) -> Settings:
        """Settings for the root `root` under `base`."""
        extra: dict[str, object] = {"s3_endpoint_url": self.endpoint} if self.endpoint else {}
        return make_settings(f"{self.base}/{root}", self.scratch / root, **extra, **overrides)


# -- processes -------------------------------------------------------------------------------


@dataclass
class Proc:
    """One started `lungcls` process: output in files, its own process group."""

    name: str
    popen: subprocess.Popen[bytes]
    started: float  # time.monotonic() at start
    out: Path
    err: Path
    seconds: float | None = None  # how long it ran, once it ended by itself

    def stdout(self) -> str:
        return self.out.read_text()

    def json(self) -> dict[str, object]:
        """The JSON a `--json` command printed last (progress lines may come before it)."""
        text = self.stdout()
        start = 0 if text.startswith("{") else text.index("\n{") + 1
        return json.loads(text[start:])

    def describe(self) -> str:
        tail = self.err.read_text()[-3000:] if self.err.exists() else ""
        return f"{self.name} exited {self.popen.returncode}; stderr ends:\n{tail}"

    def wait_ok(self, timeout_s: float = PROCESS_TIMEOUT_S) -> Proc:
        """Wait for the process to end by itself, with exit status 0."""
        try:
            self.popen.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"{self.name} ran over {timeout_s} s") from None
        self.seconds = time.monotonic() - self.started
        _sweep(self.popen.pid)
        assert self.popen.returncode == 0, self.describe()
        return self

    def kill_after(self, delay_s: float, since: float | None = None) -> bool:
        """`kill -9` the process `delay_s` after `since` (a time.monotonic(); default: its
        start) unless it ended before (then it must have succeeded); True when it was
        killed. Whatever it started (Ray) goes too."""
        left = (self.started if since is None else since) + delay_s - time.monotonic()
        try:
            self.popen.wait(timeout=max(0.0, left))
        except subprocess.TimeoutExpired:
            self.kill()
            return True
        self.wait_ok()
        return False

    def kill(self) -> None:
        if self.popen.poll() is None:
            os.kill(self.popen.pid, signal.SIGKILL)
        self.popen.wait()  # reaped: a zombie would still look alive to a lease's acquirer
        _sweep(self.popen.pid)


def _sweep(group: int) -> None:
    """SIGKILL what is left of a process group this harness started (Ray's processes)."""
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(group, signal.SIGKILL)


class Runner:
    """Starts real `lungcls` processes on one root: `python -m lungcls.cli --config <yaml>`,
    each with its own work dir (so a Ray of its own), logs under `folder`."""

    started: ClassVar[list[Proc]] = []  # every process of the session, for the clean-up fixture

    def __init__(self, settings: Settings, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.settings = settings
        self.storage = Storage.from_settings(settings)
        self.folder = folder
        self.config = folder / "lungcls.yaml"
        self.config.write_text(yaml.safe_dump({**settings.masked(), "pseudonym_key": TEST_KEY}))
        self._numbers = itertools.count()

    def start(self, *args: str) -> Proc:
        """`lungcls --config <yaml> ARGS...` in a new process group."""
        command = [sys.executable, "-m", "lungcls.cli", "--config", str(self.config), *args]
        return self._spawn(args[0], command)

    def start_python(self, name: str, code: str) -> Proc:
        """`python -c CODE <yaml>`: library calls as a process of their own."""
        return self._spawn(name, [sys.executable, "-c", code, str(self.config)])

    def run(self, *args: str) -> Proc:
        return self.start(*args).wait_ok()

    def _spawn(self, name: str, command: list[str]) -> Proc:
        label = f"{next(self._numbers):03d}-{name}"
        env = {
            **os.environ,
            "LUNGCLS_WORK_DIR": str(self.folder / f"work-{label}"),
            "PYTHONPATH": str(REPO),
        }
        out, err = self.folder / f"{label}.out", self.folder / f"{label}.err"
        with out.open("wb") as stdout, err.open("wb") as stderr:
            popen = subprocess.Popen(
                command, cwd=REPO, env=env, stdout=stdout, stderr=stderr, start_new_session=True
            )
        proc = Proc(label, popen, time.monotonic(), out, err)
        Runner.started.append(proc)
        return proc


def wait_all(procs: list[Proc]) -> list[Proc]:
    return [proc.wait_ok() for proc in procs]


def stop_all_started() -> None:
    """Kill every process a test left running (a failed assertion mid-round)."""
    while Runner.started:
        proc = Runner.started.pop()
        if proc.popen.poll() is None:
            proc.kill()


# -- kill points -----------------------------------------------------------------------------


@dataclass(frozen=True)
class CleanRun:
    """A run to its end (in this process or another): when it first wrote to the root and
    when it ended. Kills land in between, counted from the killed run's own first write: a
    process only imports modules before it, for a time that varies from run to run."""

    seconds: float
    first_write_s: float

    def describe(self) -> str:
        write, end = self.first_write_s, self.seconds
        return f"a clean run first wrote at {write:.2f} s and ended at {end:.2f} s"


def _listing(storage: Storage) -> set[tuple[str, str]]:
    return {(info.path, info.version_tag) for info in storage.list_files("")}


Launch = Callable[["Runner"], Proc]  # starts one process with a runner


def command(*args: str) -> Launch:
    """`lungcls ARGS...` for `kill_while_writing`."""
    return lambda runner: runner.start(*args)


def python(name: str, code: str) -> Launch:
    """`python -c CODE <config>` for `kill_while_writing`."""
    return lambda runner: runner.start_python(name, code)


def clean_run(storage: Storage, run: Callable[[], object]) -> CleanRun:
    """Time `run()` on `storage` to its end, and find when it first wrote (the earliest
    modification time of what it created or changed)."""
    listed = _listing(storage)
    started_at, started = time.time(), time.monotonic()
    run()
    seconds = time.monotonic() - started
    written = [
        info.modified.timestamp()
        for info in storage.list_files("")
        if (info.path, info.version_tag) not in listed and info.modified is not None
    ]
    first = min(written, default=started_at) - started_at
    return CleanRun(seconds, min(max(first, 0.0), seconds))


def kill_while_writing(runner: Runner, launch: Launch, delay_s: float) -> bool:
    """Start `launch`'s process, wait for its first write to the root (imports take a
    varying time), then `kill -9` it `delay_s` later; True when it was killed before it
    ended."""
    listed = _listing(runner.storage)
    proc = launch(runner)
    while proc.popen.poll() is None and _listing(runner.storage) <= listed:
        time.sleep(0.02)
    return proc.kill_after(delay_s, since=time.monotonic())


class KillClock:
    """Random kill delays from a seeded generator: a point in the time a clean run spent
    writing, counted from its first write (`delay`; for `kill_while_writing`)."""

    def __init__(self, test: str) -> None:
        self.rng = random.Random(f"{SEED}/{test}")

    def delay(self, clean: CleanRun) -> float:
        return self.rng.uniform(0.0, clean.seconds - clean.first_write_s)


@contextmanager
def round_note(text: str) -> Iterator[None]:
    """Say which round failed, and how to repeat its kill points, in any failure."""
    try:
        yield
    except BaseException as error:
        error.add_note(f"{text}; kill delays seeded with LUNGCLS_OVERLAP_SEED={SEED}")
        raise


def collect_garbage(runner: Runner) -> dict[str, object]:
    """`lungcls gc --apply` with no grace period, as a real process: what the overlap tests
    run at the end, before checking that every committed record still verifies."""
    return runner.run("gc", "--apply", "--grace-hours", "0", "--json").json()


def collect_garbage_here(settings: Settings) -> None:
    """The same collection in this process (the kill tests' last root: no process to start)."""
    from lungcls.retention.gc import apply_gc, plan_gc

    storage = Storage.from_settings(settings)
    apply_gc(storage, plan_gc(storage, without_grace(settings)))


def without_grace(settings: Settings) -> Settings:
    """`settings` for a gc that spares no file for its age (every run here has ended)."""
    no_grace = settings.storage.model_copy(update={"gc_grace_hours": 0.0})
    return settings.model_copy(update={"storage": no_grace})
