"""A volume's grid as DICOM slices: which axis is cut into slices, and where each lies.

Only the order of the voxels changes, never their positions or values, so no voxel is
resampled:
- the slice axis is the index axis closest to the patient's z (ingest keeps axial series,
  normals within 45° of z); of the other two, the one closest to x runs along a row;
- the slices are stacked along the normal row x column cosines, the order ingest sorts
  them in: where the file's slice axis points the other way, they are taken last to first.
Each slice's ImagePositionPatient is then the volume's first voxel of that slice, exactly:
origin + direction @ (index * spacing) in the file's own index.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from lungcls.sources.dicom_writer import SlicePlane
from lungcls.sources.volumes.reader import SourceVolume, VolumeRefused

AXIAL_MIN_COSINE = math.cos(math.radians(45))  # as ingest's: beyond, a series is skipped


@dataclass(frozen=True)
class SliceStack:
    """A volume as slices: int16 HU (slices, rows, columns) and where they lie."""

    hu: np.ndarray
    plane: SlicePlane
    positions_mm: np.ndarray  # (slices, 3): each slice's first voxel, LPS
    row_cosines: np.ndarray  # along a row (increasing column index)
    column_cosines: np.ndarray  # down a column (increasing row index)
    spacing_zyx_mm: tuple[float, float, float]  # slice step, row spacing, column spacing


def slice_stack(volume: SourceVolume) -> SliceStack:
    """The volume as axial DICOM slices (see the module docstring).

    Raises:
        VolumeRefused: `non_axial_volume` when no axis lies within 45° of the patient's z.
    """
    grid = volume.grid
    axes = grid.direction  # column a: the LPS direction of index axis a
    # Ties go to k, then j: the file's own slice axis when it is as good as another.
    slice_axis = max((2, 1, 0), key=lambda a: abs(axes[2, a]))
    if abs(axes[2, slice_axis]) < AXIAL_MIN_COSINE:
        raise VolumeRefused(
            "non_axial_volume",
            "no voxel axis lies within 45° of the patient's z axis (an oblique volume): "
            "resample it to an axial grid first",
        )
    in_plane = [a for a in (0, 1, 2) if a != slice_axis]
    column_axis = max(in_plane, key=lambda a: (abs(axes[0, a]), -a))  # along x: a row
    row_axis = next(a for a in in_plane if a != column_axis)
    row_cosines, column_cosines = axes[:, column_axis], axes[:, row_axis]
    normal = np.cross(row_cosines, column_cosines)
    reverse = float(normal @ axes[:, slice_axis]) < 0

    # SimpleITK's array axis 2 - a holds index axis a.
    hu = np.transpose(volume.hu, (2 - slice_axis, 2 - row_axis, 2 - column_axis))
    count = grid.size[slice_axis]
    order = np.arange(count)[::-1] if reverse else np.arange(count)
    if reverse:
        hu = hu[::-1]
    index = np.zeros((count, 3))
    index[:, slice_axis] = order
    positions = np.stack([grid.to_mm(ijk) for ijk in index])
    spacing = (
        float(grid.spacing[slice_axis]),
        float(grid.spacing[row_axis]),
        float(grid.spacing[column_axis]),
    )
    plane = SlicePlane.volume_grid(
        positions, row_cosines, column_cosines, (spacing[1], spacing[2]), spacing[0]
    )
    return SliceStack(
        np.ascontiguousarray(hu), plane, positions, row_cosines, column_cosines, spacing
    )
