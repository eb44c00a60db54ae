"""`make demo`: the whole pipeline — the `retrain` Prefect flow — on a synthetic batch.

Runs on the embedded defaults (local folder storage, Prefect's ephemeral API, local Ray)
unless settings say otherwise, and prints where the report is.
"""

from __future__ import annotations

from lungcls.config import Settings
from lungcls.io.storage import Storage
from lungcls.sources.synth import SynthOptions, synth_batch

DEMO_BATCH = "demo-001"
# The demo's split (train 98 / val 36 / test 26 scans, 12+ of each class in val and test)
# comes from the pseudonymisation key; a per-root random key gave every fresh clone another
# split, some too small to choose an operating point on or to pass the gate (a 20-scan val
# put the threshold above 5 of 17 test positives). This key is public: synthetic data only.
DEMO_PSEUDONYM_KEY = "lungcls-demo-key-synthetic-only-13"
# Enough patients that the val and test splits hold both classes (a contract checks it).
DEMO_OPTIONS = SynthOptions(scans=160, seed=0)


def ensure_demo_batch(settings: Settings, options: SynthOptions = DEMO_OPTIONS) -> None:
    storage = Storage.from_settings(settings)
    batch_dir = f"{settings.ingest.inbox}/{DEMO_BATCH}"
    if storage.exists(f"{batch_dir}/labels.csv"):
        print(f"synth: {storage.url(batch_dir)} already there, kept")
        return
    scans = synth_batch(storage, DEMO_BATCH, options, settings.ingest.inbox)
    print(f"synth: {len(scans)} synthetic CT series written to {storage.url(batch_dir)}")
