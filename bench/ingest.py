"""Ingest throughput and memory, against a bare pydicom loop over the same archives.

    .venv/bin/python bench/ingest.py [--scans 20] [--slices 64] [--size 256]

Prints, from one run over the same files:
- slices/s of `lungcls ingest` (in-process, one core) and of a bare loop that opens the same
  archives and does `pydicom.dcmread` + `pixel_array` + HU rescale, and their ratio
  (goal >= 0.8: checking, de-identifying and writing Parquet costs little on top of decoding);
- slices/s of `lungcls ingest` on a local Ray of 1 CPU and of 2 CPUs (archives fan out as Ray
  tasks), and their ratio (goal >= 1.7 on an idle 2-core machine);
- peak RSS of a fresh `lungcls ingest` process over 2 and over 20 series (goal: flat, a
  ratio <= 1.2, since members are streamed and one archive is held at a time).
The goals also go to the summary table of `make bench` (`bench/goals.py`).
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
import pydicom
import ray
from goals import Goal, record_goals

from lungcls.config import Settings
from lungcls.ingest.run import ingest
from lungcls.io.compute import ensure_ray
from lungcls.io.storage import Storage
from lungcls.sources.synth import SynthOptions, synth_batch

KEY = "bench-pseudonym-key-0123456789"


def bare_loop(storage: Storage, archives: list[str]) -> int:
    """The baseline: read every member, decode pixels, rescale to HU. Nothing else."""
    slices = 0
    for rel in archives:
        with storage.open(rel, "rb") as f:
            if rel.endswith(".zip"):
                with zipfile.ZipFile(f) as z:
                    blobs = (z.read(n) for n in z.namelist())
                    slices += _decode_all(blobs)
            else:
                with tarfile.open(fileobj=f, mode="r|*") as t:
                    blobs = (t.extractfile(m).read() for m in t if m.isfile())  # type: ignore[union-attr]
                    slices += _decode_all(blobs)
    return slices


def _decode_all(blobs) -> int:
    count = 0
    for blob in blobs:
        ds = pydicom.dcmread(io.BytesIO(blob))
        hu = ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        count += int(hu.size > 0)
    return count


def peak_rss_mb(root: Path, work: Path) -> float:
    """Peak RSS of a fresh process that ingests everything under `root`."""
    code = (
        "import resource, sys\n"
        "from lungcls.config import Settings\n"
        "from lungcls.ingest.run import ingest\n"
        f"s = Settings(root={str(root)!r}, pseudonym_key={KEY!r}, work_dir={str(work)!r},"
        " ray={'executor': 'local'})\n"
        "ingest(s, progress=False)\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scans", type=int, default=20)
    parser.add_argument("--slices", type=int, default=64)
    parser.add_argument("--size", type=int, default=256, help="rows = columns")
    args = parser.parse_args()

    Path(".lungcls-work").mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bench-ingest-", dir=".lungcls-work") as tmp:
        tmp_path = Path(tmp)
        options = SynthOptions(
            scans=args.scans,
            slices=args.slices,
            rows=args.size,
            columns=args.size,
            pixel_spacing_mm=340 / args.size,
            slice_spacing_mm=2.0,
            seed=1,
        )
        storage = Storage(str(tmp_path / "root"))
        print(f"writing {args.scans} synthetic series of {args.slices}x{args.size}x{args.size}…")
        scans = synth_batch(storage, "bench", options)
        archives = sorted({s.archive for s in scans})
        total_slices = args.scans * args.slices

        start = time.perf_counter()
        assert bare_loop(storage, archives) == total_slices
        bare_s = time.perf_counter() - start

        results = {}
        for run, executor, cpus in (
            ("local", "local", None),
            ("ray1", "ray", 1),
            ("ray", "ray", 2),
        ):
            root = tmp_path / f"root-{run}"
            shutil.copytree(tmp_path / "root" / "inbox", root / "inbox")
            settings = Settings(
                root=str(root),
                pseudonym_key=KEY,
                work_dir=str(tmp_path / "work"),
                ray={"executor": executor, "num_cpus": cpus},
            )
            if executor == "ray":  # start Ray outside the timing: steady-state throughput
                ensure_ray(settings)
            start = time.perf_counter()
            summary = ingest(settings, progress=False)
            results[run] = time.perf_counter() - start
            assert summary.series_ingested == args.scans, summary
            ray.shutdown()  # the next run starts its own with other CPUs; before its folder goes

        rss = {}
        for count in (2, 20):
            root = tmp_path / f"rss-{count}"
            synth_batch(
                Storage(str(root)), "b", SynthOptions(**{**options.__dict__, "scans": count})
            )
            rss[count] = peak_rss_mb(root, tmp_path / "work")

    report = {
        "slices": total_slices,
        "bare_pydicom_slices_per_s": round(total_slices / bare_s, 1),
        "lungcls_ingest_slices_per_s": round(total_slices / results["local"], 1),
        "ratio_lungcls_vs_bare": round(bare_s / results["local"], 3),
        "lungcls_ingest_ray_slices_per_s": round(total_slices / results["ray"], 1),
        "lungcls_ingest_ray_1cpu_slices_per_s": round(total_slices / results["ray1"], 1),
        "ray_speedup_2_vs_1_cpus": round(results["ray1"] / results["ray"], 3),
        "peak_rss_mb_2_series": round(rss[2], 1),
        "peak_rss_mb_20_series": round(rss[20], 1),
        "rss_ratio_20_vs_2": round(rss[20] / rss[2], 3),
    }
    print(json.dumps(report, indent=2))
    print(
        f"ingest {report['lungcls_ingest_slices_per_s']} slices/s vs bare pydicom "
        f"{report['bare_pydicom_slices_per_s']} slices/s: ratio {report['ratio_lungcls_vs_bare']}"
        f" (goal >= 0.8); peak RSS 2 vs 20 series: {report['peak_rss_mb_2_series']} vs "
        f"{report['peak_rss_mb_20_series']} MB (goal: flat, 20 / 2 <= 1.2)"
    )
    speedup = results["ray1"] / results["ray"]
    record_goals(
        "ingest",
        [
            Goal(
                "slices/s, lungcls ingest / bare pydicom decode",
                bare_s / results["local"],
                ">=",
                0.8,
            ),
            Goal("peak RSS, 20 series / 2 series (flat)", rss[20] / rss[2], "<=", 1.2),
            Goal("ingest on a local Ray, 2 CPUs / 1 CPU", speedup, ">=", 1.7),
        ],
    )


if __name__ == "__main__":
    main()
