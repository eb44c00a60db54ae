"""Cost per series and peak memory of ingest -> dataset build -> one training epoch, from
200 to 3,000 synthetic series (issue 16, "Scale").

    .venv/bin/python bench/scale.py [--sizes 200,1000,3000] [--slices 64] [--rows 256]
        [--executor ray] [--ray-cpus 2] [--synth-jobs 2] [--pool 16] [--render-all]
        [--work DIR] [--keep]

Each size runs on a fresh root of its own. Its inbox (batches of 100 series; timed, not a
stage) holds copies of `--pool` scans rendered once by lungcls's synthetic generator, each
with a fake identity and pixels of its own (`scale_inbox`; `--render-all`: `synth_batch`
renders every series, 4.5 times the CPU). Then `lungcls ingest`, `lungcls dataset build`
and `lungcls train` (the default model, `train.epochs: 1`,
`train.folds: 1`: one pass over the training split) run as real CLI processes, each with a
local Ray of its own (`--ray-cpus` CPUs, no dashboard). Per stage: wall seconds (process
start to exit: imports and Ray start-up included), seconds per series, and the peak of the
RSS summed over the process and all its descendants (Ray's GCS, raylet and workers), sampled
every 0.2 s; shared pages count in every process that maps them. Then `ingest` and `dataset
build` again on the unchanged inbox (they must find nothing new), as a share of the first.

Goals (`scale_report`, recorded for `bench/goals.py`): per stage, seconds per series, peak
RSS and (from three sizes on) the marginal seconds per series between consecutive sizes vary
by at most x1.2 across sizes; the rerun costs <= 3 % of the first ingest + build.

Before anything is written it reads the free disk space, measures the bytes one series takes
(inbox, series store, shards) on a 4-series probe, and refuses sizes that cannot fit.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml
from goals import record_goals
from scale_inbox import ScanPool, render_pool, write_scale_inbox
from scale_report import ProcessTree, goals, print_tables, spreads

from lungcls.io.storage import Storage
from lungcls.sources.synth import SynthOptions, synth_batch

REPO = Path(__file__).resolve().parents[1]
KEY = "bench-pseudonym-key-0123456789"
FOV_MM = 340.0  # in-plane field of view of every series, as bench/ingest.py writes them
SLICE_STEP_MM = 2.0
BATCH_SERIES = 100  # a size arrives as inbox batches (deliveries) of this many series
PROBE_SERIES = 4
SAMPLE_EVERY_S = 0.2
HEARTBEAT_S = 120.0
PARTS = ("inbox", "series", "datasets")  # root folders that grow with the series
DISK_MARGIN = 1.25
DISK_FIXED = 2 * 2**30  # Ray's logs, model checkpoints, the probe
MiB, GiB = 2**20, 2**30


class BenchError(RuntimeError):
    """A stage failed or did something the benchmark does not measure."""


@dataclass
class StageRun:
    stage: str
    seconds: float
    s_per_series: float
    peak_rss_mib: float
    processes_at_peak: int
    reported_s: float | None  # the command's own `seconds`, when its JSON has one


@dataclass(frozen=True)
class Root:
    """One size's folder: the storage root, the config every stage reads, the logs."""

    folder: Path
    series: int

    @property
    def root(self) -> Path:
        return self.folder / "root"

    @property
    def config(self) -> Path:
        return self.folder / "lungcls.yaml"

    def write_config(self, executor: str, ray_cpus: int, **sections: dict[str, object]) -> None:
        settings = {
            "root": str(self.root),
            "pseudonym_key": KEY,
            "ray": {"executor": executor, "num_cpus": ray_cpus, "dashboard": False},
            "train": {"epochs": 1, "folds": 1},
            **sections,
        }
        (self.folder / "logs").mkdir(parents=True, exist_ok=True)
        self.config.write_text(yaml.safe_dump(settings))

    def part_bytes(self) -> dict[str, int]:
        return {part: folder_bytes(self.root / part) for part in PARTS}


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def synth_options(args: argparse.Namespace, scans: int = 1, seed: int = 0) -> SynthOptions:
    """Square slices over the same field of view at any `--rows`."""
    spacing = {"pixel_spacing_mm": FOV_MM / args.rows, "slice_spacing_mm": SLICE_STEP_MM}
    grid = {"slices": args.slices, "rows": args.rows, "columns": args.rows}
    return SynthOptions(scans=scans, seed=seed, **grid, **spacing)


def write_inbox(root: Root, args: argparse.Namespace, pool: ScanPool | None) -> float:
    """The synthetic inbox as batches `b<n>` of 100 series (seed n); its seconds. Copies
    of `pool`'s scans (`scale_inbox`), archives `--synth-jobs` at once; with no pool
    (`--render-all`), `synth_batch` renders every series, batches `--synth-jobs` at once."""
    counts = [min(BATCH_SERIES, root.series - s) for s in range(0, root.series, BATCH_SERIES)]
    storage, jobs = Storage(str(root.root)), args.synth_jobs
    started = time.monotonic()
    if pool is not None:
        for n, count in enumerate(counts):
            write_scale_inbox(storage, f"b{n:03d}", count, synth_options(args), pool, n, jobs)
    else:
        with ProcessPoolExecutor(min(jobs, len(counts))) as workers:
            options = [synth_options(args, count, n) for n, count in enumerate(counts)]
            batches = [f"b{n:03d}" for n in range(len(counts))]
            written = workers.map(synth_batch, [storage] * len(counts), batches, options)
            assert sum(map(len, written)) == root.series
    return time.monotonic() - started


def stage_env(work: Path) -> dict[str, str]:
    """The stage's own work folder (so a Ray of its own); no settings or cluster from outside."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LUNGCLS_")}
    env.pop("RAY_ADDRESS", None)
    return {**env, "LUNGCLS_WORK_DIR": str(work), "PYTHONPATH": str(REPO)}


def run_stage(root: Root, stage: str, argv: list[str]) -> tuple[StageRun, dict[str, Any]]:
    """`lungcls --config <yaml> ARGV --json` as its own process group, its tree's RSS sampled;
    returns the measures and the command's JSON."""
    logs = root.folder / "logs"
    label = f"{len(list(logs.glob('*.out'))):02d}-{stage.replace(' ', '-')}"
    command = [sys.executable, "-m", "lungcls.cli", "--config", str(root.config), *argv, "--json"]
    print(f"[{root.series} series] {stage} …")
    out, err = logs / f"{label}.out", logs / f"{label}.err"
    heartbeat = time.monotonic() + HEARTBEAT_S
    with out.open("wb") as stdout, err.open("wb") as stderr:
        started = time.monotonic()
        popen = subprocess.Popen(
            command,
            cwd=REPO,
            env=stage_env(root.folder / f"work-{label}"),
            stdout=stdout,
            stderr=stderr,
            start_new_session=True,
        )
        tree = ProcessTree(popen.pid)
        try:
            while popen.poll() is None:
                tree.sample()
                if time.monotonic() > heartbeat:
                    heartbeat += HEARTBEAT_S
                    elapsed = time.monotonic() - started
                    print(f"    {stage}: {elapsed:.0f} s, RSS now {tree.now / MiB:.0f} MiB")
                time.sleep(SAMPLE_EVERY_S)
            seconds = time.monotonic() - started
        finally:
            tree.kill_leftovers()
            popen.wait()
    if popen.returncode != 0:
        tail = err.read_text()[-3000:]
        raise BenchError(f"{stage} exited {popen.returncode} (logs: {logs}); stderr ends:\n{tail}")
    result = last_json(out.read_text())
    reported = result.get("seconds")
    run = StageRun(stage, seconds, seconds / root.series, tree.peak / MiB, tree.at_peak, reported)
    print(
        f"    {stage}: {seconds:.1f} s ({run.s_per_series:.3f} s/series), peak RSS "
        f"{run.peak_rss_mib:.0f} MiB over {run.processes_at_peak} processes"
    )
    return run, result


def last_json(text: str) -> dict[str, Any]:
    """The JSON a `--json` command printed last (progress lines may come before it)."""
    start = 0 if text.startswith("{") else text.rindex("\n{") + 1
    return json.loads(text[start:])


def probe_bytes_per_series(
    work: Path, args: argparse.Namespace, pool: ScanPool | None
) -> dict[str, float]:
    """Bytes one series takes in each part of a root: a small batch ingested and built in
    process (no Ray); the build may leave a split with one class here."""
    probe = Root(work / "probe", PROBE_SERIES)
    probe.write_config("local", args.ray_cpus, dataset={"require_both_classes": False})
    write_inbox(probe, args, pool)
    run_stage(probe, "probe ingest", ["ingest"])
    run_stage(probe, "probe dataset build", ["dataset", "build"])
    per_series = {part: size / PROBE_SERIES for part, size in probe.part_bytes().items()}
    shutil.rmtree(probe.folder)
    return per_series


def check_disk(work: Path, per_series: dict[str, float], series: int, free: int) -> int:
    """The bytes `series` series need (with a margin); refuse when they exceed `free`."""
    need = int(series * sum(per_series.values()) * DISK_MARGIN + DISK_FIXED)
    if need > free:
        raise BenchError(
            f"{series} series need about {need / GiB:.1f} GiB under {work} "
            f"({sum(per_series.values()) / MiB:.1f} MiB a series, x{DISK_MARGIN} margin, "
            f"+{DISK_FIXED / GiB:.0f} GiB) but only {free / GiB:.1f} GiB are free: use fewer "
            "--sizes, smaller --slices/--rows, or --work on a larger disk"
        )
    return need


def run_size(
    work: Path, series: int, args: argparse.Namespace, pool: ScanPool | None
) -> dict[str, Any]:
    """Synth, the three stages and the rerun on a fresh root of `series` series."""
    root = Root(work / f"size-{series}", series)
    root.write_config(args.executor, args.ray_cpus)
    print(f"[{series} series] writing the synthetic inbox …")
    synth_s = write_inbox(root, args, pool)
    print(f"    synth (not a stage): {synth_s:.1f} s")
    ingest, ingested = run_stage(root, "ingest", ["ingest"])
    if ingested["series_ingested"] != series or ingested["series_quarantined"]:
        took, refused = ingested["series_ingested"], ingested["series_quarantined"]
        raise BenchError(f"ingest took {took} of {series} series, quarantined {refused}")
    build, built = run_stage(root, "dataset build", ["dataset", "build"])
    train, trained = run_stage(root, "train", ["train"])
    disk = root.part_bytes()
    again, reingested = run_stage(root, "rerun ingest", ["ingest"])
    rebuild, rebuilt = run_stage(root, "rerun dataset build", ["dataset", "build"])
    if reingested["archives_ingested"] or reingested["series_ingested"] or rebuilt["created"]:
        raise BenchError(f"the rerun on the unchanged inbox found new work (logs: {root.folder})")
    rerun_s = again.seconds + rebuild.seconds
    if not args.keep:
        shutil.rmtree(root.root)
    return {
        "series": series,
        "hu_gib": series * args.slices * args.rows**2 * 2 / GiB,
        "synth_s": synth_s,
        "stages": [asdict(ingest), asdict(build), asdict(train)],
        "samples": built["counts"],
        "train_epoch_s": trained["history"][0]["epoch_seconds"],
        "disk_bytes": disk,
        "rerun": {
            "ingest_s": again.seconds,
            "build_s": rebuild.seconds,
            "fraction": rerun_s / (ingest.seconds + build.seconds),
        },
    }


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="200,1000,3000", help="series per run, comma-separated")
    parser.add_argument("--slices", type=int, default=64)
    parser.add_argument("--rows", type=int, default=256, help="rows = columns of every slice")
    parser.add_argument("--executor", choices=["ray", "local"], default="ray")
    parser.add_argument("--ray-cpus", type=int, default=2, help="CPUs of each stage's Ray")
    parser.add_argument("--synth-jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--pool", type=int, default=16, help="scans rendered; series copy them")
    parser.add_argument("--render-all", action="store_true", help="synth_batch every series")
    parser.add_argument("--work", default=str(REPO / ".lungcls-work"), help="parent folder")
    parser.add_argument("--keep", action="store_true", help="keep the roots and the work folder")
    args = parser.parse_args()
    args.sizes = sorted(int(size) for size in args.sizes.split(","))
    if FOV_MM / args.rows > 5.0:  # contracts.max_pixel_spacing_mm
        parser.error(f"--rows {args.rows}: pixels of {FOV_MM / args.rows:.2f} mm; use >= 68")
    return args


def main() -> int:
    args = parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]  # progress lines
    geometry = f"{args.slices}x{args.rows}x{args.rows}"
    pool, started = None, time.monotonic()
    if not args.render_all:  # once for all sizes: the series of every size copy these scans
        pool = render_pool(synth_options(args), args.pool, jobs=args.synth_jobs)
    pool_s = time.monotonic() - started
    print(f"{args.pool} pool scans of {geometry} rendered in {pool_s:.0f} s" if pool else "")
    Path(args.work).mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(args.work).free
    work = Path(tempfile.mkdtemp(prefix="bench-scale-", dir=args.work))
    print(f"work folder {work}: {free / GiB:.1f} GiB free")
    failed = False
    try:
        per_series = probe_bytes_per_series(work, args, pool)
        series = sum(args.sizes) if args.keep else max(args.sizes)
        need = check_disk(work, per_series, series, free)
        print(f"bytes per series {per_series}: {series} series need ~{need / GiB:.1f} GiB")
        sizes = [run_size(work, size, args, pool) for size in args.sizes]
    except BenchError as error:
        failed = any(work.glob("size-*"))  # a stage failed: its logs stay, the data goes
        for data in work.glob("*/root"):
            shutil.rmtree(data, ignore_errors=True)
        print(f"bench/scale.py: {error}", file=sys.stderr)
        print(f"logs kept in {work}" if failed else "", file=sys.stderr)
        return 1
    finally:
        if not args.keep and not failed:
            shutil.rmtree(work, ignore_errors=True)
    report = {
        "geometry": geometry,
        "executor": args.executor,
        "ray_cpus": args.ray_cpus,
        "inbox": "synth_batch" if pool is None else f"copies of {args.pool} pool scans",
        "pool_render_s": pool_s,
        "free_disk_gib": free / GiB,
        "bytes_per_series_probe": per_series,
        "sizes": sizes,
        "spreads": spreads(sizes),
    }
    print(json.dumps(report, indent=2))
    print_tables(report)
    record_goals("scale", goals(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
