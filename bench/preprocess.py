"""Preprocessing throughput: lungcls vs MONAI's equivalent transform chain, same volumes.

    .venv/bin/pip install -c constraints.txt -e '.[bench]'   # MONAI, once
    .venv/bin/python bench/preprocess.py [--per-geometry 3] [--repeats 3]

Writes synthetic series in four geometries (64-96 slices of 256x256 or 512x512, 0.7-1.4 mm
pixels, 1-2.5 mm slices), ingests them (in-process), loads the series from the store,
then times, in one process on the same int16 volumes and the default settings (1 mm
isotropic, 48^3, lung window -1350..150 HU):
- lungcls: `preprocess_series(series, volume, settings)`, center finding included;
- MONAI: MetaTensor (affine from the series geometry) -> `Spacing` (1 mm, bilinear) ->
  `ScaleIntensityRange` (-1350..150 -> 0..1, clip) -> `SpatialCrop` around the same center
  + `BorderPad` (air, per side, so the center stays put); the center is given, not timed.
Prints JSON (samples/s of each, their ratio, MONAI's time per transform, how far the two
outputs differ) and a one-line summary with the ratio and its goal (>= 2).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

try:
    import torch
    from monai.data import MetaTensor
    from monai.transforms import BorderPad, ScaleIntensityRange, Spacing, SpatialCrop
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


class MonaiChain:
    """The MONAI transforms, timed one by one (seconds summed over calls)."""

    def __init__(self, config: PreprocessSettings) -> None:
        (center, width), self.shape = config.windows[0], np.asarray(config.shape)
        low = center - width / 2.0
        self.spacing = Spacing(pixdim=config.spacing_mm, mode="bilinear", padding_mode="border")
        self.scale = ScaleIntensityRange(
            a_min=low, a_max=low + width, b_min=0.0, b_max=1.0, clip=True
        )
        self.air = float(np.clip((AIR_HU - low) / width, 0.0, 1.0))
        self.seconds = {
            "to_metatensor": 0.0,
            "Spacing": 0.0,
            "ScaleIntensityRange": 0.0,
            "crop_pad": 0.0,
        }

    def _tick(self, name: str, start: float) -> float:
        now = time.perf_counter()
        self.seconds[name] += now - start
        return now

    def __call__(
        self, volume: np.ndarray, affine: np.ndarray, center_xyz: np.ndarray
    ) -> torch.Tensor:
        t = time.perf_counter()
        image = MetaTensor(
            torch.from_numpy(volume.astype(np.float32))[None], affine=torch.from_numpy(affine)
        )
        t = self._tick("to_metatensor", t)
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
    parser.add_argument("--repeats", type=int, default=3, help="timed passes of lungcls")
    args = parser.parse_args()
    config = PreprocessSettings()

    Path(".lungcls-work").mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bench-preprocess-", dir=".lungcls-work") as tmp:
        print(f"writing and ingesting {args.per_geometry * len(GEOMETRIES)} synthetic series…")
        rows = make_series(Path(tmp), args.per_geometry)
    volumes = [r.volume for r in rows]
    centers = [crop_center_mm(r, v) for r, v in zip(rows, volumes, strict=True)]
    affines = [affine_kji(r) for r in rows]
    chain = MonaiChain(config)

    preprocess_series(rows[0], volumes[0], config)  # warm-up (imports, caches)
    chain(volumes[0], affines[0], centers[0])
    chain.seconds = dict.fromkeys(chain.seconds, 0.0)

    start = time.perf_counter()
    for _ in range(args.repeats):
        ours = [preprocess_series(r, v, config) for r, v in zip(rows, volumes, strict=True)]
    ours_s = (time.perf_counter() - start) / args.repeats

    start = time.perf_counter()
    theirs = [chain(v, a, c) for v, a, c in zip(volumes, affines, centers, strict=True)]
    monai_s = time.perf_counter() - start

    diffs = [float(np.abs(o - t.numpy()).mean()) for o, t in zip(ours, theirs, strict=True)]
    shapes = {str(list(t.shape)) for t in theirs} | {str(list(o.shape)) for o in ours}
    n = len(rows)
    report = {
        "series": n,
        "volumes": sorted({f"{v.shape[0]}x{v.shape[1]}x{v.shape[2]}" for v in volumes}),
        "output_shapes": sorted(shapes),
        "torch_threads": torch.get_num_threads(),
        "lungcls_samples_per_s": round(n / ours_s, 2),
        "monai_samples_per_s": round(n / monai_s, 2),
        "ratio_lungcls_vs_monai": round(monai_s / ours_s, 2),
        "monai_seconds_per_sample": {k: round(s / n, 4) for k, s in chain.seconds.items()},
        "lungcls_seconds_per_sample": round(ours_s / n, 4),
        "mean_abs_diff": {"mean": round(float(np.mean(diffs)), 4), "max": round(max(diffs), 4)},
    }
    print(json.dumps(report, indent=2))
    print(
        f"preprocess: lungcls {report['lungcls_samples_per_s']} samples/s vs MONAI "
        f"{report['monai_samples_per_s']} samples/s: ratio {report['ratio_lungcls_vs_monai']} "
        f"(goal >= 2); outputs differ by {report['mean_abs_diff']['mean']} on average (0..1 scale)"
    )


if __name__ == "__main__":
    main()
