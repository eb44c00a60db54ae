"""From DICOM files to checked CT volumes in Hounsfield units.

`read_file` turns one file into its CT slices (one per frame), a `Skipped` (a fine file that
is not an axial CT image: a localizer, a dose report, a PET series beside the CT, …) or a
`Problem` with a stable code; it never raises, whatever the bytes. `assemble_series` sorts
the slices of one SeriesInstanceUID along the slice normal, checks that the geometry is one
regular grid, and stacks the HU pixels into an int16 volume. This is the one way lungcls
opens DICOM: ingest and predict both use it.
"""

from __future__ import annotations

import dataclasses
import io
import math
from collections.abc import Container, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pydicom
import pydicom.config
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import get_decoder
from pydicom.uid import UID

from lungcls.ingest.deid import kept_metadata
from lungcls.ingest.multiframe import (
    CT_CLASSES,
    CT_IMAGE_STORAGE,
    UNIT_TOLERANCE,
    FrameHeader,
    HeaderError,
    frame_headers,
    is_multiframe,
    multiframe_metadata,
    uid,
)

__all__ = [
    "CT_IMAGE_STORAGE",
    "CTSlice",
    "CTVolume",
    "Problem",
    "Skipped",
    "assemble_series",
    "read_file",
]

# pydicom's value validation logs and warns invalid values verbatim (a malformed UID or name
# would reach the logs); read_file checks every value it uses itself.
pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE

HU_MIN, HU_MAX = -32768, 32767
UNDEFINED_LENGTH = 0xFFFFFFFF
# A slice whose normal is within 45° of the patient's z axis is axial (gantry tilt included);
# beyond that it is a coronal, sagittal or oblique reconstruction.
AXIAL_MIN_COSINE = math.cos(math.radians(45))

SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"  # and its .1-.4 multi-frame variants
NON_IMAGE_CLASS_PREFIXES = (
    "1.2.840.10008.5.1.4.1.1.88.",  # structured reports (dose reports) and key objects
    "1.2.840.10008.5.1.4.1.1.11.",  # presentation states
    "1.2.840.10008.5.1.4.1.1.481.",  # RT dose, structures, plans
    "1.2.840.10008.5.1.4.1.1.104.",  # encapsulated PDF, CDA, 3D models
    "1.2.840.10008.5.1.4.1.1.66",  # raw data, registrations, fiducials, segmentations
    "1.2.840.10008.5.1.4.1.1.9.",  # waveforms
    "1.2.840.10008.5.1.4.1.1.200.",  # CT protocols
)
NON_IMAGE_MODALITIES = {"SR", "KO", "PR", "DOC", "REG", "FID", "SEG", "PLAN", "RWV", "ECG"}
NON_IMAGE_MODALITIES |= {"RTDOSE", "RTSTRUCT", "RTPLAN", "RTRECORD"}
# Imaging modalities that sit beside the CT in real exports (PET/CT, a prior MR, X-rays).
OTHER_IMAGING_MODALITIES = {"PT", "MR", "NM", "US", "XA", "RF", "CR", "DX", "MG", "IO", "PX"}
OTHER_IMAGING_MODALITIES |= {"OT", "RG", "XC", "ES", "GM", "SM", "OP", "OPT", "RTIMAGE"}
LOCALIZER_TYPES = {"LOCALIZER", "SCOUT"}
# ImageType values of images that are not a slice of HU in one plane: projections (MIP,
# MinIP; MAXIMUM/MINIMUM are the Enhanced CT terms for them), renderings, curved reformats and
# perfusion maps. Plain reformats (MPR, REFORMATTED, AVERAGE slabs) keep HU per voxel: the
# axial ones are kept and the others are skipped by their orientation.
DERIVED_TYPES = {"MIP", "MINIP", "MAXIMUM", "MINIMUM", "PROJECTION IMAGE", "VOLUME RENDER"}
DERIVED_TYPES |= {"VOLUME_RENDER", "VRT", "SSD", "CURVED", "CPR", "RCBF", "RCBV", "MTT", "TTP"}


@dataclass(frozen=True)
class Problem:
    """Why a file or a series was refused: a stable `code` and a message for people."""

    code: str
    message: str
    # The raw SeriesInstanceUID of a refused CT slice, when readable: its series is then
    # incomplete and is quarantined whole rather than stored short. Never leaves the worker.
    series_uid: str | None = None


@dataclass(frozen=True)
class Skipped:
    """A file that is fine but not an axial CT slice (a localizer, a dose report, …): counted
    under its `code`, never an error and never quarantined."""

    code: str
    message: str


@dataclass
class CTSlice:
    """One decoded CT slice (one frame of a file). Holds raw UIDs: it never leaves the ingest
    worker."""

    member: str
    sha256: str
    sop_uid: str  # unique per frame: "<SOPInstanceUID>#<frame number>" for multi-frame files
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


def read_file(
    member: str, data: bytes, sha256: str, known_series: Container[str] = ()
) -> list[CTSlice] | Problem | Skipped:
    """Decode one DICOM file into its CT slices in HU (one per frame), or say why not.

    Series-level metadata is only extracted for the first file of each series (those not in
    `known_series`): attribute access is a large share of pydicom's cost per file. Never
    raises: an unexpected error becomes `internal_error`, named by its type only (exception
    text can quote header values).
    """
    try:
        return _read_file(member, data, sha256, known_series)
    except BaseException as error:  # the last line of defence: no input may stop a run
        if not _recoverable(error):
            raise
        return Problem(
            "internal_error",
            f"unexpected {type(error).__name__} while reading this file; please report it",
        )


def _recoverable(error: BaseException) -> bool:
    """Any Exception, and the panics of decoders written in Rust (pyo3's PanicException is
    a BaseException); never KeyboardInterrupt or SystemExit."""
    return isinstance(error, Exception) or type(error).__name__ == "PanicException"


def _read_file(
    member: str, data: bytes, sha256: str, known_series: Container[str]
) -> list[CTSlice] | Problem | Skipped:
    ds = _parse(data)
    if isinstance(ds, Problem):
        return ds
    verdict = _not_a_ct_slice(ds)
    if verdict is not None:
        return verdict
    try:
        series_uid = uid(ds, "SeriesInstanceUID")
    except HeaderError as error:
        return Problem(error.code, error.message)
    try:
        decoded = _ct_slices(ds, member, sha256, series_uid, known_series)
    except HeaderError as error:
        decoded = Problem(error.code, error.message)
    if isinstance(decoded, Problem):
        return dataclasses.replace(decoded, series_uid=series_uid)
    return decoded


def _parse(data: bytes) -> Dataset | Problem:
    """Parse a file, accepting files without the 128-byte preamble only if they look like CT.

    A file cut short is `truncated`, with its SeriesInstanceUID when the header before the
    cut holds it (its series is then incomplete)."""
    try:
        ds = pydicom.dcmread(io.BytesIO(data))
        if not _cut_short(ds):
            return ds
    except InvalidDicomError:
        return _parse_without_preamble(data)
    except Exception:  # pydicom raises many types on broken bytes; their text can quote values
        if not (len(data) >= 132 and data[128:132] == b"DICM"):
            return Problem("not_dicom", "not a DICOM file (no readable header)")
    return Problem(
        "truncated", "the file ends inside an element: cut short or damaged", _header_series(data)
    )


def _parse_without_preamble(data: bytes) -> Dataset | Problem:
    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
        if "SOPClassUID" in ds and "PixelData" in ds and not _cut_short(ds):
            return ds
    except Exception:
        pass
    return Problem("not_dicom", "not a DICOM file (no DICM preamble, no readable header)")


def _cut_short(ds: Dataset) -> bool:
    """Whether pydicom stopped at the end of the bytes without raising: it then returns an
    empty dataset (a cut inside encapsulated pixel data) or a last value shorter than its
    declared length."""
    if len(ds) == 0:
        return True
    last = ds.get_item(max(ds.keys()))
    return (
        isinstance(last, RawDataElement)
        and last.length != UNDEFINED_LENGTH
        and isinstance(last.value, bytes)
        and len(last.value) < last.length
    )


def _header_series(data: bytes) -> str | None:
    """The SeriesInstanceUID of a damaged file, read from its header alone, when readable."""
    try:
        return uid(pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True), "SeriesInstanceUID")
    except Exception:
        return None


def _not_a_ct_slice(ds: Dataset) -> Skipped | Problem | None:
    """Files that are not CT images: skipped when they are normal beside a CT series (other
    objects and modalities of the same export), refused when their header contradicts
    itself. None for a CT image."""
    sop_class, modality = _text(ds, "SOPClassUID"), _text(ds, "Modality").upper()
    if not sop_class:  # pydicom reads a file cut at an element boundary without complaint
        return Problem("missing_uid", "SOPClassUID is missing (or the file was cut short)")
    if sop_class not in CT_CLASSES:
        if sop_class == SECONDARY_CAPTURE or sop_class.startswith(SECONDARY_CAPTURE + "."):
            return Skipped("skip_secondary_capture", "a secondary capture, not a CT slice")
        if (
            sop_class.startswith(NON_IMAGE_CLASS_PREFIXES)
            or modality in NON_IMAGE_MODALITIES
            or "PixelData" not in ds
        ):
            return Skipped(
                "skip_non_image",
                "not an image (a dose report, structured report, presentation state, …)",
            )
        if modality in OTHER_IMAGING_MODALITIES:
            return Skipped("skip_other_modality", f"a {modality} image beside the CT images")
        return Problem(
            "not_ct",
            f"modality {modality if modality in {'CT', ''} else '(other)'} with a SOP class "
            f"that is not a CT image ({_sop_class_name(sop_class)}); expected CT Image "
            f"Storage ({CT_IMAGE_STORAGE}) or Enhanced CT",
        )
    if modality != "CT" and "PixelData" in ds:  # without pixels: a CT file cut short
        return Problem("not_ct", "a CT SOP class, but Modality is not CT")
    image_type = _image_type(ds)
    if image_type & LOCALIZER_TYPES:
        return Skipped("skip_localizer", "a localizer (scout) image")
    if image_type & DERIVED_TYPES:
        derived = ", ".join(sorted(image_type & DERIVED_TYPES))
        return Skipped("skip_derived", f"a derived image ({derived}), not HU in one plane")
    return None


def _ct_slices(
    ds: Dataset, member: str, sha256: str, series_uid: str, known_series: Container[str]
) -> list[CTSlice] | Problem | Skipped:
    """The slices of a file that is a CT image (one per frame), or why not."""
    if "PixelData" not in ds:  # first: PixelData comes last, a file cut short lacks it
        return Problem(
            "missing_pixel_data", "the file has no PixelData (or the file was cut short)"
        )
    sop_uid, study_uid = uid(ds, "SOPInstanceUID"), uid(ds, "StudyInstanceUID")
    frames = frame_headers(ds)
    if any(abs(float(frame.normal[2])) < AXIAL_MIN_COSINE for frame in frames):
        return Skipped(
            "skip_non_axial",
            "a non-axial image (coronal, sagittal or oblique): its normal is more than 45° "
            "from the patient's z axis",
        )
    if _text(ds, "BurnedInAnnotation").upper() == "YES":
        return Problem(
            "burned_in_annotation",
            "BurnedInAnnotation is YES: the pixels may show patient identifiers; remove the "
            "file or export the series without annotations",
        )
    syntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    pixels = _pixels(ds, syntax, len(frames))
    if isinstance(pixels, Problem):
        return pixels

    padding = _padding_value(ds)
    multiframe = is_multiframe(ds)
    patient_id = _text(ds, "PatientID")
    slices = []
    for frame, stored in zip(frames, pixels, strict=True):
        hu = _hu(stored, frame, padding)
        if isinstance(hu, Problem):
            return hu
        first = not slices and series_uid not in known_series
        slices.append(
            CTSlice(
                member=member,
                sha256=sha256,
                sop_uid=f"{sop_uid}#{frame.frame_number}" if multiframe else sop_uid,
                series_uid=series_uid,
                study_uid=study_uid,
                patient_id=patient_id,
                position_xyz_mm=frame.position_xyz_mm,
                orientation=frame.orientation,
                pixel_spacing_mm=frame.pixel_spacing_mm,
                hu=hu,
                metadata=_metadata(ds, multiframe) if first else {},
                transfer_syntax=str(syntax or ""),
            )
        )
    return slices


def _pixels(ds: Dataset, syntax: UID | None, frames: int) -> np.ndarray | Problem:
    """The stored pixel values as (frames, rows, columns), or why they cannot be decoded."""
    if syntax is not None and not syntax.is_transfer_syntax:
        return Problem("no_decoder", "the TransferSyntaxUID is not a known transfer syntax")
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
    except BaseException as error:  # decoders raise many types; their text is not for the record
        if not _recoverable(error):
            raise
        if _native_pixels_short(ds, syntax, frames):
            return Problem("truncated", "the pixel data is shorter than its size: file truncated")
        name = syntax.name if syntax is not None else "no transfer syntax given"
        return Problem(
            "pixel_decode_error",
            f"pixel data ({name}) cannot be decoded ({type(error).__name__})",
        )
    if pixels.ndim == 2 and frames == 1:
        pixels = pixels[np.newaxis]
    if pixels.ndim != 3 or pixels.shape[0] != frames:
        return Problem(
            "unsupported_pixels",
            f"expected {frames} grey frame(s), got an array of shape {pixels.shape}",
        )
    return pixels


def _native_pixels_short(ds: Dataset, syntax: UID | None, frames: int) -> bool:
    """Whether uncompressed pixel data holds fewer bytes than its header promises."""
    if syntax is None or syntax.is_compressed:
        return False
    try:
        bits = int(ds.get("BitsAllocated", 16))
        expected = int(ds.Rows) * int(ds.Columns) * frames * bits // 8
        return len(ds.PixelData) < expected
    except Exception:
        return False


def _hu(stored: np.ndarray, frame: FrameHeader, padding: int | None) -> np.ndarray | Problem:
    """One frame's stored values in HU as int16; values outside int16 other than the pixel
    padding mean the stored values were misread (signedness, bit depth) or are damaged."""
    slope, intercept = frame.slope, frame.intercept
    if (
        slope == 1.0
        and intercept.is_integer()
        and abs(intercept) < 2**20
        and stored.dtype.kind in "iu"
    ):
        hu = stored.astype(np.int32) + int(intercept)  # the usual case: exact and cheaper
    else:
        with np.errstate(over="ignore", invalid="ignore"):
            hu = np.rint(stored.astype(np.float32) * np.float32(slope) + np.float32(intercept))
    if not (hu.min() >= HU_MIN and hu.max() <= HU_MAX):
        outside = ~((hu >= HU_MIN) & (hu <= HU_MAX))
        if padding is not None:
            outside &= stored != padding
        if outside.any():
            return Problem(
                "hu_out_of_range",
                "stored values rescale to HU outside -32768..32767: the pixel data does not "
                "match PixelRepresentation/BitsStored or the rescale (a vendor quirk or a "
                "damaged file)",
            )
    return np.clip(hu, HU_MIN, HU_MAX).astype(np.int16)


def _padding_value(ds: Dataset) -> int | None:
    try:
        value = ds.get("PixelPaddingValue")
        return None if value is None else int(value)
    except Exception:  # an unreadable padding value only loses the exemption
        return None


def _metadata(ds: Dataset, multiframe: bool) -> dict[str, Any]:
    return multiframe_metadata(ds) if multiframe else kept_metadata(ds)


def _text(ds: Dataset, keyword: str) -> str:
    """A text attribute, "" when absent or unreadable."""
    try:
        value = ds.get(keyword)
        return "" if value is None else str(value).strip()
    except Exception:
        return ""


def _image_type(ds: Dataset) -> set[str]:
    try:
        value = ds.get("ImageType")
        values = [value] if isinstance(value, str) else list(value or ())
        return {str(v).strip().upper() for v in values}
    except Exception:
        return set()


def _sop_class_name(sop_class: str) -> str:
    """A SOP class by its registered name; an unregistered value is not repeated."""
    if not sop_class:
        return "none"
    name = UID(sop_class).name
    return name if name != sop_class else "an unregistered SOP class"


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
