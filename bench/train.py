"""Training throughput on a local Ray: 1 worker vs 2 workers (and a GPU when there is one).

    .venv/bin/python bench/train.py [--scans 80] [--shape 48] [--epochs 6] [--device-info]

Builds one dataset version (in-process) from `--scans` synthetic series (default geometry,
48x128x128), default preprocessing with a `--shape`^3 patch, starts one local Ray with 2
logical CPUs (`ensure_ray`), then trains the default model (`train_model`) for `--epochs`
epochs with 1 worker (1 CPU) and with 2 workers (0.5 CPU each, the default). For each run
it prints, from the per-epoch history, the median over epochs after the first (the first
includes start-up) of: training samples/s, the fraction of the training step time spent
waiting for the next batch (goal < 5 %; the first epoch's is printed separately) and
epoch seconds (train part only, validation excluded); plus peak RSS:
- driver: `ru_maxrss` of this process (RUSAGE_SELF), the peak since it started, so the
  second run's value covers both runs;
- Ray workers: a thread samples every 0.5 s, with psutil, the RSS of every descendant of
  this process (the Ray it started; other Ray clusters on the machine are left out) whose
  command line contains 'ray::': Train workers and controller, Ray Data actors and tasks,
  idle pooled workers, the dashboard and runtime-env agents; not raylet, GCS or the object
  store (plasma lives in raylet). It keeps the peak of the sum over those processes, the
  peak of the largest one, and which processes made up the peak sum. RSS counts the shared
  pages (object store, libraries) each process has touched, so the sum counts them more
  than once.
And the speed-up 2 workers / 1 worker. `--device-info` prints whether CUDA is available and
then also trains with `use_gpu='yes'`, 1 worker and `amp=True`, printing GPU samples/s
against the 1-worker CPU run (skipped, with a line saying so, without a GPU). Prints JSON
and a one-line summary, and records the data-wait goal of each run and the speed-up (goal:
2 workers faster than 1) for the summary table of `make bench` (`bench/goals.py`).
Temporary data goes under `.lungcls-work/` and is removed.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import tempfile
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import ray
import torch
from goals import Goal, record_goals

from lungcls.config import Settings
from lungcls.dataset.build import build_dataset
from lungcls.ingest.run import ingest
from lungcls.io.compute import ensure_ray
from lungcls.io.storage import Storage
from lungcls.sources.synth import SynthOptions, synth_batch
from lungcls.train.trainer import train_model

KEY = "bench-pseudonym-key-0123456789"
WAIT_GOAL = 0.05  # of the training step time, after the first epoch
# 2 workers on the 2 CPUs must at least beat 1 worker on one (no figure in the issue).
SPEEDUP_GOAL = 1.0


class RayRss:
    """Peak RSS of this process's descendants whose command line has 'ray::' (a thread)."""

    def __init__(self, every_s: float = 0.5) -> None:
        self.every_s = every_s
        self.peak_sum = 0
        self.peak_max = 0
        self.peak_count = 0
        self.peak_titles: dict[str, int] = {}  # process titles counted at the peak of the sum
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        import psutil  # Ray's vendored copy (ray/thirdparty_files): on sys.path once ray is

        sizes: list[int] = []
        titles: Counter[str] = Counter()
        for proc in psutil.Process().children(recursive=True):  # this Ray's, not others'
            try:
                cmdline, rss = " ".join(proc.cmdline()), proc.memory_info().rss
            except psutil.Error:  # exited meanwhile
                continue
            if "ray::" in cmdline:
                sizes.append(rss)
                titles[cmdline.split()[0]] += 1
        if sizes and sum(sizes) > self.peak_sum:
            self.peak_sum, self.peak_titles = sum(sizes), dict(titles)
        if sizes:
            self.peak_max = max(self.peak_max, max(sizes))
            self.peak_count = max(self.peak_count, len(sizes))

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.every_s)

    def __enter__(self) -> RayRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def make_settings(tmp: str, shape: int, **extra: Any) -> Settings:
    return Settings(
        root=f"{tmp}/root",
        pseudonym_key=KEY,
        work_dir=f"{tmp}/work",
        preprocess={"shape": (shape, shape, shape)},
        **extra,
    )


def train_run(tmp: str, args: argparse.Namespace, label: str, **train: Any) -> dict[str, Any]:
    """Train once with the given train settings; summarise its history and memory."""
    ray_settings = {"executor": "ray", "num_cpus": 2}
    # One training, not the cross-validation `train.folds` (default 5) runs before it: the
    # history measured is then that one run's.
    train = {"epochs": args.epochs, "folds": 1, **train}
    settings = make_settings(tmp, args.shape, ray=ray_settings, train=train)
    print(f"training: {label} ({args.epochs} epochs)…", flush=True)
    with RayRss() as rss:
        result = train_model(settings)
    history = result.history
    later = history[1:] or history
    return {
        "run": label,
        "workers": history[0].workers,
        "epochs": len(history),
        "samples_per_s": round(statistics.median(h.samples_per_s for h in later), 2),
        "data_wait_fraction": round(statistics.median(h.data_wait_fraction for h in later), 4),
        "data_wait_fraction_first_epoch": round(history[0].data_wait_fraction, 4),
        "epoch_seconds": round(statistics.median(h.epoch_seconds for h in later), 2),
        "first_epoch_seconds": round(history[0].epoch_seconds, 2),
        "run_seconds": round(result.seconds, 1),
        "best_val_auc": round(result.best_val_auc, 3),
        "driver_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "ray_workers_peak_rss_sum_mb": round(rss.peak_sum / 2**20),
        "ray_workers_peak_rss_max_mb": round(rss.peak_max / 2**20),
        "ray_workers_peak_count": rss.peak_count,
        "ray_processes_at_peak_sum": rss.peak_titles,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scans", type=int, default=80)
    parser.add_argument("--shape", type=int, default=48, help="patch edge (voxels at 1 mm)")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--device-info", action="store_true", help="CUDA info and a GPU run")
    args = parser.parse_args()
    cuda = torch.cuda.is_available()
    if args.device_info:
        name = torch.cuda.get_device_name(0) if cuda else "no GPU available: GPU run skipped"
        print(f"torch {torch.__version__}, CUDA available: {cuda} ({name})")

    Path(".lungcls-work").mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bench-train-", dir=".lungcls-work") as tmp:
        local = make_settings(tmp, args.shape, ray={"executor": "local"})
        print(f"writing, ingesting and building {args.scans} synthetic series…", flush=True)
        synth_batch(Storage.from_settings(local), "b1", SynthOptions(scans=args.scans, seed=1))
        ingest(local, progress=False)
        built = build_dataset(local, progress=False)
        ensure_ray(make_settings(tmp, args.shape, ray={"executor": "ray", "num_cpus": 2}))
        try:
            runs = [
                train_run(tmp, args, "1 worker x 1 CPU", num_workers=1, cpus_per_worker=1.0),
                train_run(tmp, args, "2 workers x 0.5 CPU", num_workers=2, cpus_per_worker=0.5),
            ]
            if args.device_info and cuda:
                gpu = {"num_workers": 1, "cpus_per_worker": 1.0, "use_gpu": "yes", "amp": True}
                runs.append(train_run(tmp, args, "GPU, 1 worker, amp", **gpu))
        finally:
            ray.shutdown()  # before its temp folder goes

    one, two = runs[0], runs[1]
    report: dict[str, Any] = {
        "dataset_counts": built.counts,
        "build_seconds": round(built.seconds, 1),
        "tensor_shape": [1, args.shape, args.shape, args.shape],
        "cuda_available": cuda,
        "runs": runs,
        "speedup_2_vs_1_workers": round(two["samples_per_s"] / one["samples_per_s"], 2),
    }
    if len(runs) > 2:
        report["gpu_vs_cpu_1_worker"] = round(runs[2]["samples_per_s"] / one["samples_per_s"], 2)
    print(json.dumps(report, indent=2))
    waits = ", ".join(
        f"{r['data_wait_fraction']:.1%} (first epoch {r['data_wait_fraction_first_epoch']:.1%})"
        for r in runs
    )
    met = all(r["data_wait_fraction"] < WAIT_GOAL for r in runs)
    gpu_text = (
        f"; GPU {runs[2]['samples_per_s']:.1f} samples/s = x{report['gpu_vs_cpu_1_worker']} "
        "the 1-worker CPU run"
        if len(runs) > 2
        else ""
    )
    print(
        f"1 worker {one['samples_per_s']:.1f} vs 2 workers {two['samples_per_s']:.1f} samples/s "
        f"(speed-up x{report['speedup_2_vs_1_workers']}); data wait {waits} "
        f"(goal < 5 % after the first epoch: {'reached' if met else 'NOT reached'}); "
        f"Ray workers peak RSS sum {one['ray_workers_peak_rss_sum_mb']} / "
        f"{two['ray_workers_peak_rss_sum_mb']} MB; driver {two['driver_peak_rss_mb']} MB"
        f"{gpu_text}"
    )
    wait_goals = [
        Goal(
            f"data wait, share of the step time after the first epoch, {r['run']}",
            100 * r["data_wait_fraction"],
            "<",
            100 * WAIT_GOAL,
            "%",
        )
        for r in runs
    ]
    speedup = Goal(
        "training samples/s, 2 workers / 1 worker",
        two["samples_per_s"] / one["samples_per_s"],
        ">",
        SPEEDUP_GOAL,
    )
    record_goals("train", [*wait_goals, speedup])


if __name__ == "__main__":
    main()
