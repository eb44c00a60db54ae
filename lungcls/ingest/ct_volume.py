"""The CT slices of one series -> one checked volume on a regular grid.

`assemble_series` drops files delivered twice, sorts the slices along the slice normal,
checks that their geometry is one regular grid (same matrix, orientation and pixel spacing,
even steps, no in-plane drift) and stacks their HU into an int16 volume. Ingest and predict
both use it, on the slices `lungcls.ingest.dicom_series.read_file` decoded.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from lungcls.ingest.dicom_series import CTSlice, Problem
from lungcls.ingest.multiframe import UNIT_TOLERANCE


@dataclass
class CTVolume:
    """A checked series: int16 HU volume (z, y, x) and its geometry, still with raw UIDs."""

    slices: list[CTSlice]
    hu: np.ndarray
    spacing_zyx_mm: tuple[float, float, float]
    duplicates_dropped: int
    metadata: dict[str, Any]  # series-level, allow-listed attributes
    # Where predict aims the patch (a center given by the user or labels.csv); ingest stores
    # the labelled center in the series store instead.
    nodule_center_xyz_mm: tuple[float, float, float] | None = None

    @property
    def first(self) -> CTSlice:
        return self.slices[0]

    @property
    def origin_xyz_mm(self) -> tuple[float, float, float]:
        """Patient position of the first voxel (the first slice after sorting)."""
        x, y, z = (float(v) for v in self.first.position_xyz_mm)
        return (x, y, z)

    @property
    def orientation(self) -> tuple[float, ...]:
        """Row cosines then column cosines, shared by every slice (checked on assembly)."""
        return tuple(float(v) for v in self.first.orientation)


def assemble_series(slices: Sequence[CTSlice], tolerance_mm: float = 0.05) -> CTVolume | Problem:
    """Sort one series' slices along the slice normal and check they form one regular grid."""
    by_uid: dict[str, CTSlice] = {}
    duplicates = 0
    for s in slices:
        seen = by_uid.get(s.sop_uid)
        if seen is None:
            by_uid[s.sop_uid] = s
        elif seen.sha256 == s.sha256:
            duplicates += 1  # the same file delivered twice: harmless
        else:
            return Problem(
                "conflicting_duplicate_sop",
                f"two different files share one SOPInstanceUID ({seen.member}, {s.member})",
            )
    unique = list(by_uid.values())
    first = unique[0]
    metadata = next((s.metadata for s in unique if s.metadata), {})

    if len({s.hu.shape for s in unique}) > 1:
        return Problem("inconsistent_dimensions", "slices differ in rows/columns")
    if any(not np.allclose(s.orientation, first.orientation, atol=1e-4) for s in unique):
        return Problem("inconsistent_orientation", "slices differ in ImageOrientationPatient")
    if any(not np.allclose(s.pixel_spacing_mm, first.pixel_spacing_mm, atol=1e-4) for s in unique):
        return Problem("inconsistent_spacing", "slices differ in PixelSpacing")

    row_cosines, column_cosines = first.orientation[:3], first.orientation[3:]
    normal = np.cross(row_cosines, column_cosines)
    if not np.isclose(np.linalg.norm(normal), 1.0, atol=UNIT_TOLERANCE):
        return Problem("missing_geometry", "ImageOrientationPatient is not two unit vectors")
    unique.sort(key=lambda s: float(s.position_xyz_mm @ normal))
    along = np.array([s.position_xyz_mm @ normal for s in unique])

    if len(unique) == 1:
        thickness = metadata.get("slice_thickness_mm")
        if not thickness:
            return Problem("missing_geometry", "single-slice series without SliceThickness")
        step = float(thickness)
    else:
        steps = np.diff(along)
        if steps.min() < tolerance_mm:
            return Problem("duplicate_position", "two slices share one position along the normal")
        step = float(np.median(steps))
        worst = float(np.abs(steps - step).max())
        if worst > max(tolerance_mm, 0.01 * step):
            return Problem(
                "slice_gap",
                f"slice steps vary from {steps.min():.3f} to {steps.max():.3f} mm "
                f"(median {step:.3f}); expected a regular grid within {tolerance_mm} mm",
            )
        # Positions must line up along the normal, or the stack is sheared (gantry tilt).
        offsets = [s.position_xyz_mm - (s.position_xyz_mm @ normal) * normal for s in unique]
        if float(np.abs(np.asarray(offsets) - offsets[0]).max()) > max(tolerance_mm, 0.5):
            return Problem(
                "inconsistent_orientation", "slice positions drift in-plane (tilted or sheared)"
            )

    volume = np.stack([s.hu for s in unique])
    row_spacing, column_spacing = first.pixel_spacing_mm
    return CTVolume(unique, volume, (step, row_spacing, column_spacing), duplicates, metadata)
