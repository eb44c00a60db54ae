"""Preprocessing throughput: lungcls vs two MONAI transform chains, same volumes.

    .venv/bin/pip install -c constraints.txt -e '.[bench]'   # MONAI, once
    .venv/bin/python bench/preprocess.py [--per-geometry 3] [--repeats 3]

Writes synthetic series in four geometries (64-96 slices of 256x256 or 512x512, 0.7-1.4 mm
pixels, 1-2.5 mm slices), ingests them (in-process), loads the series from the store,
then times, in one process on the same int16 volumes and the default settings (1 mm
isotropic, 48^3, lung window -1350..150 HU):
- lungcls: `preprocess_series(series, volume, settings)`, center finding included;
- MONAI, full chain: MetaTensor (affine from the series geometry) -> `Spacing` (1 mm,
  bilinear) of the whole scan -> `ScaleIntensityRange` (-1350..150 -> 0..1, clip) ->
  `SpatialCrop` around the same center + `BorderPad` (air, per side, so the center stays put);
- MONAI, fair chain: the int16 MetaTensor -> `SpatialCrop` to the source voxels the patch
  covers plus a margin (`CastToType` float32) -> the same `Spacing`, `ScaleIntensityRange`
  and crop/pad. The center is given to both, not timed.
Prints JSON (samples/s of each, the ratios, MONAI's time per transform, lungcls's time
finding the center, how far each chain's output differs from lungcls's) and a one-line
summary with the ratios and their goal (>= 2); both ratios also go to the summary table of
`make bench` (`bench/goals.py`).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from goals import Goal, record_goals

try:
    import torch
    from monai.data import MetaTensor
    from monai.transforms import (
        BorderPad,
        CastToType,
        ScaleIntensityRange,
        Spacing,
        SpatialCrop,
    )
except ImportError as error:  # pragma: no cover - depends on the environment
    raise SystemExit(
        f"bench/preprocess.py needs MONAI ({error}); install the bench extra with\n"
        "    .venv/bin/pip install -c constraints.txt -e '.[bench]'"
    ) from error

from lungcls.config import PreprocessSettings, Settings
from lungcls.dataset.preprocess import AIR_HU, crop_center_mm, preprocess_series
from lungcls.ingest.run import ingest
from lungcls.ingest.series_store import SeriesRecord, iter_series
from lungcls.io.storage import Storage
from lungcls.sources.synth import SynthOptions, synth_batch

KEY = "bench-pseudonym-key-0123456789"
# (slices, rows = columns, pixel spacing mm, slice spacing mm)
GEOMETRIES = [(64, 512, 0.7, 2.5), (96, 256, 1.4, 1.0), (80, 512, 0.8, 1.25), (72, 256, 1.2, 2.0)]


def affine_kji(series: SeriesRecord) -> np.ndarray:
    """4x4 affine from array index (k, j, i) to patient mm (x, y, z), as MONAI expects."""
    orientation = np.asarray(series.orientation, dtype=np.float64)
    row_dir, col_dir = orientation[:3], orientation[3:]
    dz, dy, dx = series.spacing_zyx_mm
    affine = np.eye(4)
    affine[:3, 0] = np.cross(row_dir, col_dir) * dz
    affine[:3, 1] = col_dir * dy
    affine[:3, 2] = row_dir * dx
    affine[:3, 3] = series.origin_xyz_mm
    return affine


# Source voxels the fair chain's first crop keeps beyond the patch: the bilinear neighbours
# of the outer samples, and room for the grid `Spacing` lays on the crop (it starts at the
# crop's first voxel, not on the patch).
MARGIN_VOXELS = 3


class MonaiChain:
    """The MONAI transforms, timed one by one (seconds summed over calls).

    `crop_first=False` resamples the whole scan and then crops (the chain most MONAI
    pipelines are written as); `crop_first=True` is the fair baseline of issue 16: crop the
    int16 scan to the patch plus `MARGIN_VOXELS` first, so `Spacing` resamples only that.
    """

    def __init__(self, config: PreprocessSettings, crop_first: bool) -> None:
        (center, width), self.shape = config.windows[0], np.asarray(config.shape)
        low = center - width / 2.0
        self.crop_first = crop_first
        self.target_mm = np.asarray(config.spacing_mm, dtype=np.float64)
        self.to_float = CastToType(dtype=torch.float32)
        self.spacing = Spacing(pixdim=config.spacing_mm, mode="bilinear", padding_mode="border")
        self.scale = ScaleIntensityRange(
            a_min=low, a_max=low + width, b_min=0.0, b_max=1.0, clip=True
        )
        self.air = float(np.clip((AIR_HU - low) / width, 0.0, 1.0))
        steps = ["to_metatensor", "crop_margin", "Spacing", "ScaleIntensityRange", "crop_pad"]
        self.seconds = dict.fromkeys((s for s in steps if crop_first or s != "crop_margin"), 0.0)

    def reset(self) -> None:
        self.seconds = dict.fromkeys(self.seconds, 0.0)

    def _tick(self, name: str, start: float) -> float:
        now = time.perf_counter()
        self.seconds[name] += now - start
        return now

    def margin_box(
        self, affine: np.ndarray, center_xyz: np.ndarray, size: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Source voxel box [start, end) holding every voxel that the patch at the target
        spacing interpolates from, plus the margin, clipped to the scan."""
        center = (np.linalg.inv(affine) @ np.append(center_xyz, 1.0))[:3]
        source_mm = np.linalg.norm(affine[:3, :3], axis=0)
        # n/2 target steps: the outer samples at (n-1)/2 steps, plus up to half a step where
        # the final crop rounds the center to the nearest voxel of the resampled grid.
        half = (self.shape / 2.0) * self.target_mm / source_mm
        start = np.floor(center - half).astype(int) - MARGIN_VOXELS
        end = np.ceil(center + half).astype(int) + 1 + MARGIN_VOXELS
        return np.clip(start, 0, size), np.clip(end, 0, size)

    def __call__(
        self, volume: np.ndarray, affine: np.ndarray, center_xyz: np.ndarray
    ) -> torch.Tensor:
        t = time.perf_counter()
        voxels = volume if self.crop_first else volume.astype(np.float32)
        image = MetaTensor(torch.from_numpy(voxels)[None], affine=torch.from_numpy(affine))
        t = self._tick("to_metatensor", t)
        if self.crop_first:
            start, end = self.margin_box(affine, center_xyz, np.asarray(volume.shape))
            image = self.to_float(SpatialCrop(roi_start=start, roi_end=end)(image))
            t = self._tick("crop_margin", t)
        image = self.spacing(image)
        t = self._tick("Spacing", t)
        image = self.scale(image)
        t = self._tick("ScaleIntensityRange", t)
        # The patch's voxel centers sit at center +- (n-1)/2 steps: start at the nearest voxel.
        new_affine = np.asarray(image.affine, dtype=np.float64)
        center = (np.linalg.inv(new_affine) @ np.append(center_xyz, 1.0))[:3]
        start = np.rint(center - (self.shape - 1) / 2.0).astype(int)
        end = start + self.shape
        size = np.asarray(image.shape[1:])
        image = SpatialCrop(roi_start=np.clip(start, 0, size), roi_end=np.clip(end, 0, size))(image)
        before, after = np.clip(-start, 0, None), np.clip(end - size, 0, None)
        if before.any() or after.any():
            border = [int(v) for pair in zip(before, after, strict=True) for v in pair]
            image = BorderPad(spatial_border=border, value=self.air)(image)
        self._tick("crop_pad", t)
        return image.as_tensor()


def make_series(tmp: Path, per_geometry: int) -> list[SeriesRecord]:
    root = tmp / "root"
    for number, (slices, size, pixel, step) in enumerate(GEOMETRIES):
        options = SynthOptions(
            scans=per_geometry,
            slices=slices,
            rows=size,
            columns=size,
            pixel_spacing_mm=pixel,
            slice_spacing_mm=step,
            seed=number,
        )
        synth_batch(Storage(str(root)), f"geometry-{number}", options)
    settings = Settings(
        root=str(root), pseudonym_key=KEY, work_dir=str(tmp / "work"), ray={"executor": "local"}
    )
    summary = ingest(settings, progress=False)
    assert summary.series_ingested == per_geometry * len(GEOMETRIES), summary
    return sorted(iter_series(Storage(str(root))), key=lambda s: s.series_id)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-geometry", type=int, default=3, help="series per geometry (4)")
    parser.add_argument(
        "--repeats", type=int, default=3, help="timed passes of lungcls and the fair chain"
    )
    args = parser.parse_args()
    config = PreprocessSettings()

    Path(".lungcls-work").mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bench-preprocess-", dir=".lungcls-work") as tmp:
        print(f"writing and ingesting {args.per_geometry * len(GEOMETRIES)} synthetic series…")
        rows = make_series(Path(tmp), args.per_geometry)
    # Writable copies (the store's are read-only views), so torch can share their memory.
    volumes = [np.array(r.volume) for r in rows]
    centers = [crop_center_mm(r, v) for r, v in zip(rows, volumes, strict=True)]
    inputs = list(zip(volumes, [affine_kji(r) for r in rows], centers, strict=True))
    chains = {"full": MonaiChain(config, crop_first=False), "fair": MonaiChain(config, True)}

    preprocess_series(rows[0], volumes[0], config)  # warm-up (imports, caches)
    for chain in chains.values():
        chain(*inputs[0])
        chain.reset()

    start = time.perf_counter()
    for _ in range(args.repeats):
        ours = [preprocess_series(r, v, config) for r, v in zip(rows, volumes, strict=True)]
    ours_s = (time.perf_counter() - start) / args.repeats
    # The MONAI chains are handed the center; lungcls finds it (a coarse lung mask when there
    # is no nodule): its share of lungcls's time, for reading the ratios.
    start = time.perf_counter()
    for _ in range(args.repeats):
        for row, volume in zip(rows, volumes, strict=True):
            crop_center_mm(row, volume)
    center_s = (time.perf_counter() - start) / args.repeats

    n = len(rows)
    report = {
        "series": n,
        "volumes": sorted({f"{v.shape[0]}x{v.shape[1]}x{v.shape[2]}" for v in volumes}),
        "torch_threads": torch.get_num_threads(),
        "lungcls_samples_per_s": round(n / ours_s, 2),
        "lungcls_seconds_per_sample": round(ours_s / n, 4),
        "lungcls_center_finding_seconds_per_sample": round(center_s / n, 4),
    }
    ratios: dict[str, float] = {}  # lungcls / MONAI in samples/s, unrounded for the goals
    # The full chain takes about a second a sample: one pass; the fair one `repeats` passes.
    for name, passes in (("full", 1), ("fair", args.repeats)):
        chain = chains[name]
        start = time.perf_counter()
        for _ in range(passes):
            theirs = [chain(v, a, c) for v, a, c in inputs]
        monai_s = (time.perf_counter() - start) / passes
        ratios[name] = monai_s / ours_s
        diffs = [float(np.abs(o - t.numpy()).mean()) for o, t in zip(ours, theirs, strict=True)]
        shapes = {str(list(t.shape)) for t in theirs} | {str(list(o.shape)) for o in ours}
        report[f"monai_{name}"] = {
            "samples_per_s": round(n / monai_s, 2),
            "ratio_lungcls_vs_monai": round(monai_s / ours_s, 2),
            "seconds_per_sample": {k: round(s / n / passes, 4) for k, s in chain.seconds.items()},
            "output_shapes": sorted(shapes),
            "mean_abs_diff": {"mean": round(float(np.mean(diffs)), 4), "max": round(max(diffs), 4)},
        }
    print(json.dumps(report, indent=2))
    full, fair = report["monai_full"], report["monai_fair"]
    print(
        f"preprocess: lungcls {report['lungcls_samples_per_s']} samples/s vs MONAI full chain "
        f"{full['samples_per_s']} samples/s: ratio {full['ratio_lungcls_vs_monai']}, "
        f"vs MONAI fair chain {fair['samples_per_s']} samples/s: ratio "
        f"{fair['ratio_lungcls_vs_monai']} (goal >= 2); outputs differ by "
        f"{full['mean_abs_diff']['mean']} (full) and {fair['mean_abs_diff']['mean']} (fair) "
        "on average (0..1 scale)"
    )
    record_goals(
        "preprocess",
        [
            Goal("samples/s, lungcls / MONAI fair chain (crop first)", ratios["fair"], ">=", 2),
            Goal("samples/s, lungcls / MONAI full-scan chain", ratios["full"], ">=", 2),
        ],
    )


if __name__ == "__main__":
    main()
