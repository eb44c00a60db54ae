"""Out-of-fold AUC of a cross-validated run, each fold model scoring its held-out patients
once as they are and once averaged over their flips (`model.test_time_flips`).

Why here: whether test-time flips help is to be decided on out-of-fold scores, never on the
test split, and both readings come from the same trained fold models (the stored weights of
`runs/<run>/folds/<k>.pt`): no second training, so the comparison has no seed noise in it.

    .venv/bin/python bench/fold_views.py ROOT [ROOT ...]   # roots kept by `--keep`

Prints, for every cross-validated model version under each storage root, the pooled
out-of-fold AUC both ways, and beside it the test AUC of the averaged model (for the
record: it must not choose).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
from sklearn.metrics import roc_auc_score

from lungcls.config import Settings, load_settings
from lungcls.dataset.manifest import load_manifest
from lungcls.dataset.shards import iter_samples
from lungcls.io.storage import Storage
from lungcls.registry.records import ModelRecord
from lungcls.registry.store import list_model_versions, load_record
from lungcls.train.ensemble import Ensemble, FlipAveraged
from lungcls.train.folds import fold_model, held_out_samples, read_fold_scores, standardise
from lungcls.train.scoring import score_samples


def oof_auc_by_views(settings: Settings, record: ModelRecord) -> dict[str, dict[str, float]]:
    """Per view ("plain", "flips"): the pooled out-of-fold AUC of the fold models of
    cross-validated `record` (standardised per fold, as `train_folds` publishes them) and,
    for the record only, the test AUC of their standardised average."""
    storage = Storage.from_settings(settings)
    manifest = load_manifest(storage, record.dataset.name, record.dataset.version)
    folds = record.cross_validation.folds
    members = [fold_model(settings, manifest, record.train_run, f).eval() for f in folds]
    held_out = [set(read_fold_scores(storage, record.train_run, f)["patient_id"]) for f in folds]
    results = {}
    for view, wrap in (("plain", lambda m: m), ("flips", FlipAveraged)):
        frames = [
            score_samples(wrap(model).eval(), held_out_samples(storage, manifest, patients)).assign(
                fold=fold.fold
            )
            for fold, model, patients in zip(folds, members, held_out, strict=True)
        ]
        oof, offsets, scales = standardise(pd.concat(frames, ignore_index=True))
        ensemble = wrap(Ensemble(members, offsets, scales)).eval()
        test = score_samples(ensemble, iter_samples(storage, manifest.shards_of("test")))
        results[view] = {
            "oof_auc": float(roc_auc_score(oof["label"], oof["score"])),
            "test_auc": float(roc_auc_score(test["label"], test["score"])),
        }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("roots", nargs="+", type=Path, help="storage roots of finished runs")
    args = parser.parse_args()
    for root in args.roots:
        storage = Storage.from_settings(load_settings(None, root=str(root)))
        for name in sorted(p.name for p in (root / "models").iterdir()):
            for version in list_model_versions(storage, name):
                record = load_record(storage, name, version)
                if record.cross_validation is None:
                    continue
                settings = load_settings(
                    None,
                    root=str(root),
                    model=record.model.model_dump(),
                    train=record.train.model_dump(),
                )
                for view, aucs in oof_auc_by_views(settings, record).items():
                    print(
                        f"{root.name} {name} v{version} {view:5s}: out-of-fold AUC "
                        f"{aucs['oof_auc']:.4f}  (test AUC {aucs['test_auc']:.4f}, not for "
                        "choosing)",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
