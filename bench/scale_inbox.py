"""A large synthetic inbox, cheaply: a few phantom scans rendered, every series a re-stamp.

    pool = render_pool(options, size=16, seed=0, jobs=2)
    scans = write_scale_inbox(Storage(root), "b000", 100, options, pool=pool, seed=0, jobs=2)

`synth_batch` costs about 2.6 s of CPU per series at 64 x 256 x 256 (phantom render 1.05 s,
DICOM writing 0.3 s, then zip at level 6 0.9 s or tar.gz at gzip level 9 1.9 s): 4,200
series (`bench/scale.py`'s 200 + 1,000 + 3,000) would take 1.5 h on two idle cores before
the benchmark starts. Here lungcls's own generator renders only `pool` scans
(`plan_scans`, `render_scan`); series i of a batch is pool scan i % pool with

- a fresh fake identity, drawn as synth draws them (`fake_identity`, `scan_identity` in a
  namespace of its own): patient, study, series, frame of reference, accession, dates,
  and new SOP instance UIDs per slice (`ct_datasets`, which also writes the file meta's
  MediaStorageSOPInstanceUID), so ingest sees 1 patient and 1 series per series written;
- its own pixels: every HU offset by a seeded -4..+4 (a scanner's calibration drift, so
  the copies of one scan differ in their HU statistics too) and the lowest bit of 4 seeded
  pixels per slice flipped (so no two series, nor any two of their slices, hold the same
  pixels, whatever their offsets). Both are invisible next to the phantom's 20 HU noise,
  cost ~30 ms a series, and leave the geometry and the nodule where they were: labels.csv
  gives the pool scan's label and nodule centre (patient mm) unchanged.

Series are written through synth's own path (`ct_datasets`, `dicom_bytes`) and packed as
zips of 1-2 series like synth's, all zip (no tar.gz) at deflate level 1: 0.23 s a series
for 62 % of the raw size, against 0.84 s for 61 % at level 6, the zip default. The same
seed gives the same bytes, whatever `jobs`. 0.57 s of CPU a series in all (20 series, pool
given), archives `jobs` at once; the pool itself costs about 1.5 s a scan, once.
Stand-in series are 16 images over and over: fine for cost and memory, meaningless for
accuracy (train and test share pool scans).
"""

from __future__ import annotations

import io
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace

import numpy as np
import pydicom

from lungcls.io.storage import Storage
from lungcls.sources.dicom_writer import dicom_bytes, pack_zip
from lungcls.sources.fake_identities import fake_identity, scan_identity
from lungcls.sources.synth import (
    SCANNER_MAPPING,
    SynthOptions,
    SynthScan,
    ct_datasets,
    labels_csv,
    plan_scans,
    render_scan,
)

NAMESPACE = "-scale"  # the UIDs of a scale batch are never those of a synth batch of one seed
ZIP_LEVEL = 1  # deflate level: a quarter of the default's CPU for 1.6 % more bytes
HU_OFFSET = 4  # every series' HU move by a seeded -HU_OFFSET..+HU_OFFSET
FLIPS_PER_SLICE = 4  # pixels per slice whose lowest bit is flipped


@dataclass(frozen=True)
class ScanPool:
    """The rendered scans series are copied from: their plan (label, nodule, geometry,
    scanner) and their HU volumes (z, y, x), int16 as the scanner stored them."""

    scans: list[SynthScan]
    hu: list[np.ndarray]

    def __len__(self) -> int:
        return len(self.scans)


def render_pool(options: SynthOptions, size: int = 16, seed: int = 0, jobs: int = 1) -> ScanPool:
    """`size` scans of `options` as `synth_batch` renders them (half positive by default),
    `jobs` at once; their pixels are read back from the DICOM files synth writes."""
    pool_options = replace(options, scans=size, seed=seed)
    scans = plan_scans(pool_options)
    with ProcessPoolExecutor(max(1, min(jobs, size))) as workers:
        volumes = list(workers.map(_render_hu, scans, [pool_options] * size))
    return ScanPool(scans, volumes)


def _render_hu(scan: SynthScan, options: SynthOptions) -> np.ndarray:
    slices = [pydicom.dcmread(io.BytesIO(data)) for _, data in render_scan(scan, options)]
    shape = (len(slices), slices[0].Rows, slices[0].Columns)
    stored = np.frombuffer(b"".join(ds.PixelData for ds in slices), "<u2").reshape(shape)
    stored = stored.astype(np.int16)  # 12 bits: 0..4095
    return stored + np.int16(SCANNER_MAPPING.intercept)  # slope 1: HU = stored - 1024


def write_scale_inbox(
    storage: Storage,
    batch: str,
    count: int,
    options: SynthOptions,
    pool: int | ScanPool = 16,
    seed: int = 0,
    jobs: int = 1,
    inbox: str = "inbox",
) -> list[SynthScan]:
    """Write `<inbox>/<batch>/`: `count` series copied from `pool` (a rendered `ScanPool`,
    or how many scans to render for this batch alone) as zips of 1-2 series, and labels.csv;
    returns the ground truth, as `synth_batch` does. Batches written into one inbox need
    seeds of their own (the UIDs derive from the seed and the series' index)."""
    if isinstance(pool, int):
        pool = render_pool(options, pool, seed, jobs)
    scans = plan_copies(pool, count, seed)
    rng = np.random.default_rng([seed, 2])
    archives: list[tuple[str, list[SynthScan]]] = []
    start = 0
    while start < count:
        group = scans[start : start + int(rng.integers(1, 3))]
        archives.append((f"{inbox}/{batch}/archive-{len(archives):04d}.zip", group))
        start += len(group)
    tasks = [(storage, rel, group, seed) for rel, group in archives]
    if jobs <= 1:
        uids = [_write_archive(*task, pool=pool) for task in tasks]
    else:  # the pool travels once to each worker, not with every archive
        with ProcessPoolExecutor(jobs, initializer=_set_pool, initargs=(pool,)) as workers:
            uids = list(workers.map(_write_archive, *zip(*tasks, strict=True)))
    for (rel, group), group_uids in zip(archives, uids, strict=True):
        for scan, sop_uids in zip(group, group_uids, strict=True):
            scan.archive, scan.sop_uids = rel, sop_uids
    storage.write_atomic(f"{inbox}/{batch}/labels.csv", labels_csv(scans).encode())
    return scans


def plan_copies(pool: ScanPool, count: int, seed: int) -> list[SynthScan]:
    """Series i: pool scan i % len(pool) under a fresh fake patient and scan identity (one
    patient per series); `index` is the series' number in the batch."""
    rng = np.random.default_rng([seed, 3])
    copies: list[SynthScan] = []
    for index in range(count):
        source = pool.scans[index % len(pool)]
        patient = fake_identity(rng, index)
        scan = scan_identity(rng, seed, index, NAMESPACE)
        copies.append(
            SynthScan(
                index, patient, scan, source.label, source.nodule, source.geometry, source.scanner
            )
        )
    return copies


_POOL: ScanPool | None = None  # a worker's copy of the pool, sent once by the initializer


def _set_pool(pool: ScanPool) -> None:
    global _POOL
    _POOL = pool


def _write_archive(
    storage: Storage, rel: str, group: list[SynthScan], seed: int, pool: ScanPool | None = None
) -> list[list[str]]:
    """One zip of the group's series; the SOP instance UIDs of each."""
    pool = pool or _POOL
    assert pool is not None, "the worker's pool was not set"
    members: list[tuple[str, bytes]] = []
    uids: list[list[str]] = []
    for scan in group:
        hu = series_pixels(pool.hu[scan.index % len(pool)], seed, scan.index)
        datasets = ct_datasets(hu, scan.geometry, scan.patient, scan.scan, scan.scanner, seed)
        uids.append([str(ds.SOPInstanceUID) for ds in datasets])
        folder = f"scan-{scan.index:04d}"
        members += [(f"{folder}/{k + 1:04d}.dcm", dicom_bytes(ds)) for k, ds in enumerate(datasets)]
    storage.write_atomic(rel, pack_zip(members, level=ZIP_LEVEL))
    return uids


def series_pixels(hu: np.ndarray, seed: int, index: int) -> np.ndarray:
    """The pool scan's HU made this series' own: a seeded offset of every voxel and the
    lowest bit of a few seeded pixels per slice flipped (see the module's docstring)."""
    rng = np.random.default_rng([seed, 4, index])
    own = hu + np.int16(rng.integers(-HU_OFFSET, HU_OFFSET + 1))
    slices, rows, columns = own.shape
    pixels = rng.integers(0, rows * columns, size=(slices, FLIPS_PER_SLICE))
    flat = own.reshape(slices, rows * columns)
    flat[np.arange(slices)[:, None], pixels] ^= 1
    return own
