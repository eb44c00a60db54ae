"""Prospective monitoring on real CT slices: IQ-OTH/NCCD arriving as batches by case number.

    .venv/bin/python bench/monitor_real.py [--data ../shared/data/iq-othnccd]
        [--config configs/iq-othnccd.yaml] [--trained 0.6] [--batches 2] [--set K=V]
        [--work .lungcls-work/bench-monitor] [--reuse]

The set is cut by each class's case numbers, in the order `bench/real_iqothnccd.py` uses
(groups of 10 consecutive numbers per class = one pseudonymous patient; a range A:B takes
the groups from share A to share B of each class's groups). Pixel-identical duplicates are
dropped over the whole set first, so no image sits in two batches.

1. The first `--trained` share (0.6) is one inbox batch, imported as `make bench-real`
   imports it (`import_images`: `--test-range 0.8:1` of the batch, `--val-fraction 0.15`,
   gap groups), then `ingest`, `build_dataset`, `train_model` (the config's settings: the
   2D CNN with its 5-fold cross-validation, whose out-of-fold scores choose the operating
   point and calibration), `evaluate_model` and `promote`: the champion.
2. The rest, cut into `--batches` contiguous ranges, arrives one batch after another, each
   imported as a user would import a new labelled batch (no split column: the pipeline
   would split it when it builds), then `ingest` and `monitor_ingested` on that ingest
   run: what the `retrain` flow's `monitor` subflow does before a batch joins training.
   Nothing is retrained between batches (each retraining is 5 trainings): every batch is
   scored by the same champion, so the history shows how one model ages over the ranges.

Printed: the champion's own test figures, each batch's monitoring summary and drift report,
the history as `lungcls monitor` prints it (the real CLI, on a config written for the
root), and a summary table: range, samples, AUC [CI], sensitivity, specificity, ECE,
alerts, drifted features with their effects (and the largest effects when none drifted).
Everything stays under `--work` (a fresh root each run; `report/` holds the history plot
and table and each batch's drift HTML, named by range). `--reuse` keeps the root of an
earlier run whose champion was not promoted (e.g. to gate it again with `--set
promotion.max_ece=…`): the import, ingest, build and training found done are not redone;
`--champion-only` stops once the champion is promoted, for a later `--reuse` run.

Why 2 batches by default: a 10 % range holds 4 malignant and 4 negative pseudonymous
patients, fewer than `evaluation.min_patients_per_class` (5), so its AUC is not estimable;
a fifth holds 8 of each (and matches the fifths of `make bench-real --sweep`).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from bench_settings import add_set_option, bench_settings, parsed_overrides

from lungcls.config import Settings
from lungcls.dataset.build import build_dataset
from lungcls.evaluate.evaluation import evaluate_model
from lungcls.ingest.run import ingest
from lungcls.io.storage import Storage
from lungcls.monitor.batch_evaluation import BatchEvaluation, monitoring_dir
from lungcls.monitor.history import write_history
from lungcls.monitor.report import DriftReport
from lungcls.monitor.run import monitor_ingested
from lungcls.pipeline import candidate_for
from lungcls.registry.aliases import read_alias
from lungcls.registry.promote import CHAMPION, promote
from lungcls.sources.images import ImportOptions, import_images
from lungcls.sources.images.folders import SourceImage, read_class_folders
from lungcls.train.trainer import train_model

REPO = Path(__file__).resolve().parents[1]
KEY = "bench-monitor-pseudonym-key-0123456789"
POSITIVE = ("malignant",)
GROUP_SIZE = 10
FOV_MM = 360.0
TRAINED_SPLITS: dict[str, Any] = {"test_range": (0.8, 1.0), "val_fraction": 0.15}  # as bench-real

Range = tuple[float, float]


def range_label(share: Range) -> str:
    return f"{share[0]:.2f}-{share[1]:.2f}"


def cut_by_case_number(
    images: dict[str, list[SourceImage]], shares: list[Range]
) -> list[dict[str, list[SourceImage]]]:
    """Each class's images in `shares` of its patient groups, in case-number order, as
    `lungcls.sources.images.patients` groups and splits them (a group of `GROUP_SIZE`
    numbers counted from the class's first; share A:B = groups round(A n) to round(B n))."""
    cuts: list[dict[str, list[SourceImage]]] = [{} for _ in shares]
    for class_name, members in images.items():
        first = members[0].number
        indices = sorted({(image.number - first) // GROUP_SIZE for image in members})
        position = {index: p for p, index in enumerate(indices)}
        n = len(indices)
        for cut, (start, end) in zip(cuts, shares, strict=True):
            low, high = round(start * n), round(end * n)
            cut[class_name] = [
                image
                for image in members
                if low <= position[(image.number - first) // GROUP_SIZE] < high
            ]
    return cuts


def write_source(data: Path, cut: dict[str, list[SourceImage]], folder: Path) -> None:
    """The images of one cut as class folders: what a site would send as one batch."""
    for class_name, members in cut.items():
        (folder / class_name).mkdir(parents=True, exist_ok=True)
        for image in members:
            shutil.copyfile(data / image.rel, folder / image.rel)


def timed(timings: dict[str, float], name: str, fn, *args, **kwargs):
    start = time.perf_counter()
    value = fn(*args, **kwargs)
    timings[name] = round(time.perf_counter() - start, 1)
    return value


def train_champion(
    settings: Settings, source: Path, batch: str, timings: dict[str, float]
) -> dict[str, Any]:
    """Batch 1 through import, ingest, build, train, evaluate and promote (each skipped
    when an earlier run under --reuse finished it, as the retrain flow skips them)."""
    storage = Storage.from_settings(settings)
    options = ImportOptions(POSITIVE, GROUP_SIZE, fov_mm=FOV_MM, **TRAINED_SPLITS)
    imported = timed(timings, "import_s", import_images, str(source), storage, batch, options)
    timed(timings, "ingest_s", ingest, settings, progress=False)
    built = timed(timings, "build_s", build_dataset, settings, progress=False)
    version = candidate_for(settings, built.ref)
    if version is None:
        version = timed(timings, "train_s", train_model, settings).model_version
    evaluation = timed(timings, "evaluate_s", evaluate_model, settings, version=version)
    decision = timed(timings, "promote_s", promote, settings, version)
    report = evaluation.report
    at_op = report.metrics.at_operating_point
    return {
        "images": imported.images,
        "refused_at_import": len(imported.quarantined),
        "splits": built.counts,
        "model_version": version,
        "test_patients": report.splits["test"].patients,
        "auc": at_op.values.get("roc_auc"),
        "auc_ci95": at_op.ci95.get("roc_auc"),
        "sensitivity": at_op.values.get("sensitivity"),
        "specificity": at_op.values.get("specificity"),
        "ece": at_op.values.get("ece"),
        "threshold": report.operating_point.threshold,
        "chosen_on": report.operating_point.chosen_on,
        "promotion": decision.outcome,
        "failed_gates": [f"{g.name}: {g.detail}" for g in decision.failed_gates],
        "report": storage.url(f"{evaluation.folder}/report.html"),
    }


def monitor_range(
    settings: Settings, source: Path, batch: str, label: str, report_dir: Path
) -> dict[str, Any]:
    """One later range as a new labelled batch: import, ingest, then monitoring of that
    ingest run, as the retrain flow's monitor subflow runs it."""
    storage = Storage.from_settings(settings)
    options = ImportOptions(positive=POSITIVE, group_size=GROUP_SIZE, fov_mm=FOV_MM)
    started = time.perf_counter()
    imported = import_images(str(source), storage, batch, options)
    ingested = ingest(settings, progress=False)
    summary = monitor_ingested(settings, ingested.run_id)
    seconds = round(time.perf_counter() - started, 1)
    (monitored,) = summary.batches or [None]
    if monitored is None:
        raise SystemExit(f"range {label}: nothing monitored ({summary.note})")
    print(f"\n== range {label}: {imported.images} images; monitoring ({seconds} s)")
    print("\n".join(summary.summary_lines()))
    row = BatchEvaluation.load(storage, monitored.evaluation) if monitored.evaluation else None
    drift = None
    if monitored.drift:
        drift = DriftReport.load(storage, f"{monitored.drift}/drift.json")
        html = storage.read_bytes(f"{monitored.drift}/drift.html")
        (report_dir / f"drift-{label}.html").write_bytes(html)
        print("\n".join(drift.summary_lines()))
    if row is not None:
        print("\n".join(row.summary_lines()))
    return {"range": label, "images": imported.images, "row": row, "drift": drift, "s": seconds}


def largest_effects(drift: DriftReport, count: int = 3) -> str:
    """The features with the largest effects, drifted or not: what differs most."""
    ranked = sorted(drift.features, key=lambda f: -(f.effect or 0.0))[:count]
    return ", ".join(
        f"{f.name} {f.effect_name} {f.effect:.2f} (p adj {f.p_adjusted:.2g})"
        for f in ranked
        if f.effect is not None and f.p_adjusted is not None
    )


def summary_table(champion: dict[str, Any], results: list[dict[str, Any]], trained: Range) -> str:
    """Markdown: the champion's own test split, then one line per monitored range."""
    test = f"{trained[0] + 0.8 * (trained[1] - trained[0]):.2f}-{trained[1]:.2f}"
    low, high = champion["auc_ci95"] or (None, None)
    split = champion["splits"]["test"]
    lines = [
        "| range | samples (pos/neg) | patients | ROC AUC [95% CI] | sensitivity | specificity "
        "| ECE | alerts | drifted features (effect) | largest effects |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        f"| {test} (champion's test split) | {sum(split.values())} ({split['1']}/{split['0']}) | "
        f"{champion['test_patients']} | "
        f"{champion['auc']:.3f} [{low:.3f}–{high:.3f}] | {champion['sensitivity']:.3f} | "
        f"{champion['specificity']:.3f} | {champion['ece']:.3f} | | | |",
    ]
    for result in results:
        row, drift = result["row"], result["drift"]
        if row is None:
            lines.append(f"| {result['range']} | {result['images']} | | not scored | | | | | | |")
            continue
        c = row.counts
        drifted = (
            ", ".join(f"{f.name} ({f.effect_name} {f.effect:.2f})" for f in drift.drifted_features)
            if drift
            else "no report"
        )
        lines.append(
            f"| {result['range']} | {c.samples} ({c.positives}/{c.negatives}) | {c.patients} | "
            f"{row.roc_auc.text()} | {row.sensitivity.text()} | {row.specificity.text()} | "
            f"{row.ece.text()} | {'; '.join(row.alerts) or 'none'} | {drifted or 'none'} | "
            f"{largest_effects(drift) if drift else ''} |"
        )
    return "\n".join(lines)


def print_history_with_cli(settings: Settings, work: Path) -> None:
    """`lungcls monitor` as a user runs it, on a config file for this root."""
    config = work / "lungcls.yaml"
    config.write_text(yaml.safe_dump({**settings.masked(), "pseudonym_key": KEY}))
    command = [sys.executable, "-m", "lungcls.cli", "--config", str(config), "monitor"]
    print("\n$ lungcls --config <work>/lungcls.yaml monitor", flush=True)
    subprocess.run(command, check=True, cwd=REPO)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="../shared/data/iq-othnccd", help="relative to repo")
    parser.add_argument("--config", default="configs/iq-othnccd.yaml")
    parser.add_argument("--trained", type=float, default=0.6, help="share trained on first")
    parser.add_argument("--batches", type=int, default=2, help="ranges the rest arrives in")
    parser.add_argument("--work", default=".lungcls-work/bench-monitor", help="relative to repo")
    parser.add_argument("--reuse", action="store_true", help="keep an earlier run's root")
    parser.add_argument(
        "--champion-only", action="store_true", help="stop once the champion is promoted"
    )
    add_set_option(parser, "promotion.max_ece=0.25")
    args = parser.parse_args()
    data = (REPO / args.data).resolve()  # an absolute --data stays as it is
    work = (REPO / args.work).resolve()
    if not args.reuse:
        shutil.rmtree(work, ignore_errors=True)
    report_dir = work / "report"
    report_dir.mkdir(parents=True, exist_ok=True)
    step = (1.0 - args.trained) / args.batches
    later = [(args.trained + k * step, args.trained + (k + 1) * step) for k in range(args.batches)]
    shares = [(0.0, args.trained), *later]
    settings = bench_settings(
        work / "root", work / "state", str(REPO / args.config), KEY, parsed_overrides(args.set)
    )
    storage = Storage.from_settings(settings)
    began = time.perf_counter()
    try:
        images, refused = read_class_folders(Storage(str(data)), POSITIVE)
        cuts = cut_by_case_number(images, shares)
        batches = [f"cases-{range_label(s)}" for s in shares]
        for cut, batch in zip(cuts, batches, strict=True):
            write_source(data, cut, work / "sources" / batch)
        print(f"{sum(map(len, images.values()))} images kept of the set ({len(refused)} refused)")
        for share, cut in zip(shares, cuts, strict=True):
            counts = ", ".join(f"{name} {len(members)}" for name, members in cut.items())
            print(f"  range {range_label(share)}: {counts}")
        if any(storage.exists(f"inbox/{batch}/labels.csv") for batch in batches[1:]):
            raise SystemExit(f"{work} was monitored before: run without --reuse")

        timings: dict[str, float] = {}
        champion = train_champion(settings, work / "sources" / batches[0], batches[0], timings)
        print(f"\n== champion: trained on range {range_label(shares[0])}")
        print(json.dumps({**champion, "seconds": timings}, indent=2, default=float))
        if read_alias(storage, settings.model.name, CHAMPION).version is None:
            raise SystemExit(
                "the gate rejected the model, so there is no champion to monitor with: "
                f"{'; '.join(champion['failed_gates'])}. Rerun with --reuse and --set to "
                "relax the gate (say so with the figures), or change the training settings."
            )
        if args.champion_only:
            print(
                f"champion ready in {(time.perf_counter() - began) / 60:.1f} min; --reuse goes on"
            )
            return
        results = [
            monitor_range(settings, work / "sources" / batch, batch, range_label(s), report_dir)
            for s, batch in zip(later, batches[1:], strict=True)
        ]
        print_history_with_cli(settings, work)
        urls = write_history(storage, settings.model.name)
        for name in urls:
            path = f"{monitoring_dir(settings.model.name)}/{name}"
            (report_dir / name).write_bytes(storage.read_bytes(path))
        total = time.perf_counter() - began
        print("\n" + summary_table(champion, results, shares[0]))
        print(f"\nhistory plot, table and drift reports: {report_dir}")
        print(f"total {total / 60:.1f} min (training {timings.get('train_s', 0) / 60:.1f} min)")
    finally:
        import ray

        ray.shutdown()


if __name__ == "__main__":
    main()
