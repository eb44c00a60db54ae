"""From DICOM files to CT slices in Hounsfield units.

`read_file` turns one file into its CT slices (one per frame), a `Skipped` (a fine file that
is not an axial CT image: a localizer, a dose report, a PET series beside the CT, …) or a
`Problem` with a stable code; it never raises, whatever the bytes. The pixels become HU in
`lungcls.ingest.hu_pixels`; `lungcls.ingest.ct_volume.assemble_series` then checks that the
slices of one series form a regular grid and stacks them. This is the one way lungcls opens
DICOM: ingest and predict both use it.
"""

from __future__ import annotations

import dataclasses
import io
import math
from collections.abc import Container
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pydicom
import pydicom.config
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID

from lungcls.ingest.deid import kept_metadata
from lungcls.ingest.hu_pixels import (
    PixelError,
    frame_hu,
    padding_value,
    recoverable,
    stored_pixels,
)
from lungcls.ingest.multiframe import (
    CT_CLASSES,
    CT_IMAGE_STORAGE,
    HeaderError,
    frame_headers,
    is_multiframe,
    multiframe_metadata,
    uid,
)

__all__ = [
    "CT_IMAGE_STORAGE",
    "CTSlice",
    "Problem",
    "Skipped",
    "read_file",
]

# pydicom's value validation logs and warns invalid values verbatim (a malformed UID or name
# would reach the logs); read_file checks every value it uses itself.
pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE

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
        if not recoverable(error):
            raise
        return Problem(
            "internal_error",
            f"unexpected {type(error).__name__} while reading this file; please report it",
        )


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
    except (HeaderError, PixelError) as error:
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
    """The slices of a file that is a CT image (one per frame), or why not; an unusable
    header value or pixel data raises `HeaderError` or `PixelError`."""
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
    pixels = stored_pixels(ds, syntax, len(frames))
    padding = padding_value(ds)
    multiframe = is_multiframe(ds)
    patient_id = _text(ds, "PatientID")
    slices = []
    for frame, stored in zip(frames, pixels, strict=True):
        hu = frame_hu(stored, frame, padding)
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
