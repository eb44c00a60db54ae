"""The one way a stage keeps overlapping runs apart: probe the store, then take the lease.

Version numbers and the ledger are safe for overlapping writers by exclusive create alone;
the stage's lease (`io.leases`) also keeps two runs from doing the same work twice (a second
`ingest` of one batch, a second `dataset build` of unchanged inputs waits and then finds
the work done). On a store that ignores conditional writes (`io.store_probe`), leases are
all there is, and only with `storage.lease_only` set.
"""

from __future__ import annotations

from lungcls.io.leases import LEASE_ONLY_SETTLE_S, Lease, hold_lease
from lungcls.io.storage import Storage
from lungcls.io.store_probe import check_exclusive_create


def stage_lease(storage: Storage, stage: str, run_id: str, lease_only: bool = False) -> Lease:
    """`stage`'s lease on `storage` for `run_id`, waiting while another run holds it (use
    with `with`); the store is probed first (once per process and root)."""
    honoured = check_exclusive_create(storage, lease_only)
    settle_s = 0.0 if honoured else LEASE_ONLY_SETTLE_S
    return hold_lease(storage, stage, run_id, wait=True, settle_s=settle_s)
