"""Peak memory of one ingest against the size of the largest series it holds.

    .venv/bin/python bench/ingest_memory.py [--series 8] [--slices 500] [--size 512]

Writes a zip of `--series` CT series (stored, 512 x 512 int16 slices: 8 x 500 slices is
2 GB, the issue's case), runs a fresh `lungcls ingest` process on it and prints its peak
RSS (`ru_maxrss` of the child), the peak RSS of the same command on an empty inbox (the
baseline, measured in the same run), and

    ratio = (peak RSS - baseline RSS) / bytes of the largest series (int16 HU)

for an archive of 2 series and one of `--series`. Goal: a small multiple, the same for both:
ingest stages slices and assembles one series at a time. Before two-phase ingest every
decoded slice of an archive stayed in memory until assembly, so the ratio grew with the
number of series.
"""

from __future__ import annotations

import argparse
import copy
import io
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
from pydicom.uid import generate_uid

from lungcls.sources.fake_identities import SCANNERS, fake_identity, scan_identity
from lungcls.sources.phantom import centered_geometry
from lungcls.sources.synth import ct_datasets

KEY = "bench-pseudonym-key-0123456789"


def _one_slice(rng: np.random.Generator, index: int):
    """A complete CT slice with fake identifiers, as synth writes them."""
    geometry = centered_geometry((1, 16, 16), (1.0, 0.7, 0.7))
    hu = rng.normal(-800, 50, size=(1, 16, 16))
    patient, scan = fake_identity(rng, index), scan_identity(rng, 0, index)
    return ct_datasets(hu, geometry, patient, scan, SCANNERS[index % len(SCANNERS)], 0)[0]


def write_archive(path: Path, series: int, slices: int, size: int) -> int:
    """A stored zip of `series` series; returns the bytes of the largest series' HU."""
    rng = np.random.default_rng(0)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
        for s in range(series):
            template = _one_slice(rng, s)
            series_uid = generate_uid()
            for k in range(slices):
                ds = copy.deepcopy(template)
                ds.SeriesInstanceUID = series_uid
                ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
                ds.Rows = ds.Columns = size
                ds.ImagePositionPatient = [0.0, 0.0, float(k)]
                ds.InstanceNumber = k + 1
                pixels = rng.integers(0, 2000, size=(size, size), dtype=np.uint16)
                ds.PixelData = pixels.tobytes()
                buffer = io.BytesIO()
                ds.save_as(buffer, enforce_file_format=True)
                archive.writestr(f"s{s}/{k:05d}.dcm", buffer.getvalue())
    return slices * size * size * 2


def child_peak_rss(command: list[str], env: dict[str, str]) -> tuple[int, float]:
    """Peak RSS (bytes) of one child process and its wall time."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    started = time.perf_counter()
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    # ru_maxrss of children is the largest of any child so far: run the larger one last.
    return max(peak, before) * 1024, seconds


def measure(work: Path, name: str, series: int, args: argparse.Namespace, baseline: int) -> None:
    inbox = work / name / "inbox" / "big"
    inbox.mkdir(parents=True)
    largest = write_archive(inbox / "scans.zip", series, args.slices, args.size)
    archive_bytes = (inbox / "scans.zip").stat().st_size
    env = {**os.environ, "LUNGCLS_PSEUDONYM_KEY": KEY}
    command = [sys.executable, "-m", "lungcls.cli", "--executor", "local", "--root"]
    peak, seconds = child_peak_rss([*command, str(work / name), "ingest"], env)
    ratio = (peak - baseline) / largest
    print(
        f"{series} series, archive {archive_bytes / 2**30:.2f} GiB, largest series "
        f"{largest / 2**20:.0f} MiB: peak RSS {peak / 2**20:.0f} MiB in {seconds:.0f} s, "
        f"ratio {ratio:.2f}"
    )
    shutil.rmtree(work / name, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--series", type=int, default=8)
    parser.add_argument("--slices", type=int, default=500)
    parser.add_argument("--size", type=int, default=512)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="lungcls-bench-memory-"))
    try:
        env = {**os.environ, "LUNGCLS_PSEUDONYM_KEY": KEY}
        (work / "empty" / "inbox" / "big").mkdir(parents=True)
        command = [sys.executable, "-m", "lungcls.cli", "--executor", "local", "--root"]
        baseline, _ = child_peak_rss([*command, str(work / "empty"), "ingest"], env)
        print(f"baseline: peak RSS of lungcls ingest on an empty inbox {baseline / 2**20:.0f} MiB")
        # Smaller first: ru_maxrss of children is the largest of any child so far.
        measure(work, "two", 2, args, baseline)
        measure(work, "many", args.series, args, baseline)
        print("ratio = (peak RSS - baseline) / bytes of the largest series' HU; goal: a small")
        print("multiple, the same for 2 series as for many (memory holds one series)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
