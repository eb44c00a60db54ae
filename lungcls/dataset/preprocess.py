"""Preprocessing: one stored series -> one fixed-shape, windowed, normalised tensor.

HU volume -> resample to `spacing_mm` on a patient-axis-aligned grid of `shape` voxels
centered on the nodule (labels) or else on a lung -> clip to each HU window and scale to
[0, 1], one channel per window. Resampling, cropping and padding are one trilinear
interpolation over just the voxels the patch needs, so cost and memory scale with the patch,
not the scan; outside the scan is air (-1024 HU). 2D mode samples `shape[0]`
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
from dataclasses import dataclass
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
    """HU on a patient-axis grid of `shape_zyx` voxels centered on `center_xyz_mm`, float32:
    trilinear, the edge voxel up to half a voxel beyond the scan, air further out."""
    # The grid maps to source voxels affinely: source (k, j, i) = matrix @ (z, y, x) + offset,
    # what `mm_to_voxel` gives for each grid point's position, without building the grid.
    to_source = _axes(orientation)[::-1] / np.asarray(spacing_zyx_mm, dtype=np.float64)[:, None]
    # grid axes z, y, x step along patient z, y, x (columns 2, 1, 0 of a position)
    matrix = to_source[:, ::-1] * np.asarray(out_spacing_zyx_mm, dtype=np.float64)
    middle = (np.asarray(shape_zyx, dtype=np.float64) - 1) / 2.0
    offsets = np.asarray(center_xyz_mm, dtype=np.float64) - np.asarray(origin_xyz_mm)
    offset = to_source @ offsets - matrix @ middle
    if np.count_nonzero(matrix - np.diag(np.diag(matrix))) == 0:
        return _sample_separable(volume, np.diag(matrix), offset, shape_zyx)
    return _sample_affine(volume, matrix, offset, shape_zyx)


def _sample_separable(
    volume: np.ndarray, scale: np.ndarray, offset: np.ndarray, shape_zyx: Sequence[int]
) -> np.ndarray:
    """Each patch axis along one source axis (every axial series stored as usual): trilinear
    interpolation is then linear interpolation along one axis after the other, over just the
    source voxels the patch touches, instead of eight gathers per point."""
    steps = [
        _linear_steps(scale[axis] * np.arange(n_out) + offset[axis], volume.shape[axis])
        for axis, n_out in enumerate(shape_zyx)
    ]
    if any(step is None for step in steps):
        return np.full(tuple(shape_zyx), AIR_HU, dtype=np.float32)
    region = volume[tuple(slice(step.first, step.stop) for step in steps)]
    # Interpolate the difference to air: a point outside the scan, whose weights are zero on
    # some axis, comes out as air. Shrinking axes first keeps the arrays small.
    out = region.astype(np.float64) - AIR_HU
    for axis in sorted(range(3), key=lambda a: len(steps[a].below) / region.shape[a]):
        step = steps[axis]
        along = [1, 1, 1]
        along[axis] = -1
        out = np.take(out, step.below, axis=axis) * step.below_weight.reshape(along) + np.take(
            out, step.above, axis=axis
        ) * step.above_weight.reshape(along)
    return (out + AIR_HU).astype(np.float32)


@dataclass(frozen=True)
class _LinearSteps:
    """Linear interpolation at points of one axis: the voxels below and above each point
    (indices from `first`) and their weights; voxels first..stop-1 are the ones used."""

    first: int
    stop: int
    below: np.ndarray
    above: np.ndarray
    below_weight: np.ndarray
    above_weight: np.ndarray


def _linear_steps(at: np.ndarray, n: int) -> _LinearSteps | None:
    """Steps at fractional indices `at` of an axis of n voxels: the edge voxel up to half a
    voxel beyond it, weight zero further out; None when every point is out."""
    inside = (at > -0.5) & (at < n - 0.5)
    if not inside.any():
        return None
    clipped = np.clip(at, 0, n - 1)
    below = np.floor(clipped).astype(int)
    above = np.minimum(below + 1, n - 1)
    fraction = clipped - below
    first, stop = int(below[inside].min()), int(above[inside].max()) + 1
    return _LinearSteps(  # points out of the scan keep weight zero at any index in range
        first=first,
        stop=stop,
        below=np.clip(below - first, 0, stop - first - 1),
        above=np.clip(above - first, 0, stop - first - 1),
        below_weight=np.where(inside, 1.0 - fraction, 0.0),
        above_weight=np.where(inside, fraction, 0.0),
    )


def _sample_affine(
    volume: np.ndarray, matrix: np.ndarray, offset: np.ndarray, shape_zyx: Sequence[int]
) -> np.ndarray:
    """Any orientation: point by point (`scipy.ndimage.affine_transform`), converting only
    the source voxels inside the box of the patch's corners (the map is affine, so the
    corners bound every point)."""
    corners = np.array(np.meshgrid(*[[0, n - 1] for n in shape_zyx], indexing="ij"))
    reach = matrix @ corners.reshape(3, -1) + offset[:, None]
    low = np.clip(np.floor(reach.min(axis=1)).astype(int), 0, None)
    high = np.minimum(np.ceil(reach.max(axis=1)).astype(int) + 1, volume.shape)
    if np.any(high <= low):
        return np.full(tuple(shape_zyx), AIR_HU, dtype=np.float32)
    region = volume[low[0] : high[0], low[1] : high[1], low[2] : high[2]]
    local = offset - low
    patch = ndimage.affine_transform(
        region,
        matrix,
        local,
        output_shape=tuple(shape_zyx),
        order=1,
        mode="nearest",
        output=np.float32,
    )
    if np.all((reach > -0.5) & (reach < np.asarray(volume.shape)[:, None] - 0.5)):
        return patch  # every corner inside the scan, so every point
    grids = np.ogrid[tuple(slice(0, n) for n in shape_zyx)]
    for axis in range(3):
        at = offset[axis] + sum(matrix[axis, a] * grids[a] for a in range(3))
        patch[(at <= -0.5) | (at >= volume.shape[axis] - 0.5)] = AIR_HU
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
