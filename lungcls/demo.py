"""`make demo`: every stage built so far, end to end, on a fresh synthetic batch.

Runs on the embedded defaults (local folder storage, local Ray) unless settings say
otherwise, and prints where each stage's output is.
"""

from __future__ import annotations

from lungcls.config import Settings
from lungcls.ingest import ingest
from lungcls.storage import Storage
from lungcls.synth import SynthOptions, synth_batch

DEMO_BATCH = "demo-001"


def run_demo(settings: Settings, options: SynthOptions | None = None) -> int:
    storage = Storage.from_settings(settings)
    batch_dir = f"{settings.ingest.inbox}/{DEMO_BATCH}"
    if storage.exists(f"{batch_dir}/labels.csv"):
        print(f"[1/2] synth: {storage.url(batch_dir)} already there, kept")
    else:
        scans = synth_batch(storage, DEMO_BATCH, options or SynthOptions())
        print(f"[1/2] synth: {len(scans)} synthetic CT series written to {storage.url(batch_dir)}")
    summary = ingest(settings)
    print(
        f"[2/2] ingest {summary.run_id}: {summary.archives_ingested} archives ingested, "
        f"{summary.archives_skipped} already done, {summary.series_ingested} new series, "
        f"{len(summary.quarantined)} quarantined items; series store at {storage.url('series')}"
    )
    return 0
