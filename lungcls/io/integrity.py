"""Readers verify what they load against the commit record that names it.

Every commit record (a dataset manifest, `model.json`, a fold's record) names its data files
with their SHA-256. A file that no longer matches was overwritten, truncated or tampered
with after the commit: it is refused with the file's name, never loaded.
"""

from __future__ import annotations

import hashlib

from lungcls.errors import LungclsError
from lungcls.io.storage import Storage


class IntegrityError(LungclsError):
    """A committed file's bytes do not match the SHA-256 its commit record names."""


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def checked_bytes(storage: Storage, rel: str, expected: str | None) -> bytes:
    """The bytes of `rel`, verified against `expected` (None: a record written before
    hashes were recorded, read unverified)."""
    data = storage.read_bytes(rel)
    if expected is not None and sha256_of(data) != expected:
        raise IntegrityError(_message(storage, rel))
    return data


def check_file(storage: Storage, rel: str, expected: str) -> None:
    """Refuse `rel` unless its bytes hash to `expected` (streamed: shards can be large)."""
    if storage.sha256(rel) != expected:
        raise IntegrityError(_message(storage, rel))


def _message(storage: Storage, rel: str) -> str:
    return (
        f"{storage.url(rel)} does not match the SHA-256 its commit record names: it was "
        "changed after it was committed (overwritten, truncated or tampered with). It is not "
        "loaded; restore it from a backup or build or train a new version"
    )
