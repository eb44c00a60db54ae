"""`make demo`: the whole pipeline — the `retrain` Prefect flow — on a synthetic batch.

Runs on the embedded defaults (local folder storage, Prefect's ephemeral API, local Ray)
unless settings say otherwise, and prints where the report is.
"""

from __future__ import annotations

from lungcls.config import Settings
from lungcls.storage import Storage
from lungcls.synth import SynthOptions, synth_batch

DEMO_BATCH = "demo-001"
# Enough patients that the val and test splits hold both classes (a contract checks it).
DEMO_OPTIONS = SynthOptions(scans=160, seed=0)


def ensure_demo_batch(settings: Settings, options: SynthOptions = DEMO_OPTIONS) -> None:
    storage = Storage.from_settings(settings)
    batch_dir = f"{settings.ingest.inbox}/{DEMO_BATCH}"
    if storage.exists(f"{batch_dir}/labels.csv"):
        print(f"synth: {storage.url(batch_dir)} already there, kept")
        return
    scans = synth_batch(storage, DEMO_BATCH, options)
    print(f"synth: {len(scans)} synthetic CT series written to {storage.url(batch_dir)}")


def print_outcome(summary: dict[str, object]) -> None:
    """The last lines of `lungcls run` and `lungcls demo`: what happened, where to look."""
    print(
        f"retrain: candidate v{summary['candidate']} {summary['outcome']}; "
        f"champion is v{summary['champion']}\nreport: {summary['report']}"
    )
