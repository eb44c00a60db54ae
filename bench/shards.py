"""Shard read throughput: Ray Data vs a raw pyarrow loop vs raw bytes, on the same files.

    .venv/bin/python bench/shards.py [--scans 48] [--copies 6] [--files 4] [--ray-cpus 4]

Builds a dataset version (`build_dataset`, in-process) from `--scans` synthetic series
(48x128x128 at 2.8 mm; default 1x48x48x48 float16 tensors), then writes `--files` shards
with `write_shard` holding `--copies` variants of every real sample (axes permuted, so no
two rows share bytes and compression stays what it is for real samples) under new ids.
On those files, after a warm-up pass each (page cache, Ray workers), it times:
- Ray Data: `read_parquet(paths).select_columns([tensor, label])` -> `map_batches`
  (pyarrow batches of 32, decoded to float32 by `np.frombuffer` per row, in Ray tasks) ->
  `iter_torch_batches(batch_size=32)`; with Ray 2.60's default datasource (v2) and with
  `DataContext.use_datasource_v2 = False` (v1);
- Ray Data as training reads a dataset under `train.cache_max_mb`: the same chain (v1)
  materialised once in the object store (its time printed apart), then per pass only
  `iter_torch_batches`;
- raw pyarrow: `pq.read_table` per file, the same decode, `torch.from_numpy` per 32 rows;
- the raw read alone (`pq.read_table`) vs `np.fromfile` of the same files, in file MB/s.
Prints JSON and a one-line summary: samples/s and ratio Ray Data / pyarrow (goal >= 0.5),
MB/s and ratio pyarrow / fromfile; the Ray Data ratios also go to the summary table of
`make bench` (`bench/goals.py`). Ray runs locally via `ensure_ray` (`--ray-cpus` logical
CPUs, state under the work dir) and is shut down at the end.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from goals import Goal, record_goals

from lungcls.config import Settings
from lungcls.dataset.build import build_dataset
from lungcls.dataset.manifest import load_manifest
from lungcls.dataset.shards import TENSOR_COLUMN, Sample, iter_samples, write_shard
from lungcls.ingest.run import ingest
from lungcls.io.compute import ensure_ray
from lungcls.io.storage import Storage
from lungcls.sources.synth import SynthOptions, synth_batch

KEY = "bench-pseudonym-key-0123456789"
BATCH = 32
COLUMNS = [TENSOR_COLUMN, "label"]


def decode(buffers: Iterable[Any], shape: tuple[int, ...]) -> np.ndarray:
    """Binary float16 tensors -> one float32 array (n, *shape), `np.frombuffer` per row."""
    rows = [np.frombuffer(b, dtype=np.float16) for b in buffers]
    return np.stack(rows).reshape(-1, *shape).astype(np.float32)


def buffers(column: pa.ChunkedArray) -> Iterator[pa.Buffer]:
    """The value of each row of a binary column, zero-copy."""
    return (v.as_buffer() for v in column)


def variant(sample: Sample, number: int) -> bytes:
    """Copy `number` (0-5) of a sample: another axis innermost, maybe reversed.

    The six variants share no rows of bytes, so Parquet's dictionary and zstd cannot fold
    copies together, and they keep the sample's values, statistics and smoothness.
    """
    tensor = np.frombuffer(sample.tensor, dtype=sample.dtype).reshape(sample.shape)
    inner = 1 + number % 3
    tensor = np.moveaxis(tensor, inner, -1)
    if number >= 3:
        tensor = tensor[..., ::-1]
    return np.ascontiguousarray(tensor).tobytes()


def make_shards(tmp: Path, args: argparse.Namespace) -> tuple[list[str], tuple[int, ...], dict]:
    """Build a real dataset version, then write the bench shards from its samples."""
    root = tmp / "root"
    storage = Storage(str(root))
    synth_batch(storage, "bench", SynthOptions(scans=args.scans, seed=3))
    settings = Settings(
        root=str(root),
        pseudonym_key=KEY,
        work_dir=str(tmp / "work"),
        ray={"executor": "local"},
        dataset={"require_both_classes": False},
    )
    ingest(settings, progress=False)
    built = build_dataset(settings, progress=False)
    manifest = load_manifest(storage, built.name, built.version)
    samples = list(iter_samples(storage, manifest.shards))
    copies = [
        Sample(**{**s.to_row(), "sample_id": f"v{n}-{s.sample_id}", "tensor": variant(s, n)})
        for n in range(args.copies)
        for s in samples
    ]
    paths = []
    for f in range(args.files):
        info = write_shard(storage, f"bench-shards/shard-{f:03d}.parquet", copies[f :: args.files])
        paths.append(str((root / info.path).resolve()))
    facts = {
        "dataset_samples": manifest.samples,
        "dataset_shards": len(manifest.shards),
        "dataset_bytes_per_sample": round(manifest.shard_bytes / len(samples)),
        "bench_samples": len(copies),
        "bench_files": len(paths),
        "bench_bytes_per_sample": round(sum(Path(p).stat().st_size for p in paths) / len(copies)),
    }
    return paths, tuple(manifest.tensor_shape), facts


def decoded_dataset(paths: list[str], shape: tuple[int, ...]) -> Any:
    """The Ray Dataset over the shards, decoded to float32 in Ray tasks (`map_batches`)."""
    import ray.data

    def to_float(table: pa.Table) -> dict[str, np.ndarray]:
        return {
            "x": decode(buffers(table[TENSOR_COLUMN]), shape),
            "label": table["label"].to_numpy(),
        }

    ds = ray.data.read_parquet(paths).select_columns(COLUMNS)
    return ds.map_batches(to_float, batch_format="pyarrow", batch_size=BATCH)


def ray_map_batches(paths: list[str], shape: tuple[int, ...]) -> Iterator[dict[str, torch.Tensor]]:
    """Read and decode anew each pass, then `iter_torch_batches`."""
    yield from decoded_dataset(paths, shape).iter_torch_batches(batch_size=BATCH)


def materialized(paths: list[str], shape: tuple[int, ...]) -> Callable[..., Iterator]:
    """What training does with a dataset under `train.cache_max_mb`: read and decode once
    into the object store (`materialize`, v1 datasource), then every epoch only iterates.
    Returns a loader over that one materialised dataset; the caller times its building."""
    ds = decoded_dataset(paths, shape).materialize()

    def ray_materialized(_paths: list[str], _shape: tuple[int, ...]) -> Iterator:
        yield from ds.iter_torch_batches(batch_size=BATCH)

    return ray_materialized


def raw_pyarrow(paths: list[str], shape: tuple[int, ...]) -> Iterator[dict[str, torch.Tensor]]:
    for path in paths:
        table = pq.read_table(path, columns=COLUMNS)
        for start in range(0, table.num_rows, BATCH):
            part = table.slice(start, BATCH)
            x = decode(buffers(part[TENSOR_COLUMN]), shape)
            yield {"x": torch.from_numpy(x), "label": torch.tensor(part["label"].to_numpy())}


def samples_per_s(
    loader: Callable[[list[str], tuple[int, ...]], Iterator[dict[str, torch.Tensor]]],
    paths: list[str],
    shape: tuple[int, ...],
    expected: int,
    repeats: int,
) -> float:
    """Warm-up pass, then `repeats` timed passes; checks every sample arrives as float32."""
    seconds = []
    for attempt in range(repeats + 1):
        start, count = time.perf_counter(), 0
        for batch in loader(paths, shape):
            assert batch["x"].dtype == torch.float32 and batch["x"].shape[1:] == shape
            count += len(batch["x"])
        assert count == expected, (loader.__name__, count, expected)
        if attempt:
            seconds.append(time.perf_counter() - start)
    return expected * repeats / sum(seconds)


def mb_per_s(read: Callable[[str], Any], paths: list[str], repeats: int) -> float:
    total = sum(Path(p).stat().st_size for p in paths) / 1e6
    for p in paths:  # warm-up: page cache
        read(p)
    start = time.perf_counter()
    for _ in range(repeats):
        for p in paths:
            read(p)
    return total * repeats / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scans", type=int, default=48)
    parser.add_argument("--copies", type=int, default=6, choices=range(1, 7))
    parser.add_argument("--files", type=int, default=4)
    parser.add_argument("--ray-cpus", type=int, default=4, help="logical CPUs for local Ray")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    Path(".lungcls-work").mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bench-shards-", dir=".lungcls-work") as tmp:
        print(f"building a dataset from {args.scans} synthetic series, writing bench shards…")
        paths, shape, facts = make_shards(Path(tmp), args)
        n = facts["bench_samples"]
        settings = Settings(work_dir=str(Path(tmp) / "work"), ray={"num_cpus": args.ray_cpus})
        ensure_ray(settings)
        import ray
        import ray.data

        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False
        logging.getLogger("ray.data").setLevel(logging.WARNING)
        rates = {}
        try:
            for datasource, v2 in (("v2", True), ("v1", False)):
                context.use_datasource_v2 = v2  # Ray 2.60's default is v2
                rate = samples_per_s(ray_map_batches, paths, shape, n, args.repeats)
                rates[f"ray_data_{datasource}"] = rate
            start = time.perf_counter()  # v1 stays set: training uses it
            loader = materialized(paths, shape)
            materialize_s = time.perf_counter() - start
            rates["ray_data_materialized"] = samples_per_s(loader, paths, shape, n, args.repeats)
            rates["raw_pyarrow"] = samples_per_s(raw_pyarrow, paths, shape, n, args.repeats)
        finally:
            ray.shutdown()  # before its temp folder goes
        pyarrow_mb = mb_per_s(lambda p: pq.read_table(p, columns=COLUMNS), paths, args.repeats)
        fromfile_mb = mb_per_s(lambda p: np.fromfile(p, dtype=np.uint8), paths, args.repeats)

    report: dict[str, Any] = {
        **facts,
        "tensor_shape": list(shape),
        "ray_num_cpus": args.ray_cpus,
        "materialize_once_s": round(materialize_s, 2),
        **{f"{k}_samples_per_s": round(v, 1) for k, v in rates.items()},
        **{
            f"ratio_{k}_vs_pyarrow": round(v / rates["raw_pyarrow"], 3)
            for k, v in rates.items()
            if k.startswith("ray_data")
        },
        "pyarrow_read_mb_per_s": round(pyarrow_mb, 1),
        "fromfile_mb_per_s": round(fromfile_mb, 1),
        "ratio_pyarrow_vs_fromfile": round(pyarrow_mb / fromfile_mb, 3),
    }
    print(json.dumps(report, indent=2))
    print(
        f"shards: Ray Data {report['ray_data_v2_samples_per_s']} "
        f"samples/s with the default datasource, {report['ray_data_v1_samples_per_s']}"
        f" with the v1 one, vs pyarrow {report['raw_pyarrow_samples_per_s']} samples/s: ratio "
        f"{report['ratio_ray_data_v2_vs_pyarrow']} / "
        f"{report['ratio_ray_data_v1_vs_pyarrow']}, materialised once (as training does for "
        f"small data) {report['ray_data_materialized_samples_per_s']} samples/s: ratio "
        f"{report['ratio_ray_data_materialized_vs_pyarrow']} (goal >= 0.5); pyarrow read "
        f"{report['pyarrow_read_mb_per_s']} MB/s vs np.fromfile {report['fromfile_mb_per_s']} "
        f"MB/s: ratio {report['ratio_pyarrow_vs_fromfile']}"
    )
    record_goals(
        "shards",
        [
            Goal(
                f"samples/s to torch, Ray Data ({how}) / raw pyarrow",
                rates[f"ray_data_{key}"] / rates["raw_pyarrow"],
                ">=",
                0.5,
            )
            for key, how in (
                ("v2", "v2 datasource"),
                ("v1", "v1 datasource"),
                ("materialized", "materialised once, as training does for small data"),
            )
        ],
    )


if __name__ == "__main__":
    main()
