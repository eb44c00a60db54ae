"""Reading volumes and masks with SimpleITK: int16 HU and the voxel grid in LPS millimetres.

SimpleITK (ITK) reports every format in the same patient space, DICOM's LPS: for NIfTI it
turns the header's RAS affine into LPS (x and y negated), for NRRD it honours the `space`
field. A voxel's position is `origin + direction @ (index * spacing)` with the index
(i, j, k) in the file's own order (i fastest); SimpleITK's arrays are (k, j, i).

Each format is read by its own ImageIO, chosen by the suffix, so a file with a wrong suffix
is refused rather than read as something else (a PNG named `.nii` is no volume). ITK's
warnings are not displayed: they can quote a file's path.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from lungcls.sources.volumes.rows import volume_suffix

_IMAGE_IO = {
    ".nii.gz": "NiftiImageIO",
    ".nii": "NiftiImageIO",
    ".mha": "MetaImageIO",
    ".mhd": "MetaImageIO",
    ".nrrd": "NrrdImageIO",
    ".nhdr": "NrrdImageIO",
}
HU_MIN, HU_MAX = -32768, 32767  # what ingest stores (int16)
ORTHONORMAL_TOLERANCE = 1e-4
# A mask is on the volume's grid when these agree (a mask written by another tool may round
# the header's decimals differently).
GRID_TOLERANCE_MM = 0.01
DIRECTION_TOLERANCE = 1e-4


class VolumeRefused(ValueError):
    """A volume or mask cannot be imported; `code` is its refusal code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Grid:
    """Where a volume's voxels lie: size (i, j, k); origin (the first voxel's center),
    spacing per index axis and direction (column a: index axis a) in LPS mm."""

    size: tuple[int, int, int]
    origin: np.ndarray
    spacing: np.ndarray
    direction: np.ndarray

    def to_mm(self, ijk: np.ndarray | tuple[float, ...]) -> np.ndarray:
        """The LPS position of a (fractional) index (i, j, k)."""
        return self.origin + self.direction @ (np.asarray(ijk, dtype=np.float64) * self.spacing)

    def to_index(self, xyz_mm: np.ndarray | tuple[float, ...]) -> np.ndarray:
        """The fractional index (i, j, k) of an LPS position."""
        offset = np.asarray(xyz_mm, dtype=np.float64) - self.origin
        return np.linalg.solve(self.direction, offset) / self.spacing

    def contains(self, ijk: np.ndarray) -> bool:
        """Whether a fractional index lies within the volume (voxels reach half a step
        beyond their centers)."""
        return bool(np.all(ijk >= -0.5) and np.all(ijk <= np.asarray(self.size) - 0.5))

    @property
    def center_mm(self) -> np.ndarray:
        return self.to_mm((np.asarray(self.size, dtype=np.float64) - 1) / 2)

    def matches(self, other: Grid) -> bool:
        return (
            self.size == other.size
            and np.allclose(self.origin, other.origin, rtol=0, atol=GRID_TOLERANCE_MM)
            and np.allclose(self.spacing, other.spacing, rtol=0, atol=GRID_TOLERANCE_MM / 10)
            and np.allclose(self.direction, other.direction, rtol=0, atol=DIRECTION_TOLERANCE)
        )


@dataclass(frozen=True)
class SourceVolume:
    """A volume as read: int16 HU in SimpleITK's array order (k, j, i), and its grid."""

    hu: np.ndarray
    grid: Grid


def read_volume(path: Path, code_missing: str = "volume_missing") -> SourceVolume:
    """A CT volume in HU. Float voxels are rounded to whole HU (ingest keeps int16 HU).

    Raises:
        VolumeRefused: `code_missing`, `volume_unreadable`, `unsupported_volume` (not one
            3-D grey volume, or a sheared grid) or `hu_out_of_range` (values outside int16
            or not finite).
    """
    image, grid = _read_image(path, code_missing, "volume_unreadable")
    values = sitk.GetArrayViewFromImage(image)
    if values.dtype.kind not in "iufb":
        raise VolumeRefused("unsupported_volume", f"{values.dtype} voxels: expected HU numbers")
    if values.dtype.kind == "f":
        if not np.isfinite(values).all():
            raise VolumeRefused("hu_out_of_range", "the volume holds NaN or infinite values")
        values = np.rint(values)
    if values.size and (values.min() < HU_MIN or values.max() > HU_MAX):
        raise VolumeRefused(
            "hu_out_of_range",
            f"values from {values.min():g} to {values.max():g}: HU must fit {HU_MIN}..{HU_MAX}",
        )
    return SourceVolume(np.asarray(values, dtype=np.int16).copy(), grid)


def read_mask(path: Path, grid: Grid) -> np.ndarray:
    """A mask on `grid` as booleans (k, j, i): voxels > 0 are the nodule.

    Raises:
        VolumeRefused: `mask_missing`, `mask_unreadable`, `mask_grid_mismatch` or
            `empty_mask`.
    """
    image, own = _read_image(path, "mask_missing", "mask_unreadable")
    if not own.matches(grid):
        raise VolumeRefused(
            "mask_grid_mismatch",
            "the mask is not on the volume's grid (size, origin, spacing or direction differ)",
        )
    values = sitk.GetArrayViewFromImage(image)
    mask = np.asarray(values > 0) if values.dtype.kind in "iufb" else None
    if mask is None or not mask.any():
        raise VolumeRefused("empty_mask", "the mask marks no voxel (none above 0)")
    return mask


def mask_center_mm(mask: np.ndarray, grid: Grid) -> np.ndarray:
    """The mask's centroid in LPS mm; when the voxel there is outside the mask (a crescent),
    the center of the mask voxel nearest to the centroid, so the center is always on the
    nodule."""
    kji = np.argwhere(mask).astype(np.float64)
    centroid = kji.mean(axis=0)
    nearest = tuple(np.rint(centroid).astype(int))
    if not mask[nearest]:
        distances = (((kji - centroid) * grid.spacing[::-1]) ** 2).sum(axis=1)
        centroid = kji[int(np.argmin(distances))]
    return grid.to_mm(centroid[::-1])


def _read_image(path: Path, code_missing: str, code_unreadable: str) -> tuple[sitk.Image, Grid]:
    suffix = volume_suffix(path.name)
    if not path.is_file():
        raise VolumeRefused(code_missing, "no such file in SRC")
    if suffix is None:  # rows are checked before; a guard for other callers
        raise VolumeRefused(code_unreadable, "not a NIfTI, MetaImage or NRRD file name")
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        image = sitk.ReadImage(str(path), imageIO=_IMAGE_IO[suffix])
    except RuntimeError:  # ITK's message quotes the path: not repeated
        raise VolumeRefused(
            code_unreadable, f"SimpleITK cannot read it as {_IMAGE_IO[suffix][:-7]}"
        ) from None
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise VolumeRefused(
            "unsupported_volume",
            f"a {image.GetDimension()}-D image with {image.GetNumberOfComponentsPerPixel()} "
            "value(s) per voxel: expected one 3-D grey volume",
        )
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    if not np.allclose(direction.T @ direction, np.eye(3), atol=ORTHONORMAL_TOLERANCE):
        raise VolumeRefused(
            "unsupported_volume", "the voxel axes are not orthogonal (a sheared grid)"
        )
    size = image.GetSize()
    grid = Grid(
        (int(size[0]), int(size[1]), int(size[2])),
        np.asarray(image.GetOrigin(), dtype=np.float64),
        np.asarray(image.GetSpacing(), dtype=np.float64),
        direction,
    )
    if np.any(grid.spacing <= 0):
        raise VolumeRefused("unsupported_volume", "a voxel spacing is not positive")
    return image, grid
