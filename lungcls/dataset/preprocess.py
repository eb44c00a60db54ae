"""Preprocessing: one stored series -> one fixed-shape, windowed, normalised tensor.

HU volume -> resample to `spacing_mm` on a patient-axis-aligned grid of `shape` voxels
centered on the nodule (labels) or else on a lung -> clip to each HU window and scale to
[0, 1], one channel per window. Resampling, cropping and padding are one trilinear
`map_coordinates` call over just the voxels the patch needs, so cost and memory scale with
the patch, not the scan; outside the scan is air (-1024 HU). 2D mode samples `shape[0]`
axial slices through the center and stacks them with the windows as channels; with
`crop_center: image` the patch is centered on the image instead, so a whole slice at a
coarse `spacing_mm` becomes one tensor (image-level labels, e.g. `lungcls import-images`).

Deterministic: the same series and settings give the same bytes. `config_hash` names the
settings; a dataset version records it, and a different hash never reuses tensors.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Protocol

import numpy as np
from scipy import ndimage

from lungcls.config import PreprocessSettings

AIR_HU = -1024.0
LUNG_THRESHOLD_HU = -400.0
MASK_STEP_MM = 4.0  # the lung mask is found on a coarse grid: cheap and good enough to aim


class SeriesGeometry(Protocol):
    """Where a series' voxels lie in the patient, and the labelled nodule if any: what
    preprocessing needs besides the HU. A stored `SeriesRecord` is one; so is predict's
    decoded `CTVolume`, aimed at a center given on the command line or in labels.csv."""

    @property
    def spacing_zyx_mm(self) -> Sequence[float]: ...

    @property
    def origin_xyz_mm(self) -> Sequence[float]: ...  # the center of the first voxel

    @property
    def orientation(self) -> Sequence[float]: ...  # row cosines then column cosines

    @property
    def nodule_center_xyz_mm(self) -> Sequence[float] | None: ...


# Settings added after datasets were built with this module, with the value that reproduces
# the behaviour before them: at that value they stay out of the hash, so existing versions
# keep their hash and their shards are reused.
_LATER_SETTINGS = {"crop_center": "nodule"}


def config_hash(config: PreprocessSettings) -> str:
    """A short stable name for the preprocessing settings."""
    data = config.model_dump(mode="json")
    for name, before in _LATER_SETTINGS.items():
        if data[name] == before:
            del data[name]
    canonical = json.dumps(data, sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def tensor_shape(config: PreprocessSettings) -> tuple[int, ...]:
    """(channels, z, y, x) in 3D; (channels x slices, y, x) in 2D."""
    channels = len(config.windows)
    depth, rows, columns = config.shape
    if config.mode == "2d":
        return (channels * depth, rows, columns)
    return (channels, depth, rows, columns)


def _axes(orientation: Sequence[float]) -> np.ndarray:
    """Unit vectors of increasing column, row and slice index, as rows of a 3x3 matrix."""
    row_cosines = np.asarray(orientation[:3], dtype=np.float64)
    column_cosines = np.asarray(orientation[3:], dtype=np.float64)
    return np.stack([row_cosines, column_cosines, np.cross(row_cosines, column_cosines)])


def voxel_to_mm(
    kji: Sequence[float],
    origin_xyz_mm: Sequence[float],
    orientation: Sequence[float],
    spacing_zyx_mm: Sequence[float],
) -> np.ndarray:
    """Patient position (x, y, z) of a (fractional) voxel index (k, j, i)."""
    k, j, i = kji
    dz, dy, dx = spacing_zyx_mm
    steps = np.array([i * dx, j * dy, k * dz])
    return np.asarray(origin_xyz_mm, dtype=np.float64) + steps @ _axes(orientation)


def mm_to_voxel(
    points_xyz_mm: np.ndarray,
    origin_xyz_mm: Sequence[float],
    orientation: Sequence[float],
    spacing_zyx_mm: Sequence[float],
) -> np.ndarray:
    """Fractional voxel indices (k, j, i) along the last axis for points (..., 3) in mm."""
    offsets = np.asarray(points_xyz_mm, dtype=np.float64) - np.asarray(origin_xyz_mm)
    i, j, k = np.moveaxis(offsets @ _axes(orientation).T, -1, 0)
    dz, dy, dx = spacing_zyx_mm
    return np.stack([k / dz, j / dy, i / dx], axis=-1)


def lung_center_mm(
    volume: np.ndarray,
    origin_xyz_mm: Sequence[float],
    orientation: Sequence[float],
    spacing_zyx_mm: Sequence[float],
) -> np.ndarray:
    """Center of the bounding box of the largest lung, from a threshold mask.

    Air touching the image border is outside the body and is dropped. The largest remaining
    component is one lung (or both, when they touch): aiming at the box of both would put
    the patch on the mediastinum.
    """
    steps = [max(1, round(MASK_STEP_MM / s)) for s in spacing_zyx_mm]
    coarse = volume[:: steps[0], :: steps[1], :: steps[2]] < LUNG_THRESHOLD_HU
    labels, count = ndimage.label(coarse)
    border = np.unique(
        np.concatenate(
            [
                labels[:, 0, :].ravel(),
                labels[:, -1, :].ravel(),
                labels[:, :, 0].ravel(),
                labels[:, :, -1].ravel(),
            ]
        )
    )
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    sizes[border] = 0
    sizes[0] = 0
    if count == 0 or sizes.max() == 0:
        center_index = (np.asarray(volume.shape) - 1) / 2.0
    else:
        box = ndimage.find_objects((labels == sizes.argmax()).astype(np.int8))[0]
        center_index = np.array(
            [(s.start + s.stop - 1) / 2.0 * step for s, step in zip(box, steps, strict=True)]
        )
    return voxel_to_mm(center_index, origin_xyz_mm, orientation, spacing_zyx_mm)


def sample_patch(
    volume: np.ndarray,
    origin_xyz_mm: Sequence[float],
    orientation: Sequence[float],
    spacing_zyx_mm: Sequence[float],
    center_xyz_mm: Sequence[float],
    shape_zyx: Sequence[int],
    out_spacing_zyx_mm: Sequence[float],
) -> np.ndarray:
    """HU on a patient-axis grid of `shape_zyx` voxels centered on `center_xyz_mm`, float32."""
    axes = [
        (np.arange(n) - (n - 1) / 2.0) * s
        for n, s in zip(shape_zyx, out_spacing_zyx_mm, strict=True)
    ]
    z, y, x = np.meshgrid(*axes, indexing="ij")
    points = np.stack([x, y, z], axis=-1) + np.asarray(center_xyz_mm, dtype=np.float64)
    index = np.moveaxis(mm_to_voxel(points, origin_xyz_mm, orientation, spacing_zyx_mm), -1, 0)

    # Only the source voxels the patch touches are converted and interpolated.
    low = np.clip(np.floor(index.reshape(3, -1).min(axis=1)).astype(int), 0, None)
    high = np.minimum(np.ceil(index.reshape(3, -1).max(axis=1)).astype(int) + 1, volume.shape)
    inside = np.all(
        [(index[a] > -0.5) & (index[a] < volume.shape[a] - 0.5) for a in range(3)], axis=0
    )
    if np.any(high <= low):
        return np.full(tuple(shape_zyx), AIR_HU, dtype=np.float32)
    region = volume[low[0] : high[0], low[1] : high[1], low[2] : high[2]].astype(np.float32)
    local = index - low.reshape(3, 1, 1, 1)
    patch = ndimage.map_coordinates(region, local, order=1, mode="nearest", output=np.float32)
    patch[~inside] = AIR_HU
    return patch


def apply_windows(hu: np.ndarray, windows: Sequence[tuple[float, float]]) -> np.ndarray:
    """One channel per (center, width) window, clipped and scaled to [0, 1]."""
    channels = []
    for center, width in windows:
        low = center - width / 2.0
        channels.append((np.clip(hu, low, low + width) - low) / width)
    return np.stack(channels).astype(np.float32)


def image_center_mm(series: SeriesGeometry, volume: np.ndarray) -> np.ndarray:
    """Patient position of the center of the series' voxel grid."""
    middle = (np.asarray(volume.shape, dtype=np.float64) - 1) / 2.0
    return voxel_to_mm(middle, series.origin_xyz_mm, series.orientation, series.spacing_zyx_mm)


def crop_center_mm(series: SeriesGeometry, volume: np.ndarray, how: str = "nodule") -> np.ndarray:
    """Where to center the patch: the labelled nodule, else the largest lung; or, with
    `how="image"`, the center of the image (for whole slices with image-level labels)."""
    if how == "image":
        return image_center_mm(series, volume)
    if series.nodule_center_xyz_mm is not None:
        return np.asarray(series.nodule_center_xyz_mm, dtype=np.float64)
    return lung_center_mm(volume, series.origin_xyz_mm, series.orientation, series.spacing_zyx_mm)


def preprocess_series(
    series: SeriesGeometry, volume: np.ndarray, config: PreprocessSettings
) -> np.ndarray:
    """The model input for one series (see `tensor_shape`), float32 in [0, 1].

    `volume` is the series' HU (z, y, x): a `SeriesRecord`'s `volume`, a `CTVolume`'s `hu`.
    """
    center = crop_center_mm(series, volume, config.crop_center)
    hu = sample_patch(
        volume,
        series.origin_xyz_mm,
        series.orientation,
        series.spacing_zyx_mm,
        center,
        config.shape,
        config.spacing_mm,
    )
    tensor = apply_windows(hu, config.windows)
    return tensor.reshape(tensor_shape(config))
