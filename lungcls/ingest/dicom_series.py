"""From DICOM files to checked CT volumes in Hounsfield units.

`read_slice` turns one file into a `CTSlice` (or a `Problem` with a stable code), and
`assemble_series` sorts the slices of one SeriesInstanceUID along the slice normal, checks
that the geometry is one regular grid, and stacks the HU pixels into an int16 volume.
This is the one way lungcls opens DICOM: ingest and predict both use it.
"""

from __future__ import annotations

import io
from collections.abc import Container, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import get_decoder
from pydicom.uid import UID

from lungcls.ingest.deid import kept_metadata

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
HU_MIN, HU_MAX = -32768, 32767


@dataclass(frozen=True)
class Problem:
    """Why a file or a series was refused: a stable `code` and a message for people."""

    code: str
    message: str


@dataclass(frozen=True)
class Skipped:
    """A file that is fine but not an axial CT slice (a localizer, a dose report, …): counted
    under its `code`, never an error and never quarantined."""

    code: str
    message: str


@dataclass
class CTSlice:
    """One decoded CT slice. Holds raw UIDs: it never leaves the ingest worker."""

    member: str
    sha256: str
    sop_uid: str
    series_uid: str
    study_uid: str
    patient_id: str
    position_xyz_mm: np.ndarray
    orientation: np.ndarray  # row cosines then column cosines
    pixel_spacing_mm: tuple[float, float]  # (row spacing, column spacing)
    hu: np.ndarray  # int16 (rows, columns)
    metadata: dict[str, Any] = field(default_factory=dict)
    transfer_syntax: str = ""


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


def _parse(data: bytes) -> Dataset:
    """Parse a file, accepting files without the 128-byte preamble only if they look like CT."""
    try:
        return pydicom.dcmread(io.BytesIO(data))
    except InvalidDicomError:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
        if "SOPClassUID" not in ds or "PixelData" not in ds:
            raise
        return ds


def read_file(
    member: str, data: bytes, sha256: str, known_series: Container[str] = ()
) -> list[CTSlice] | Problem | Skipped:
    """Decode one DICOM file into its CT slices in HU (one per frame), or say why not."""
    decoded = read_slice(member, data, sha256, known_series)
    return decoded if isinstance(decoded, Problem) else [decoded]


def read_slice(
    member: str, data: bytes, sha256: str, known_series: Container[str] = ()
) -> CTSlice | Problem:
    """Decode one DICOM file into a CT slice in HU, or say precisely why not.

    Series-level metadata is only extracted for the first slice of each series (those not in
    `known_series`): attribute access is a large share of pydicom's cost per file.
    """
    has_preamble = len(data) >= 132 and data[128:132] == b"DICM"
    try:
        ds = _parse(data)
    except InvalidDicomError:
        return Problem("not_dicom", "not a DICOM file (no DICM preamble, no readable header)")
    except Exception as error:  # pydicom raises many types on broken bytes
        if has_preamble:
            return Problem("truncated", f"DICOM header cannot be read to the end: {error}")
        return Problem("not_dicom", f"not a DICOM file: {error}")
    problem = _header_problem(ds)
    if problem is not None:
        return problem
    syntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    pixels = _pixels(ds, syntax)
    if isinstance(pixels, Problem):
        return pixels

    with_metadata = str(ds.SeriesInstanceUID) not in known_series
    slope, intercept = float(ds.RescaleSlope), float(ds.RescaleIntercept)
    if slope == 1.0 and intercept.is_integer() and pixels.dtype.kind in "iu":
        hu = pixels.astype(np.int32) + int(intercept)  # the usual case: exact and cheaper
    else:
        hu = np.rint(pixels.astype(np.float32) * slope + intercept)
    return CTSlice(
        member=member,
        sha256=sha256,
        sop_uid=str(ds.SOPInstanceUID),
        series_uid=str(ds.SeriesInstanceUID),
        study_uid=str(ds.StudyInstanceUID),
        patient_id=str(ds.get("PatientID", "")),
        position_xyz_mm=np.asarray([float(v) for v in ds.ImagePositionPatient]),
        orientation=np.asarray([float(v) for v in ds.ImageOrientationPatient]),
        pixel_spacing_mm=(float(ds.PixelSpacing[0]), float(ds.PixelSpacing[1])),
        hu=np.clip(hu, HU_MIN, HU_MAX).astype(np.int16),
        metadata=kept_metadata(ds) if with_metadata else {},
        transfer_syntax=str(syntax or ""),
    )


def _header_problem(ds: Dataset) -> Problem | None:
    """Why a parsed file is not a usable CT slice (modality, UIDs, geometry, rescale)."""
    modality = str(ds.get("Modality", ""))
    sop_class = str(ds.get("SOPClassUID", ""))
    if modality != "CT" or sop_class != CT_IMAGE_STORAGE:
        return Problem(
            "not_ct",
            f"modality {modality or '(none)'} with SOP class {sop_class or '(none)'}; "
            f"expected CT Image Storage ({CT_IMAGE_STORAGE})",
        )
    for keyword in ("SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID"):
        if not ds.get(keyword):
            return Problem("missing_uid", f"{keyword} is missing")
    missing = [
        k
        for k in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing")
        if k not in ds
    ]
    if missing:
        return Problem("missing_geometry", f"geometry attributes missing: {', '.join(missing)}")
    if "RescaleSlope" not in ds or "RescaleIntercept" not in ds:
        return Problem("missing_rescale", "RescaleSlope/RescaleIntercept missing: HU unknown")
    if "PixelData" not in ds:
        return Problem("missing_pixel_data", "the file has no PixelData")
    return None


def _pixels(ds: Dataset, syntax: UID | None) -> np.ndarray | Problem:
    """The stored pixel values of one 2D frame, or why they cannot be decoded."""
    if syntax is not None and syntax.is_compressed:
        try:
            available = get_decoder(syntax).is_available
        except NotImplementedError:
            available = False
        if not available:
            return Problem(
                "no_decoder",
                f"pixel data compressed as {syntax.name} ({syntax}); no installed decoder "
                "handles it (install the matching pylibjpeg/pydicom plugin)",
            )
    try:
        pixels = ds.pixel_array
    except Exception as error:
        expected = int(ds.Rows) * int(ds.Columns) * int(ds.get("BitsAllocated", 16)) // 8
        if syntax is not None and not syntax.is_compressed and len(ds.PixelData) < expected:
            return Problem(
                "truncated",
                f"pixel data holds {len(ds.PixelData)} of {expected} bytes: file truncated",
            )
        return Problem("pixel_decode_error", f"pixel data cannot be decoded: {error}")
    if pixels.ndim != 2:
        return Problem("unsupported_pixels", f"expected one 2D frame, got shape {pixels.shape}")
    return pixels


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
    if not np.isclose(np.linalg.norm(normal), 1.0, atol=1e-3):
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
