"""Prediction throughput: a batch of DICOM archives end to end vs the forward pass alone.

    .venv/bin/python bench/predict.py [--scans 80] [--steps 60] [--repeats 2]

Prepares one root (in-process): `--scans` synthetic series (default geometry, 48x128x128,
seed 1) in inbox batch `b1`, ingest, a dataset version (default preprocessing, 48^3), a
model trained without Ray by `tests.support.train_in_process` (full batch, AdamW, `--steps`)
and promoted to champion by `promote` with the gate lowered (see RELAXED_GATE; the JSON keeps
the gate values). Then prints, from one run:
- (a) `predict_batch(settings, "b1")` end to end (load the champion, read the archives,
  decode DICOM, checks, HU, preprocess, forward passes of up to 32 series, write Parquet and
  CSV), best of `--repeats`: with the inputs prepared as Ray tasks on a local Ray of
  `--ray-cpus` CPUs (`ray.executor: ray`, as deployed; Ray's start is timed apart, since a
  deployment's Ray is already up), and in this process (`ray.executor: local`);
- stages of the in-process run, from a second pass over the same archives with the same
  calls timed one by one: `decode_archive` (read + decode + checks + HU), `Scorer.tensor`
  (preprocess + float16 rounding), `Scorer.score([tensor])` (forward, batch of 1), each as a
  share of that pass (which scores one series at a time, so it takes longer than the run);
- (b) `Scorer.score` alone on the tensors of that pass (preloaded), batches of 1 and of 32:
  series/s, best of 3 passes;
- the ratios (a) / (b); the goal is (a) >= 0.5 of (b) at batch 32 (issue 16).
Prints JSON and a one-line summary. Temporary data goes under `.lungcls-work/` and is removed.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import ray
import torch
from goals import Goal, record_goals

from lungcls.config import RaySettings, Settings
from lungcls.dataset.build import build_dataset
from lungcls.ingest.archive import discover_archives
from lungcls.ingest.decode import decode_archive
from lungcls.ingest.deid import pseudonym_key
from lungcls.ingest.labels import parse_labels
from lungcls.ingest.run import ingest
from lungcls.io.compute import ensure_ray
from lungcls.io.storage import Storage
from lungcls.predict.batch import Scorer, predict_batch
from lungcls.predict.prepare import aim
from lungcls.registry.promote import promote
from lungcls.sources.synth import SynthOptions, synth_batch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.support import train_in_process

# The default gate (test sensitivity >= 0.85, ECE <= 0.2, AUC lower CI >= 0.8) rejected models
# trained 60, 120 and 240 steps on this small split (~12 test samples); throughput does not
# depend on model quality, so the bench lowers it and reports the gate values instead.
RELAXED_GATE = {"min_sensitivity": 0.0, "max_ece": 1.0, "min_auc_lower_ci": 0.0}


def champion(settings: Settings, steps: int) -> tuple[int, dict[str, float | None]]:
    """Train, promote (with the relaxed gate), return the version and its gate values."""
    version = train_in_process(settings, steps=steps, seed=0)
    decision = promote(settings, version)
    assert decision.outcome == "promoted", [g.detail for g in decision.failed_gates]
    return version, {g.name: g.value for g in decision.gates}


def stages(settings: Settings, scorer: Scorer) -> tuple[dict[str, float], list[np.ndarray], int]:
    """The calls predict_source makes, timed one by one; also the tensors and archive count."""
    storage = Storage.from_settings(settings)
    key = pseudonym_key(settings, storage)
    labels = parse_labels(storage.read_text(f"{settings.ingest.inbox}/b1/labels.csv"), key)
    archives = [a for a in discover_archives(storage, settings.ingest.inbox)[0] if a.batch == "b1"]
    seconds = {"decode_archive": 0.0, "preprocess": 0.0, "forward_batch1": 0.0}
    tensors: list[np.ndarray] = []
    for ref in archives:
        start = time.perf_counter()
        decoded = decode_archive(storage, ref, settings.ingest, key)
        seconds["decode_archive"] += time.perf_counter() - start
        for volume in decoded.volumes:
            start = time.perf_counter()
            tensor = scorer.tensor(volume, aim(volume, key, None, labels)[0])
            seconds["preprocess"] += time.perf_counter() - start
            start = time.perf_counter()
            scorer.score([tensor])
            seconds["forward_batch1"] += time.perf_counter() - start
            tensors.append(tensor)
    return seconds, tensors, len(archives)


@dataclass
class Runs:
    seconds: list[float]
    predictions: list


def timed_runs(settings: Settings, repeats: int) -> Runs:
    """`predict_batch` end to end, `repeats` times (the best counts: the others warm up)."""
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        predictions, _ = predict_batch(settings, "b1", progress=False)
        seconds.append(time.perf_counter() - start)
    return Runs(seconds, predictions)


def forward_rate(scorer: Scorer, tensors: list[np.ndarray], batch: int) -> float:
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for i in range(0, len(tensors), batch):
            scorer.score(tensors[i : i + batch])
        best = min(best, time.perf_counter() - start)
    return len(tensors) / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scans", type=int, default=80)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--ray-cpus", type=int, default=2, help="CPUs of the local Ray")
    args = parser.parse_args()
    Path(".lungcls-work").mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bench-predict-", dir=".lungcls-work") as tmp:
        settings = Settings(
            root=f"{tmp}/root",
            pseudonym_key="bench-pseudonym-key-0123456789",
            work_dir=f"{tmp}/work",
            ray={"executor": "local"},
            promotion=RELAXED_GATE,
            # ~12 test samples: fewer patients of a class than an interval needs (5), which
            # the gate refuses as test_split_too_small; throughput does not depend on it.
            evaluation={"min_patients_per_class": 1},
        )
        print(f"writing, ingesting and building {args.scans} synthetic series…")
        synth_batch(Storage.from_settings(settings), "b1", SynthOptions(scans=args.scans, seed=1))
        ingest(settings, progress=False)
        build_dataset(settings, progress=False)
        start = time.perf_counter()
        version, gates = champion(settings, args.steps)
        print(f"champion v{version} ({args.steps} steps) in {time.perf_counter() - start:.0f} s")
        in_process = timed_runs(settings, args.repeats)
        fanned = settings.model_copy(
            update={"ray": RaySettings(executor="ray", num_cpus=args.ray_cpus)}
        )
        start = time.perf_counter()
        ensure_ray(fanned)  # a deployment's Ray is up already: its start is reported apart
        ray_start_s = time.perf_counter() - start
        try:
            batch_runs = timed_runs(fanned, args.repeats)
        finally:
            ray.shutdown()
        predictions = batch_runs.predictions
        series = len(predictions)
        scorer = Scorer.load(settings, None)
        stage_s, tensors, archives = stages(settings, scorer)
        assert len(tensors) == series, (len(tensors), series)
        rate1 = forward_rate(scorer, tensors, 1)
        rate32 = forward_rate(scorer, tensors, 32)
    in_process_s = min(in_process.seconds)
    fanned_s = min(batch_runs.seconds)
    end_to_end = series / fanned_s
    report = {
        "series": series,
        "archives": archives,
        "torch_threads": torch.get_num_threads(),
        "ray_cpus": args.ray_cpus,
        "model_version": version,
        "train_steps": args.steps,
        "gate_values": {k: None if v is None else round(v, 3) for k, v in gates.items()},
        "local_ray_start_s": round(ray_start_s, 2),
        "predict_batch_ray_s": [round(s, 2) for s in batch_runs.seconds],
        "predict_batch_in_process_s": [round(s, 2) for s in in_process.seconds],
        "predict_batch_series_per_s": round(end_to_end, 2),
        "predict_batch_in_process_series_per_s": round(series / in_process_s, 2),
        "forward_batch1_series_per_s": round(rate1, 1),
        "forward_batch32_series_per_s": round(rate32, 1),
        "ratio_end_to_end_vs_batch1": round(end_to_end / rate1, 3),
        "ratio_end_to_end_vs_batch32": round(end_to_end / rate32, 3),
        "speedup_ray_vs_in_process": round(in_process_s / fanned_s, 2),
        "stage_s_one_by_one": {k: round(v, 3) for k, v in stage_s.items()},
        "stage_share_one_by_one": {
            k: round(v / sum(stage_s.values()), 3) for k, v in stage_s.items()
        },
        "positives": sum(p.decision == "positive" for p in predictions),
    }
    print(json.dumps(report, indent=2))
    record_goals(
        "predict",
        [
            Goal(
                "batch prediction vs forward pass alone at batch 32", end_to_end / rate32, ">=", 0.5
            )
        ],
    )
    share = report["stage_share_one_by_one"]
    print(
        f"predict_batch over a local Ray of {args.ray_cpus} CPUs: {end_to_end:.1f} series/s "
        f"(in process {series / in_process_s:.1f}) vs forward alone {rate1:.0f} (batch 1) / "
        f"{rate32:.0f} (batch 32) series/s: ratio {end_to_end / rate1:.2f} / "
        f"{end_to_end / rate32:.2f} (goal >= 0.5 at batch 32); series one by one in process: "
        f"decode {share['decode_archive']:.0%}, preprocess {share['preprocess']:.0%}, forward "
        f"{share['forward_batch1']:.0%} (batch 1)"
    )


if __name__ == "__main__":
    main()
