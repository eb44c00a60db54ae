"""`make demo`: every stage built so far, end to end, on a fresh synthetic batch.

Runs on the embedded defaults (local folder storage, local Ray) unless settings say
otherwise, and prints where each stage's output is.
"""

from __future__ import annotations

from lungcls.config import Settings
from lungcls.datasets import build_dataset
from lungcls.ingest import ingest
from lungcls.storage import Storage
from lungcls.synth import SynthOptions, synth_batch
from lungcls.train import train_model

DEMO_BATCH = "demo-001"
# Enough patients that the val and test splits hold both classes (a contract checks it).
DEMO_OPTIONS = SynthOptions(scans=80, seed=0)


def run_demo(settings: Settings, options: SynthOptions = DEMO_OPTIONS) -> int:
    storage = Storage.from_settings(settings)
    batch_dir = f"{settings.ingest.inbox}/{DEMO_BATCH}"
    if storage.exists(f"{batch_dir}/labels.csv"):
        print(f"[1/4] synth: {storage.url(batch_dir)} already there, kept")
    else:
        scans = synth_batch(storage, DEMO_BATCH, options)
        print(f"[1/4] synth: {len(scans)} synthetic CT series written to {storage.url(batch_dir)}")
    summary = ingest(settings)
    print(
        f"[2/4] ingest {summary.run_id}: {summary.archives_ingested} archives ingested, "
        f"{summary.archives_skipped} already done, {summary.series_ingested} new series, "
        f"{len(summary.quarantined)} quarantined items; series store at {storage.url('series')}"
    )
    built = build_dataset(settings)
    state = "built" if built.created else "up to date"
    splits = ", ".join(f"{s} {sum(c.values())}" for s, c in built.counts.items())
    print(
        f"[3/4] dataset {built.name} v{built.version} {state} ({splits}); "
        f"manifest at {storage.url(built.manifest_path)}"
    )
    trained = train_model(settings)
    print(
        f"[4/4] train {trained.run_id}: model {trained.model_name} v{trained.model_version} "
        f"(candidate), best val AUC {trained.best_val_auc:.3f} at epoch "
        f"{trained.best_epoch + 1}, {trained.seconds:.0f} s; at "
        f"{storage.url(f'models/{trained.model_name}/v{trained.model_version}')}"
    )
    return 0
