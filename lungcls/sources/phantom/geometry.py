"""Voxel grids of axial volumes in patient millimetres (DICOM LPS).

Everything in the phantom is defined in patient mm (x toward the patient's left, y toward the
back, z toward the head) and only rasterised through a `Geometry` at the end, so one seed
gives the same anatomy at any voxel spacing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Geometry:
    """Voxel grid of an axial volume with identity orientation.

    Voxel (k, j, i) sits at x = ox + i*dx, y = oy + j*dy, z = oz + k*dz, so columns run toward
    the patient's left, rows toward the back and slices toward the head.

    Attributes:
        shape_zyx: Number of slices, rows and columns.
        spacing_zyx_mm: Slice step, row spacing and column spacing in mm (also taken as the
            slice thickness for partial-volume blurring).
        origin_xyz_mm: Patient position (DICOM LPS, mm) of voxel (0, 0, 0).
    """

    shape_zyx: tuple[int, int, int]
    spacing_zyx_mm: tuple[float, float, float]
    origin_xyz_mm: tuple[float, float, float]

    def __post_init__(self) -> None:
        shape = tuple(int(n) for n in self.shape_zyx)
        spacing = tuple(float(s) for s in self.spacing_zyx_mm)
        origin = tuple(float(o) for o in self.origin_xyz_mm)
        if len(shape) != 3 or min(shape) < 1:
            raise ValueError(f"shape_zyx must be three positive sizes, got {self.shape_zyx}")
        if len(spacing) != 3 or not all(math.isfinite(s) and s > 0 for s in spacing):
            raise ValueError(f"spacing_zyx_mm must be three positive mm, got {spacing}")
        if len(origin) != 3 or not all(math.isfinite(o) for o in origin):
            raise ValueError(f"origin_xyz_mm must be three finite mm, got {origin}")
        object.__setattr__(self, "shape_zyx", shape)
        object.__setattr__(self, "spacing_zyx_mm", spacing)
        object.__setattr__(self, "origin_xyz_mm", origin)

    def voxel_to_mm(self, kji: Sequence[float]) -> tuple[float, float, float]:
        """Patient position of a (possibly fractional) voxel index.

        Args:
            kji: Slice, row and column index.

        Returns:
            (x, y, z) in mm.
        """
        k, j, i = (float(v) for v in kji)
        dz, dy, dx = self.spacing_zyx_mm
        ox, oy, oz = self.origin_xyz_mm
        return (ox + i * dx, oy + j * dy, oz + k * dz)

    def mm_to_voxel(self, xyz: Sequence[float]) -> tuple[float, float, float]:
        """Fractional voxel index of a patient position.

        Args:
            xyz: (x, y, z) in mm.

        Returns:
            (k, j, i) as floats; round them to get the nearest voxel.
        """
        x, y, z = (float(v) for v in xyz)
        dz, dy, dx = self.spacing_zyx_mm
        ox, oy, oz = self.origin_xyz_mm
        return ((z - oz) / dz, (y - oy) / dy, (x - ox) / dx)

    def axes_mm(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Voxel-center coordinates along x, y and z (1D float64 arrays, mm)."""
        nz, ny, nx = self.shape_zyx
        dz, dy, dx = self.spacing_zyx_mm
        ox, oy, oz = self.origin_xyz_mm
        return ox + dx * np.arange(nx), oy + dy * np.arange(ny), oz + dz * np.arange(nz)

    def extent_mm(self) -> tuple[tuple[float, float], tuple[float, float], tuple[float, float]]:
        """(min, max) voxel-center position along x, y and z."""
        x, y, z = self.axes_mm()
        return (x[0], x[-1]), (y[0], y[-1]), (z[0], z[-1])


def centered_geometry(
    shape_zyx: tuple[int, int, int], spacing_zyx_mm: tuple[float, float, float]
) -> Geometry:
    """Geometry whose volume center is at patient (0, 0, 0), where the phantom's chest is.

    Args:
        shape_zyx: Number of slices, rows and columns.
        spacing_zyx_mm: Slice step, row spacing and column spacing in mm.

    Returns:
        The geometry; a single-slice one sits at z = 0, through the lung hila.
    """
    nz, ny, nx = (int(n) for n in shape_zyx)
    dz, dy, dx = (float(s) for s in spacing_zyx_mm)
    origin = (-(nx - 1) * dx / 2, -(ny - 1) * dy / 2, -(nz - 1) * dz / 2)
    return Geometry((nz, ny, nx), (dz, dy, dx), origin)


def unit(v: np.ndarray) -> np.ndarray:
    """Vectors along the last axis scaled to unit length."""
    return v / np.linalg.norm(v, axis=-1, keepdims=True)
