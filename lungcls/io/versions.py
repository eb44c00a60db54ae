"""Numbered versions `<folder>/v<N>/`: a number is claimed first, the version committed last.

Datasets (`manifest.json`) and models (`model.json`) share these rules, so that writers may
overlap (a schedule and a user, two workers):
- **Claim first.** A writer claims `v<N>` by an exclusive create of `v<N>/claim.json` before
  it writes anything there; a writer that loses the race takes the next number. The number
  is one above every `v<N>` folder present, committed or not, so a number is never reused
  and nobody writes into a folder another writer owns — nothing is ever removed to make room.
- **Commit last.** A version exists only once its marker (the commit record, written with an
  exclusive create) does; folders without one are unfinished work and are never read.
"""

from __future__ import annotations

import json
import os
import socket
from datetime import UTC, datetime

from lungcls.errors import LungclsError
from lungcls.io.storage import Storage

CLAIM = "claim.json"


class VersionClaimError(LungclsError):
    """No version number could be claimed (the store is refusing writes, or many writers)."""


def _numbers(storage: Storage, folder: str) -> list[tuple[int, str]]:
    found = []
    for path in storage.list_dirs(folder):
        tail = path.rsplit("/", 1)[-1]
        if tail.startswith("v") and tail[1:].isdigit():
            found.append((int(tail[1:]), path))
    return sorted(found)


def committed_versions(storage: Storage, folder: str, marker: str) -> list[int]:
    """Numbers of the committed versions under `folder`, oldest first."""
    return [n for n, path in _numbers(storage, folder) if storage.exists(f"{path}/{marker}")]


def claim_bytes(run_id: str) -> bytes:
    """What a claim file holds: which run, process and machine took a number, and when."""
    claim = {
        "run_id": run_id,
        "claimed_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "host": socket.gethostname(),
        "pid": os.getpid(),
    }
    return json.dumps(claim).encode()


def claim_version(storage: Storage, folder: str, run_id: str, attempts: int = 50) -> int:
    """Claim the next free version number under `folder` for `run_id`; returns it."""
    taken = _numbers(storage, folder)
    number = (taken[-1][0] if taken else 0) + 1
    claim = claim_bytes(run_id)
    for _ in range(attempts):
        if storage.create(f"{folder}/v{number}/{CLAIM}", claim):
            return number
        number += 1
    raise VersionClaimError(
        f"could not claim a version under {storage.url(folder)} in {attempts} attempts"
    )


def latest_version(storage: Storage, folder: str, marker: str) -> int | None:
    """The highest committed version under `folder`, or None when there is none yet."""
    versions = committed_versions(storage, folder, marker)
    return versions[-1] if versions else None


def marker_path(storage: Storage, folder: str, marker: str, version: int | None) -> str | None:
    """Where the marker of `version` (`None`: the latest) is, or None when that version is
    not committed."""
    number = latest_version(storage, folder, marker) if version is None else version
    path = f"{folder}/v{number}/{marker}"
    return path if number is not None and storage.exists(path) else None


def missing_version(what: str, version: int | None, command: str) -> str:
    """The message for a version that `marker_path` did not find."""
    if version is None:
        return f"{what} has no version yet: run `{command}`"
    return f"{what} has no version {version}"
