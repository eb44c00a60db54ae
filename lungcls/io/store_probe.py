"""Does the store honour exclusive create? Checked once per root and process, at run start.

Every commit point of lungcls (manifests, model records, aliases, the ledger's segments,
leases) relies on `Storage.create` refusing to overwrite: on S3 a conditional PUT with
`If-None-Match: *`. An S3-compatible store that ignores that header lets both of two racing
writers "win", silently, and the second overwrites what the first committed. So a run first
creates one probe key twice: the second create must be refused, and the first bytes must
still be there.

Where the store cannot do it, the run stops with `StoreProbeError`, unless the settings
choose lease-only mode: then overlapping work is kept apart by leases alone (with
`leases.LEASE_ONLY_SETTLE_S`), and the probe only logs a warning.
"""

from __future__ import annotations

import logging
import threading
import uuid

from lungcls.errors import LungclsError
from lungcls.io.storage import Storage

log = logging.getLogger(__name__)

PROBES_DIR = "probes"

_honoured: set[str] = set()  # roots (with their endpoint) that passed in this process
_honoured_lock = threading.Lock()


class StoreProbeError(LungclsError):
    """The store does not honour exclusive create; the message says what to do."""

    code = "store_ignores_conditional_writes"


def check_exclusive_create(storage: Storage, lease_only: bool = False) -> bool:
    """True when `storage` refuses to overwrite on `create` (checked once per process and
    root). False when it does not and `lease_only` is set; `StoreProbeError` otherwise."""
    key = _root_key(storage)
    with _honoured_lock:
        if key in _honoured:
            return True
    if _probe(storage):
        with _honoured_lock:
            _honoured.add(key)
        return True
    if lease_only:
        log.warning(
            "%s does not honour conditional writes (If-None-Match); running in lease-only "
            "mode: overlapping runs are kept apart by leases alone",
            storage.root_url,
        )
        return False
    raise StoreProbeError(
        f"the store behind {storage.root_url} does not honour conditional writes: a create "
        "with If-None-Match of an existing object overwrote it instead of being refused. "
        "Concurrent runs could overwrite each other's versions. Use a store that supports "
        "conditional writes (AWS S3, recent MinIO), or set `storage.lease_only: true` in the "
        "config to run with leases only (overlapping runs of a stage then wait for each other)."
    )


def _probe(storage: Storage) -> bool:
    """Create one probe key twice; True when the second create was refused and the first
    bytes stayed. The probe is removed afterwards (best effort: gc removes leftovers)."""
    rel = f"{PROBES_DIR}/{uuid.uuid4().hex}"
    first, second = b"probe: first create\n", b"probe: second create\n"
    try:
        if not storage.create(rel, first):
            raise StoreProbeError(
                f"the store behind {storage.root_url} refused to create a new object "
                f"({storage.url(rel)}): check the permissions of the root"
            )
        refused = not storage.create(rel, second)
        return refused and storage.read_bytes(rel) == first
    finally:
        try:
            storage.remove(rel)
        except Exception as error:  # a leftover probe harms nothing; gc removes it
            log.warning("could not remove the store probe %s (%s)", rel, type(error).__name__)


def _root_key(storage: Storage) -> str:
    endpoint = (getattr(storage.fs, "client_kwargs", None) or {}).get("endpoint_url")
    return f"{storage.root_url} {endpoint or ''}"
