"""`make demo`: the whole pipeline — the `retrain` Prefect flow — on a synthetic batch.

Runs on the embedded defaults (local folder storage, Prefect's ephemeral API, local Ray)
unless settings say otherwise, and prints where the report is. The demo's pseudonym key is
public, so every stage refuses it on a root that holds anything but the demo batch
(`demo_root_problem`, checked by `lungcls.ingest.deid.pseudonym_key`).
"""

from __future__ import annotations

from typing import ClassVar

from lungcls.config import Settings
from lungcls.ingest.deid import DEMO_KEY_BYTES
from lungcls.io.records import Record
from lungcls.io.storage import Storage
from lungcls.sources.synth import SynthOptions, synth_batch

DEMO_BATCH = "demo-001"
# The demo's split (train 98 / val 36 / test 26 scans, 12+ of each class in val and test)
# comes from the pseudonymisation key; a per-root random key gave every fresh clone another
# split, some too small to choose an operating point on or to pass the gate (a 20-scan val
# put the threshold above 5 of 17 test positives). This key is public: synthetic data only.
DEMO_PSEUDONYM_KEY = DEMO_KEY_BYTES.decode()
# Enough patients that the val and test splits hold both classes (a contract checks it).
DEMO_OPTIONS = SynthOptions(scans=160, seed=0)
# In the demo batch folder; ingest skips dot files.
DEMO_MARKER = ".lungcls-demo.json"


class DemoBatch(Record):
    """What `ensure_demo_batch` wrote: each file of the batch (relative to its folder) and
    its size, so that a file anybody adds later is told apart from the synthetic ones."""

    SCHEMA: ClassVar[str] = "lungcls.demo-batch/1"

    files: dict[str, int]


def ensure_demo_batch(settings: Settings, options: SynthOptions = DEMO_OPTIONS) -> None:
    storage = Storage.from_settings(settings)
    batch_dir = f"{settings.ingest.inbox}/{DEMO_BATCH}"
    if storage.exists(f"{batch_dir}/labels.csv"):
        print(f"synth: {storage.url(batch_dir)} already there, kept")
        return
    scans = synth_batch(storage, DEMO_BATCH, options, settings.ingest.inbox)
    DemoBatch(files=_batch_files(storage, batch_dir)).save(storage, f"{batch_dir}/{DEMO_MARKER}")
    print(f"synth: {len(scans)} synthetic CT series written to {storage.url(batch_dir)}")


def _batch_files(storage: Storage, batch_dir: str) -> dict[str, int]:
    return {
        info.path[len(batch_dir) + 1 :]: info.size
        for info in storage.list_files(batch_dir)
        if not info.path.endswith(f"/{DEMO_MARKER}")
    }


def demo_root_problem(storage: Storage, inbox: str) -> str | None:
    """Why the root is more than the demo's (None: it holds the demo batch only, or nothing).

    Counts, never names: the other folders of an inbox may be named after patients.
    """
    from lungcls.ingest.ledger import Ledger

    batch_dir = f"{inbox}/{DEMO_BATCH}"
    others = [d for d in storage.list_dirs(inbox) if d != batch_dir]
    if others:
        return f"its inbox holds {len(others)} batch folder(s) besides {DEMO_BATCH}"
    if storage.exists(batch_dir):
        if not storage.exists(f"{batch_dir}/{DEMO_MARKER}"):
            return f"{DEMO_BATCH} has no {DEMO_MARKER}: `lungcls demo` did not write it"
        written = DemoBatch.load(storage, f"{batch_dir}/{DEMO_MARKER}").files
        found = _batch_files(storage, batch_dir)
        added = [name for name, size in found.items() if written.get(name) != size]
        if added:
            return f"{len(added)} file(s) in {DEMO_BATCH} are not the ones `lungcls demo` wrote"
    elsewhere = [e for e in Ledger.load(storage).entries if e.batch != DEMO_BATCH]
    if elsewhere:
        return f"its ledger records {len(elsewhere)} archive version(s) of other batches"
    return None
