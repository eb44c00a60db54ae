"""Leases: one holder at a time per storage root and stage, for work that must not overlap.

    with hold_lease(storage, "ingest", run_id, wait=True, timeout_s=3600) as lease:
        ...  # no other `ingest` on this root is in here meanwhile; lease.ensure_held()

Per stage, small write-once objects (the token, random per claim, ties the others to it):

    leases/<stage>/<generation:012d>.json                          the claim (`LeaseClaim`)
    leases/<stage>/<generation:012d>.<token>.renew-<k:06d>.json    renewal k (`LeaseRenewal`)
    leases/<stage>/<generation:012d>.<token>.released.json         the release (`LeaseRelease`)

Only exclusive create, reads and listings: no overwrite, no delete, the same on a local
folder and on S3. The highest generation with a claim is the current lease; when it is
released or expired (or there is none), an exclusive create of the next generation claims
it, exactly one of racing acquirers wins, and the others find it held (`LeaseHeld` names
the holder) or wait. The holder's daemon thread renews every ttl/6; a holder killed with
`kill -9` stops, and its lease expires after at most one ttl, or at once for an acquirer on
the same machine, which sees that the holder's process is gone (`LeaseHolder.is_gone`).
A holder that could not renew by `expires_at - ttl/4` (storage unreachable, process
stalled) has lost it (`Lease.lost`).

Clocks: expiry times are UTC wall-clock times of the holder, compared by the others with
their own clocks: the hosts sharing a root must agree within ttl/4 (150 s at the default
10 min; NTP keeps them within milliseconds), or a host ahead could take a renewed lease.

Stores that ignore exclusive create (`store_probe`'s lease-only mode): pass `settle_s =
LEASE_ONLY_SETTLE_S`. The acquirer waits that long after its claim and reads it back; when
another claim replaced it, it lost (Fischer's mutual exclusion: correct while every claim
lands within `settle_s` of the listing it was decided on). Old generations pile up (a few
hundred bytes each): `stale_lease_files` lists them for garbage collection.
"""

from __future__ import annotations

import logging
import random
import re
import secrets
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import ClassVar

from lungcls.errors import LungclsError
from lungcls.io.holders import LeaseHolder, this_process
from lungcls.io.records import Record
from lungcls.io.storage import Storage

log = logging.getLogger(__name__)

LEASES_DIR = "leases"
DEFAULT_TTL_S = 600.0
# Settle time for stores without exclusive create: far above one PUT's latency.
LEASE_ONLY_SETTLE_S = 2.0

_STAGE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
_FILE = re.compile(
    r"^(?P<generation>\d{12})"
    r"(?:\.(?P<token>[0-9a-f]{16})\.(?:renew-(?P<renewal>\d{6})|(?P<released>released)))?"
    r"\.json$"
)


class LeaseHeld(LungclsError):
    """Another run holds the lease; the message names it and says what to do."""

    code = "lease_held"

    def __init__(self, message: str, state: LeaseState) -> None:
        super().__init__(message)
        self.state = state


class LeaseLost(LungclsError):
    """This run's lease expired before it could be renewed; another run may hold it now."""

    code = "lease_lost"


class LeaseClaim(Record):
    """Generation `generation` of a stage's lease, created exclusively by its holder."""

    SCHEMA: ClassVar[str] = "lungcls.lease/1"

    stage: str
    generation: int
    token: str  # random, names this claim's renewals and release
    holder: LeaseHolder
    acquired_at: datetime
    ttl_s: float
    expires_at: datetime  # unless renewed


class LeaseRenewal(Record):
    """The holder's word that it is still at work: the claim now expires at `expires_at`."""

    SCHEMA: ClassVar[str] = "lungcls.lease-renewal/1"

    renewal: int
    renewed_at: datetime
    expires_at: datetime


class LeaseRelease(Record):
    """The holder is done: the next acquirer need not wait for the expiry."""

    SCHEMA: ClassVar[str] = "lungcls.lease-release/1"

    released_at: datetime


@dataclass(frozen=True)
class LeaseState:
    """One generation of a lease as its files tell it (what a CLI shows)."""

    claim: LeaseClaim
    expires_at: datetime  # after the latest renewal
    renewals: int
    released_at: datetime | None

    def is_held(self, now: datetime | None = None) -> bool:
        return self.released_at is None and (now or _now()) < self.expires_at

    def describe(self) -> str:
        claim, since = self.claim, _time(self.claim.acquired_at)
        text = f"{claim.stage} lease #{claim.generation}: {claim.holder.describe()} since {since}"
        if self.released_at is not None:
            return f"{text}, released at {_time(self.released_at)}"
        verb = "expires" if self.is_held() else "expired"
        return f"{text}, {verb} at {_time(self.expires_at)} ({self.renewals} renewals)"


@dataclass
class _GenerationFiles:
    claim: str | None = None
    renewals: dict[tuple[str, int], str] = field(default_factory=dict)
    releases: dict[str, str] = field(default_factory=dict)
    paths: list[str] = field(default_factory=list)


class Lease:
    """A held lease: renewed by a daemon thread until `release` (or `hold_lease`'s exit)."""

    def __init__(self, storage: Storage, claim: LeaseClaim) -> None:
        self.storage = storage
        self.claim = claim
        self.expires_at = claim.expires_at
        self.lost_reason: str | None = None
        self._renewal = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._renew_until_stopped, daemon=True)
        self._thread.start()

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    @property
    def lost(self) -> bool:
        return self.lost_reason is not None

    def ensure_held(self) -> None:
        """Raise `LeaseLost` unless the lease is still certainly held: call it before a
        step that must not overlap with another holder's (a commit)."""
        # Renewed by then at the latest, a clock up to ttl/4 ahead never sees it expired.
        deadline = self.expires_at - timedelta(seconds=self.claim.ttl_s / 4)
        if not self.lost and _now() >= deadline:
            self.lost_reason = f"not renewed before {_time(deadline)}"
        if self.lost:
            raise LeaseLost(
                f"the {self.claim.stage} lease of {self.claim.holder.describe()} on "
                f"{self.storage.root_url} was lost ({self.lost_reason}): another run may hold "
                "it now: commit nothing more under it, and run this again"
            )

    def renew(self) -> None:
        """Push the expiry one ttl ahead (the renewal thread calls this every ttl/6)."""
        self.ensure_held()
        claim, now = self.claim, _now()
        while True:
            self._renewal += 1
            expires_at = now + timedelta(seconds=claim.ttl_s)
            renewal = LeaseRenewal(renewal=self._renewal, renewed_at=now, expires_at=expires_at)
            suffix = f".{claim.token}.renew-{self._renewal:06d}"
            if renewal.save(self.storage, _path(claim, suffix), exclusive=True):
                break
        # A later generation exists only when this holder was late, or the store ignores
        # exclusive create and another claim replaced ours.
        generation, state = _current(self.storage, claim.stage)
        if generation != claim.generation or state is None or state.claim.token != claim.token:
            self.lost_reason = f"lease #{generation} was claimed by another run"
            self.ensure_held()
        self.expires_at = renewal.expires_at

    def release(self) -> None:
        """Stop renewing and record the release (a lost lease is left to expire)."""
        if self._stop.is_set():
            return
        self._stop.set()
        self._thread.join()
        if self.lost:
            log.warning("%s lease was lost (%s)", self.claim.stage, self.lost_reason)
            return
        path = _path(self.claim, f".{self.claim.token}.released")
        try:
            LeaseRelease(released_at=_now()).save(self.storage, path, exclusive=True)
        except Exception as error:  # the lease expires by itself; the work is done either way
            log.warning("could not record the release of %s (%s)", path, type(error).__name__)

    def _renew_until_stopped(self) -> None:
        # Due ttl/6 after the last renewal or the claim (however long claiming took), so that
        # a few tries fit before the deadline at ttl*3/4; after a storage hiccup, again soon.
        def due() -> float:
            left = (self.expires_at - _now()).total_seconds()
            return max(0.0, left - self.claim.ttl_s * 5 / 6)

        wait = due()
        while not self._stop.wait(wait):
            try:
                self.renew()
                wait = due()
            except LeaseLost:
                log.error("%s lease lost: %s", self.claim.stage, self.lost_reason)
                return
            except Exception as error:  # retry until the deadline has passed
                log.warning("renewing the %s lease failed (%s)", self.claim.stage, error)
                wait = min(self.claim.ttl_s / 20, 5.0)


def hold_lease(
    storage: Storage,
    stage: str,
    holder: LeaseHolder | str,
    *,
    wait: bool = False,
    timeout_s: float | None = None,
    ttl_s: float = DEFAULT_TTL_S,
    settle_s: float = 0.0,
) -> Lease:
    """Take `stage`'s lease on `storage`: `with hold_lease(...) as lease:` releases it on
    exit, even on error (without `with`, call `Lease.release`).

    `holder` is a run id (this host and process are added) or a `LeaseHolder`. When another
    run holds it: `LeaseHeld` at once, or with `wait`, after `timeout_s` (None: no limit).
    """
    _check_stage(stage)
    if not 0 <= settle_s < ttl_s / 4:
        raise ValueError(f"a lease of ttl {ttl_s} s cannot wait {settle_s} s to settle")
    if isinstance(holder, str):
        holder = this_process(holder)
    started = time.monotonic()
    deadline = None if timeout_s is None else started + timeout_s
    poll_s = min(1.0, ttl_s / 10)
    announced = False
    while True:
        generation, state = _current(storage, stage)
        now = _now()
        if state is None or not state.is_held(now) or state.claim.holder.is_gone():
            claim = LeaseClaim(
                stage=stage,
                generation=generation + 1,
                token=secrets.token_hex(8),
                holder=holder,
                acquired_at=now,
                ttl_s=ttl_s,
                expires_at=now + timedelta(seconds=ttl_s),
            )
            if _claim(storage, claim, settle_s):
                return Lease(storage, claim)
            time.sleep(random.uniform(0, poll_s / 10))  # lost the race: look again
            continue
        waited = time.monotonic() - started
        if not wait or (deadline is not None and time.monotonic() >= deadline):
            raise LeaseHeld(_held_message(storage, state, waited if wait else None), state)
        if not announced:
            log.info("waiting for the %s", state.describe())
            announced = True
        remaining = poll_s if deadline is None else max(0.0, deadline - time.monotonic())
        time.sleep(min(remaining, random.uniform(poll_s / 2, poll_s)))


def current_lease(storage: Storage, stage: str) -> LeaseState | None:
    """The latest generation of `stage`'s lease (held, released or expired); None if none."""
    _check_stage(stage)
    return _current(storage, stage)[1]


def stale_lease_files(storage: Storage) -> list[str]:
    """Files of lease generations older than their stage's current one: nothing reads them,
    and garbage collection may delete them (the current generation's files stay)."""
    stale: list[str] = []
    for generations in _generations(storage, LEASES_DIR).values():
        current = _latest(generations)
        stale += [p for n, files in generations.items() if n < current for p in files.paths]
    return sorted(stale)


def _claim(storage: Storage, claim: LeaseClaim, settle_s: float) -> bool:
    path = _path(claim)
    if not claim.save(storage, path, exclusive=True):
        return False
    if settle_s <= 0:
        return True
    time.sleep(settle_s)  # see the module docstring: a store without exclusive create
    return LeaseClaim.load(storage, path).token == claim.token


def _state(storage: Storage, files: _GenerationFiles) -> LeaseState:
    claim = LeaseClaim.load(storage, str(files.claim))
    expires_at = claim.expires_at
    renewals = sorted(k for token, k in files.renewals if token == claim.token)
    if renewals:
        latest = LeaseRenewal.load(storage, files.renewals[(claim.token, renewals[-1])])
        expires_at = max(expires_at, latest.expires_at)
    released_at = None
    if claim.token in files.releases:
        released_at = LeaseRelease.load(storage, files.releases[claim.token]).released_at
    return LeaseState(claim, expires_at, len(renewals), released_at)


def _current(storage: Storage, stage: str) -> tuple[int, LeaseState | None]:
    """The highest generation with a claim (0 when none) and its state."""
    while True:
        generations = _generations(storage, f"{LEASES_DIR}/{stage}").get(stage, {})
        if not (latest := _latest(generations)):
            return 0, None
        try:
            return latest, _state(storage, generations[latest])
        except FileNotFoundError:  # gc removed it after our listing: no longer current
            continue


def _latest(generations: dict[int, _GenerationFiles]) -> int:
    return max((n for n, files in generations.items() if files.claim), default=0)


def _generations(storage: Storage, folder: str) -> dict[str, dict[int, _GenerationFiles]]:
    """The lease files under `folder`, by stage and generation (listed afresh: the storage
    keeps no listing cache)."""
    by_stage: dict[str, dict[int, _GenerationFiles]] = {}
    for info in storage.list_files(folder):
        stage, _, name = info.path.removeprefix(f"{LEASES_DIR}/").partition("/")
        match = _FILE.match(name)
        if match is None:  # a temporary file of a local create, or not ours
            continue
        generations = by_stage.setdefault(stage, {})
        files = generations.setdefault(int(match["generation"]), _GenerationFiles())
        files.paths.append(info.path)
        if match["renewal"]:
            files.renewals[(match["token"], int(match["renewal"]))] = info.path
        elif match["released"]:
            files.releases[match["token"]] = info.path
        else:
            files.claim = info.path
    return by_stage


def _path(claim: LeaseClaim, suffix: str = "") -> str:
    """A file of the lease (see the module docstring): the claim without `suffix`."""
    return f"{LEASES_DIR}/{claim.stage}/{claim.generation:012d}{suffix}.json"


def _held_message(storage: Storage, state: LeaseState, waited_s: float | None) -> str:
    claim = state.claim
    waited = "" if waited_s is None else f" (waited {waited_s:.0f} s)"
    return (
        f"the {claim.stage} lease on {storage.root_url} is held by "
        f"{claim.holder.describe()} since {_time(claim.acquired_at)}, until "
        f"{_time(state.expires_at)} unless it renews it{waited}. Let that run finish (or "
        "wait for it), then run this again; if it was killed, its lease expires by itself "
        f"at {_time(state.expires_at)}."
    )


def _check_stage(stage: str) -> None:
    if not _STAGE.match(stage):
        raise ValueError(f"lease stage {stage!r}: use lower-case letters, digits and '-'")


def _now() -> datetime:  # one clock for every expiry (see "Clocks" above)
    return datetime.now(UTC)


def _time(moment: datetime) -> str:
    return f"{moment.astimezone(UTC):%Y-%m-%dT%H:%M:%SZ}"
