"""Real 3D nodules through the whole pipeline: LIDC-IDRI crops, 5-fold patient-level CV.

    make bench-lidc        # = .venv/bin/python bench/real_lidc.py
    .venv/bin/python bench/real_lidc.py [--data ../shared/data/lidc-nodules]
        [--config configs/lidc.yaml] [--folds 5] [--only 0,1] [--set train.epochs=20] [--keep]

`lungcls.sources.volumes.import_volumes` writes the 727 NIfTI crops as DICOM CT series of one
inbox batch (pseudonymous patients, the nodule centre from each mask), and `ingest` stores
them, once. Then, for each of `--folds` outer folds of the patients (stratified, grouped by
patient, never by nodule), the batch's labels.csv assigns that fold's patients to test and
every other patient to train — an operator's relabelling, which `ingest` versions — and the
functions the `retrain` flow's tasks call run with the settings of `configs/lidc.yaml`:
`build_dataset` (its own dataset name per fold), `train_model` (the pipeline's own inner
cross-validation on the training patients: early stopping and the operating point from
out-of-fold scores), `evaluate_model` and `promote`. Nothing is chosen on a test fold.

Printed per fold and pooled over the five test folds (every nodule is tested once, by the
model of the fold that held its patient out): ROC AUC with its patient-bootstrap 95 % CI,
sensitivity and specificity at the operating point the pipeline chose itself, the
diameter-only AUC on the same samples (`nodule_diameter_mm`, measured at reading time) and a
paired patient bootstrap of AUC(model) - AUC(diameter); the same on the clean subset (median
reader rating <= 2 vs >= 4). Work goes to `.lungcls-work/bench-lidc/` (removed unless --keep).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from bench_settings import add_set_option, bench_settings, parsed_overrides
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedGroupKFold

from lungcls.config import Settings
from lungcls.dataset.build import build_dataset
from lungcls.evaluate.bootstrap import bootstrap_intervals, paired_auc_difference
from lungcls.evaluate.evaluation import evaluate_model
from lungcls.ingest.deid import pseudonym
from lungcls.ingest.run import ingest
from lungcls.io.storage import Storage
from lungcls.registry.promote import promote
from lungcls.sources.volumes import VolumeImportOptions, import_volumes
from lungcls.train.trainer import train_model

BATCH = "lidc-nodules"
KEY = "bench-lidc-pseudonym-key-0123456789"
ROUNDS = 2000


def reader_medians(data: Path) -> dict[str, float | None]:
    """Source file -> median of the radiologists' malignancy ratings (None: none given)."""
    with open(data / "labels.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    return {
        row["file"]: statistics.median(map(float, ratings)) if ratings else None
        for row in rows
        for ratings in [row["reader_malignancy"].split()]
    }


def outer_folds(imported: list[Any], folds: int) -> dict[str, int]:
    """Pseudonymous patient -> outer fold, stratified by nodule label, grouped by patient."""
    patients = [v.patient for v in imported]
    labels = [v.label for v in imported]
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=0)
    fold_of = {}
    for fold, (_, test) in enumerate(splitter.split(patients, labels, patients)):
        for index in test:
            fold_of[patients[index]] = fold
    return fold_of


def assign_test_fold(storage: Storage, inbox: str, fold_of: dict[str, int], fold: int) -> None:
    """Rewrite the batch's labels.csv: the fold's patients are test, all others train."""
    path = f"{inbox}/{BATCH}/labels.csv"
    rows = list(csv.DictReader(io.StringIO(storage.read_bytes(path).decode())))
    columns = list(rows[0])
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(r for r in rows if r["series_uid"])  # the series rows, as imported
    for patient in sorted(fold_of):
        # A patient row's label only applies to series without a row; every series has one.
        split = "test" if fold_of[patient] == fold else "train"
        writer.writerow(
            {**dict.fromkeys(columns, ""), "patient_id": patient, "label": 0, "split": split}
        )
    storage.write_atomic(path, out.getvalue().encode())


def auc_with_ci(frame: pd.DataFrame, column: str) -> dict[str, Any]:
    labels, scores = frame["label"].to_numpy(), frame[column].to_numpy(dtype=float)
    low, high = bootstrap_intervals(labels, scores, frame["patient_id"].to_numpy(), 0.5, ROUNDS, 0)[
        "roc_auc"
    ]
    return {"auc": float(roc_auc_score(labels, scores)), "ci95": [low, high]}


def compare_with_diameter(frame: pd.DataFrame) -> dict[str, Any]:
    """Model AUC, diameter AUC, their paired patient-bootstrap difference, and sensitivity /
    specificity at each sample's own fold operating point (`decision`)."""
    labels = frame["label"].to_numpy()
    diameter = frame["nodule_diameter_mm"].to_numpy(dtype=float)
    diameter = diameter / diameter.max()  # a score in [0, 1]: the larger, the more suspicious
    difference = paired_auc_difference(
        labels, frame["score"].to_numpy(), diameter, frame["patient_id"].to_numpy(), ROUNDS, 0
    )
    decision = frame["decision"].to_numpy()
    positives, negatives = labels == 1, labels == 0
    return {
        "samples": len(frame),
        "positives": int(positives.sum()),
        "patients": int(frame["patient_id"].nunique()),
        "model": auc_with_ci(frame, "score"),
        "diameter": auc_with_ci(frame.assign(d=diameter), "d"),
        "model_minus_diameter": {"value": difference[0], "ci95": [difference[1], difference[2]]},
        "sensitivity": float(decision[positives].mean()) if positives.any() else None,
        "specificity": float(1 - decision[negatives].mean()) if negatives.any() else None,
    }


def run_fold(
    settings: Settings, fold: int, fold_of: dict[str, int], medians: dict[str, float]
) -> tuple[dict[str, Any], pd.DataFrame]:
    storage = Storage.from_settings(settings)
    timings: dict[str, float] = {}

    def timed(name: str, fn, *args, **kwargs):
        start = time.perf_counter()
        value = fn(*args, **kwargs)
        timings[name] = round(time.perf_counter() - start, 1)
        return value

    assign_test_fold(storage, settings.ingest.inbox, fold_of, fold)
    timed("labels_s", ingest, settings, progress=False)
    fold_settings = settings.model_copy(
        update={
            "dataset": settings.dataset.model_copy(update={"name": f"lidc-fold{fold}"}),
            "model": settings.model.model_copy(update={"name": f"lidc-cnn-fold{fold}"}),
        }
    )
    built = timed("build_s", build_dataset, fold_settings, progress=False)
    trained = timed("train_s", train_model, fold_settings)
    evaluation = timed("evaluate_s", evaluate_model, fold_settings, version=trained.model_version)
    decision = timed("promote_s", promote, fold_settings, trained.model_version)
    report = evaluation.report
    scores = evaluation.scores
    test = scores[scores["split"] == "test"].copy()
    test["decision"] = (test["score"] >= report.operating_point.threshold).astype(int)
    test["fold"] = fold
    test["reader_median"] = test["series_id"].map(medians)
    at_op = report.metrics.at_operating_point
    cv = trained.cross_validation
    result = {
        "fold": fold,
        "counts": built.counts,
        **compare_with_diameter(test),
        "threshold": report.operating_point.threshold,
        "pipeline_sensitivity": at_op.values["sensitivity"],
        "pipeline_specificity": at_op.values["specificity"],
        "inner_oof_auc": cv.oof_auc if cv else None,
        "inner_fold_aucs": [f.val_auc for f in cv.folds] if cv else None,
        "promotion": decision.outcome,
        "seconds": timings,
    }
    return result, test


def fold_line(result: dict[str, Any]) -> str:
    m, d, diff = result["model"], result["diameter"], result["model_minus_diameter"]
    label = f"fold {result['fold'] + 1}" if "fold" in result else "pooled"
    return (
        f"{label}: {result['samples']} nodules ({result['positives']} malignant), "
        f"{result['patients']} patients | AUC {m['auc']:.3f} ({m['ci95'][0]:.3f}-"
        f"{m['ci95'][1]:.3f}) | diameter {d['auc']:.3f} | model - diameter "
        f"{diff['value']:+.3f} ({diff['ci95'][0]:+.3f} to {diff['ci95'][1]:+.3f}) | at the "
        f"pipeline's operating point: sensitivity {result['sensitivity']:.3f}, specificity "
        f"{result['specificity']:.3f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="../shared/data/lidc-nodules")
    parser.add_argument("--config", default="configs/lidc.yaml")
    parser.add_argument("--folds", type=int, default=5, help="outer folds (test sets)")
    parser.add_argument("--only", default=None, help="run these outer folds only, e.g. 0,1")
    parser.add_argument("--keep", action="store_true", help="keep the root and reports")
    add_set_option(parser, "train.epochs=20")
    args = parser.parse_args()
    overrides = parsed_overrides(args.set)
    data = Path(args.data).resolve()
    work = Path(".lungcls-work/bench-lidc").resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    settings = bench_settings(work / "root", work / "state", args.config, KEY, overrides)
    storage = Storage.from_settings(settings)
    began = time.perf_counter()
    try:
        imported = import_volumes(
            data, storage, BATCH, VolumeImportOptions(), KEY.encode(), settings.ingest.inbox
        )
        ingested = ingest(settings, progress=False)
        prepared = time.perf_counter() - began
        print(
            f"imported {imported.volumes} volumes of {imported.patients} patients "
            f"({len(imported.refused)} refused), ingested {ingested.series_ingested} series "
            f"in {prepared:.0f} s",
            flush=True,
        )
        ratings = reader_medians(data)
        medians = {
            pseudonym(KEY.encode(), "series", v.series_uid): ratings[v.file]
            for v in imported.imported
        }
        fold_of = outer_folds(imported.imported, args.folds)
        chosen = range(args.folds) if args.only is None else [int(f) for f in args.only.split(",")]
        results, tests = [], []
        for fold in chosen:
            result, test = run_fold(settings, fold, fold_of, medians)
            results.append(result)
            tests.append(test)
            print(fold_line(result), f"| {sum(result['seconds'].values()):.0f} s", flush=True)
        pooled_frame = pd.concat(tests, ignore_index=True)
        pooled = compare_with_diameter(pooled_frame)
        clean_frame = pooled_frame[
            (pooled_frame["reader_median"] <= 2) | (pooled_frame["reader_median"] >= 4)
        ]
        clean = compare_with_diameter(clean_frame)
        print(fold_line(pooled))
        print("clean subset (median rating <= 2 vs >= 4):", fold_line(clean).split(": ", 1)[1])
    finally:
        import ray

        ray.shutdown()  # before its spill folder under `work` goes
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    total = time.perf_counter() - began
    summary = {
        "config": args.config,
        "overrides": overrides,
        "folds": results,
        "pooled": pooled,
        "clean_subset": clean,
        "fold_auc_spread": float(np.ptp([r["model"]["auc"] for r in results])),
        "total_s": round(total),
    }
    print(json.dumps(summary, indent=2, default=float))
    print(f"total {total / 60:.1f} min for {len(results)} fold(s)")


if __name__ == "__main__":
    main()
