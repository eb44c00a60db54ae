"""Real CT slices through the whole pipeline: IQ-OTH/NCCD, contiguous case-number test range.

    .venv/bin/python bench/real_iqothnccd.py [--data ../shared/data/iq-othnccd]
        [--config configs/iq-othnccd.yaml] [--test-range 0.8:1] [--sweep] [--set K=V] [--keep]

`lungcls.sources.images.import_images` turns the class folders into one inbox batch (malignant = 1;
benign, normal = 0; groups of 10 consecutive case numbers per class = one pseudonymous
patient; per class, the groups in `--test-range` of the case-number order are test, and 15 %
of the groups spread over the rest are validation). Then the functions the `retrain` flow's
tasks call, with one `Settings` (2D whole slices, see `SETTINGS`): `ingest`,
`build_dataset`, `train_model` (Ray Train, 2 workers), `evaluate_model` (the pipeline picks
the operating point itself: on out-of-fold scores with `train.folds` > 1, else on val),
`promote`. Reports are written as usual.

Printed: test ROC AUC with its patient-bootstrap 95 % CI, sensitivity and specificity at the
operating point with CIs, the confusion matrix, training time; and the shortcut rule of
issue 8 on the same test split: the fraction of pixels brighter than 10 % of full scale, one
number per image, computed on the stored slices at native resolution (the source pixels:
grey levels come back exactly from the nominal HU) and on the model's input tensors, its
direction fixed on the train split; with a paired patient bootstrap of AUC(model) -
AUC(rule). `--sweep` repeats everything for the other four fifths of the case-number range
as test (a fresh root each), to see whether the result depends on which range is held out.

Work goes to `.lungcls-work/bench-real/` (removed at the end unless `--keep`).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
from bench_settings import Overrides, add_set_option, bench_settings, parsed_overrides
from sklearn.metrics import roc_auc_score

from lungcls.dataset.build import build_dataset
from lungcls.dataset.manifest import Manifest, load_manifest
from lungcls.dataset.shards import iter_samples
from lungcls.evaluate.bootstrap import bootstrap_intervals, paired_auc_difference
from lungcls.evaluate.evaluation import evaluate_model
from lungcls.ingest.run import ingest
from lungcls.ingest.series_store import iter_series
from lungcls.io.storage import Storage
from lungcls.registry.promote import promote
from lungcls.sources.images import ImportOptions, import_images, nominal_rescale
from lungcls.train.trainer import train_model

BATCH = "iq-othnccd"
KEY = "bench-real-pseudonym-key-0123456789"
FOV_MM = 360.0
BRIGHT = 0.1  # "brighter than about 10 % of full scale"
RANGES = [(0.0, 0.2), (0.2, 0.4), (0.4, 0.6), (0.6, 0.8), (0.8, 1.0)]


def shortcut_scores(storage: Storage, manifest: Manifest) -> dict[str, dict[str, float]]:
    """The rule's number per series, on native pixels and on the model's input tensors."""
    slope, intercept = (float(v) for v in nominal_rescale((-600.0, 1500.0)))
    out: dict[str, dict[str, float]] = {}
    for sample in iter_samples(storage, manifest.shards):
        tensor = sample.array().astype(np.float32)
        out[sample.series_id] = {
            "split": sample.split,
            "label": sample.label,
            "patient": sample.patient_id,
            "tensor": float((tensor > BRIGHT).mean()),
        }
    for series in iter_series(storage, list(out)):
        grey = np.rint((series.volume.astype(np.float64) - intercept) / slope)
        out[series.series_id]["native"] = float((grey > BRIGHT * 255).mean())
    return out


def rule_auc(
    rule: dict[str, dict[str, float]], test_ids: list[str], kind: str, rounds: int
) -> dict[str, Any]:
    """AUC of the rule on test, its sign fixed on train (which way is 'malignant')."""
    train = [v for v in rule.values() if v["split"] == "train"]
    sign = (
        1.0 if roc_auc_score([v["label"] for v in train], [v[kind] for v in train]) >= 0.5 else -1.0
    )
    labels = np.array([rule[i]["label"] for i in test_ids])
    values = np.array([rule[i][kind] for i in test_ids])
    scores = values if sign > 0 else 1.0 - values  # a fraction: stays in [0, 1]
    groups = np.array([rule[i]["patient"] for i in test_ids])
    low, high = bootstrap_intervals(labels, scores, groups, 0.5, rounds, 0)["roc_auc"]
    auc = float(roc_auc_score(labels, scores))
    return {
        "auc": auc,
        "ci95": [low, high],
        "malignant_is": "higher" if sign > 0 else "lower",
        "scores": scores,
    }


def run_range(
    data: str,
    work: Path,
    test_range: tuple[float, float],
    config: str,
    overrides: Overrides,
) -> dict[str, Any]:
    """One full pipeline run with `test_range` held out; returns the numbers."""
    root = work / f"root-{test_range[0]:.1f}-{test_range[1]:.1f}"
    shutil.rmtree(root, ignore_errors=True)
    settings = bench_settings(root, work / "state", config, KEY, overrides)
    storage = Storage.from_settings(settings)
    timings: dict[str, float] = {}

    def timed(name: str, fn, *args, **kwargs):
        start = time.perf_counter()
        value = fn(*args, **kwargs)
        timings[name] = round(time.perf_counter() - start, 1)
        return value

    options = ImportOptions(
        positive=("malignant",),
        group_size=10,
        fov_mm=FOV_MM,
        test_range=test_range,
        val_fraction=0.15,
    )
    imported = timed("import_s", import_images, data, storage, BATCH, options)
    timed("ingest_s", ingest, settings, progress=False)
    built = timed("build_s", build_dataset, settings, progress=False)
    trained = timed("train_s", train_model, settings)
    evaluation = timed("evaluate_s", evaluate_model, settings, version=trained.model_version)
    decision = timed("promote_s", promote, settings, trained.model_version)

    report = evaluation.report
    at_op = report.metrics.at_operating_point
    values, ci = at_op.values, at_op.ci95
    scores = evaluation.scores
    test = scores[scores["split"] == "test"].sort_values("series_id")
    val = scores[scores["split"] == "val"]
    manifest = load_manifest(storage, built.name, built.version)
    rule = shortcut_scores(storage, manifest)
    ids = list(test["series_id"])
    rounds = settings.evaluation.bootstrap_rounds
    rules = {kind: rule_auc(rule, ids, kind, rounds) for kind in ("native", "tensor")}
    difference = paired_auc_difference(
        test["label"].to_numpy(),
        test["score"].to_numpy(),
        rules["native"].pop("scores"),
        test["patient_id"].to_numpy(),
        rounds,
        0,
    )
    rules["tensor"].pop("scores")
    val_ids = list(val["series_id"])
    val_rule = rule_auc(rule, val_ids, "native", rounds)
    val_rule.pop("scores")
    return {
        "test_range": list(test_range),
        "images": imported.images,
        "refused": len(imported.quarantined),
        "counts": built.counts,
        "test_patients": report.splits["test"].patients,
        "auc": values["roc_auc"],
        "auc_ci95": ci["roc_auc"],
        "operating_point": report.operating_point.model_dump(),
        "sensitivity": values["sensitivity"],
        "sensitivity_ci95": ci["sensitivity"],
        "specificity": values["specificity"],
        "specificity_ci95": ci["specificity"],
        "confusion": {k: values[k] for k in ("tn", "fp", "fn", "tp")},
        "shortcut_native": rules["native"],
        "shortcut_tensor": rules["tensor"],
        "auc_minus_shortcut": {"value": difference[0], "ci95": [difference[1], difference[2]]},
        # Out-of-fold AUC over train+val with cross-validation, else the val split's.
        "val_auc": trained.best_val_auc,
        "val_shortcut_native": val_rule,
        "best_epoch": trained.best_epoch + 1,
        "epochs_run": trained.epochs_run,
        "promotion": decision.outcome,
        "report": storage.url(f"{evaluation.folder}/report.html"),
        "seconds": timings,
    }


def summary(result: dict[str, Any]) -> str:
    c = result["confusion"]
    low, high = result["auc_ci95"]
    s_low, s_high = result["sensitivity_ci95"]
    p_low, p_high = result["specificity_ci95"]
    native, tensor = result["shortcut_native"], result["shortcut_tensor"]
    d = result["auc_minus_shortcut"]
    a, b = result["test_range"]
    return "\n".join(
        [
            f"test range {a:.1f}-{b:.1f} of each class's case numbers: "
            f"{sum(c.values())} images, {result['test_patients']} pseudonymous patients",
            f"  ROC AUC {result['auc']:.4f} (95 % CI {low:.4f}-{high:.4f})",
            f"  operating point {result['operating_point']['threshold']:.3f} (chosen off test): "
            f"sensitivity {result['sensitivity']:.3f} ({s_low:.3f}-{s_high:.3f}), "
            f"specificity {result['specificity']:.3f} ({p_low:.3f}-{p_high:.3f})",
            f"  confusion: TN {c['tn']}  FP {c['fp']}  FN {c['fn']}  TP {c['tp']}",
            f"  shortcut rule (pixels > 10 % of full scale) AUC: native pixels "
            f"{native['auc']:.4f} ({native['ci95'][0]:.4f}-{native['ci95'][1]:.4f}), "
            f"model input {tensor['auc']:.4f} ({tensor['ci95'][0]:.4f}-{tensor['ci95'][1]:.4f})",
            f"  AUC(model) - AUC(rule, native) = {d['value']:+.4f} "
            f"(95 % CI {d['ci95'][0]:+.4f} to {d['ci95'][1]:+.4f})",
            f"  validation (out-of-fold with folds): model AUC {result['val_auc']:.4f}, rule "
            f"{result['val_shortcut_native']['auc']:.4f}",
            f"  training {result['seconds']['train_s']:.0f} s (best epoch "
            f"{result['best_epoch']} of {result['epochs_run']}); promotion: "
            f"{result['promotion']}; report {result['report']}",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="../shared/data/iq-othnccd")
    parser.add_argument("--test-range", default="0.8:1", help="share A:B of case numbers")
    parser.add_argument("--sweep", action="store_true", help="also the other four fifths")
    parser.add_argument("--config", default="configs/iq-othnccd.yaml")
    parser.add_argument("--keep", action="store_true", help="keep the roots and reports")
    add_set_option(parser, "train.augment_strength=1.0")
    args = parser.parse_args()
    overrides = parsed_overrides(args.set)
    start, end = (float(v) for v in args.test_range.split(":"))
    ranges = [(start, end)] + ([r for r in RANGES if r != (start, end)] if args.sweep else [])
    work = Path(".lungcls-work/bench-real").resolve()
    work.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    results = []
    try:
        for test_range in ranges:
            result = run_range(args.data, work, test_range, args.config, overrides)
            results.append(result)
            print(summary(result), flush=True)
    finally:
        import ray

        ray.shutdown()  # before its spill folder under `work` goes
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    total = time.perf_counter() - began
    report = {"settings": overrides, "results": results, "total_s": round(total)}
    print(json.dumps(report, indent=2, default=float))
    print(f"total {total / 60:.1f} min for {len(results)} range(s)")


if __name__ == "__main__":
    main()
