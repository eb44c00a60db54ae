"""`make demo`: every stage built so far, end to end, on a fresh synthetic batch.

Runs on the embedded defaults (local folder storage, local Ray) unless settings say
otherwise, and prints where each stage's output is.
"""

from __future__ import annotations

from lungcls.config import Settings
from lungcls.datasets import build_dataset
from lungcls.evaluate import evaluate_model
from lungcls.ingest import ingest
from lungcls.promote import promote
from lungcls.storage import Storage
from lungcls.synth import SynthOptions, synth_batch
from lungcls.train import train_model

DEMO_BATCH = "demo-001"
# Enough patients that the val and test splits hold both classes (a contract checks it).
DEMO_OPTIONS = SynthOptions(scans=160, seed=0)


def run_demo(settings: Settings, options: SynthOptions = DEMO_OPTIONS) -> int:
    storage = Storage.from_settings(settings)
    batch_dir = f"{settings.ingest.inbox}/{DEMO_BATCH}"
    if storage.exists(f"{batch_dir}/labels.csv"):
        print(f"[1/6] synth: {storage.url(batch_dir)} already there, kept")
    else:
        scans = synth_batch(storage, DEMO_BATCH, options)
        print(f"[1/6] synth: {len(scans)} synthetic CT series written to {storage.url(batch_dir)}")
    summary = ingest(settings)
    print(
        f"[2/6] ingest {summary.run_id}: {summary.archives_ingested} archives ingested, "
        f"{summary.archives_skipped} already done, {summary.series_ingested} new series, "
        f"{len(summary.quarantined)} quarantined items; series store at {storage.url('series')}"
    )
    built = build_dataset(settings)
    state = "built" if built.created else "up to date"
    splits = ", ".join(f"{s} {sum(c.values())}" for s, c in built.counts.items())
    print(
        f"[3/6] dataset {built.name} v{built.version} {state} ({splits}); "
        f"manifest at {storage.url(built.manifest_path)}"
    )
    trained = train_model(settings)
    print(
        f"[4/6] train {trained.run_id}: model {trained.model_name} v{trained.model_version} "
        f"(candidate), best val AUC {trained.best_val_auc:.3f} at epoch "
        f"{trained.best_epoch + 1}, {trained.seconds:.0f} s; at "
        f"{storage.url(f'models/{trained.model_name}/v{trained.model_version}')}"
    )
    evaluation = evaluate_model(settings, version=trained.model_version)
    at_op = evaluation.report["metrics"]["at_operating_point"]
    auc, (low, high) = at_op["values"]["roc_auc"], at_op["ci95"]["roc_auc"]
    print(
        f"[5/6] evaluate: test ROC AUC {auc:.3f} (95 % CI {low:.3f}-{high:.3f}), sensitivity "
        f"{at_op['values']['sensitivity']:.3f} and specificity "
        f"{at_op['values']['specificity']:.3f} at threshold {at_op['threshold']:.3f} "
        f"(chosen on val); report at {storage.url(f'{evaluation.folder}/report.html')}"
    )
    decision = promote(settings, trained.model_version)
    gates = ", ".join(f"{g.name} {'pass' if g.passed else 'FAIL'}" for g in decision.gates)
    print(
        f"[6/6] promote v{trained.model_version}: {decision.outcome} ({gates}); champion is "
        f"v{decision.champion_after}"
    )
    return 0
