"""The one way lungcls writes a CT series as DICOM files, and packs files into archives.

    uids = SeriesUids(study_uid, series_uid, frame_uid, instance_uids)
    datasets = ct_series(stored, SlicePlane.axial_stack(geometry), mapping, uids, header)
    members = [(f"{k + 1:04d}.dcm", dicom_bytes(ds)) for k, ds in enumerate(datasets)]
    storage.write_atomic(rel, pack_zip(members))

Every maker of test and training data uses it: `synth` (phantom volumes with fake
identifiers, so that de-identification can be tested), `import-images` (display images
re-encoded as single-slice series) and `import-volumes` (NIfTI/MetaImage/NRRD volumes, in
any orientation: `SlicePlane.volume_grid`). Every slice is a CT Image Storage file in
Explicit VR Little Endian with the image plane, the pixel module (16 bits allocated; 12
stored unsigned, or 16 stored signed for HU as they are: `PixelFormat`), the rescale to HU
and a display window; the caller gives the stored values, where the slices lie, the pixel
mapping, the UIDs, and a `header` of what the series is (patient, study, equipment).

The same input gives the same bytes: DICOM keeps decimals as text, so the text is fixed
here, and archives carry fixed timestamps and no owner names. A regenerated batch then has
the SHA-256s of the first one, and ingest skips it instead of taking it for new data.
"""

from __future__ import annotations

import copy
import gzip
import io
import tarfile
import zipfile
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian

from lungcls.ingest.dicom_series import CT_IMAGE_STORAGE
from lungcls.sources.phantom import Geometry

STORED_MAX = 4095  # 12 bits stored
DS_MAX_CHARACTERS = 16  # the longest decimal string DICOM allows
_FIXED_ZIP_TIME = (2020, 1, 1, 0, 0, 0)


@dataclass(frozen=True)
class PixelMapping:
    """Stored value -> HU (RescaleSlope, RescaleIntercept), and the display window
    (WindowCenter, WindowWidth) the files suggest."""

    slope: float
    intercept: float
    window_center: float
    window_width: float

    @classmethod
    def grey_window(cls, window: tuple[float, float]) -> PixelMapping:
        """Grey levels 0..255 spread linearly over the window (center, width):
        HU = center - width/2 + grey * width/255, the mapping of an 8-bit display image."""
        center, width = window
        return cls(width / 255, center - width / 2, center, width)

    @property
    def rescale_text(self) -> tuple[str, str]:
        """RescaleSlope and RescaleIntercept as DICOM decimal strings."""
        return f"{self.slope:.10g}", f"{self.intercept:.10g}"


def nominal_rescale(window: tuple[float, float]) -> tuple[str, str]:
    """RescaleSlope and RescaleIntercept that map grey 0..255 onto `window` (center, width)."""
    return PixelMapping.grey_window(window).rescale_text


@dataclass(frozen=True)
class PixelFormat:
    """How stored values are kept: BitsStored (of 16 allocated) and PixelRepresentation."""

    bits_stored: int
    signed: bool

    @property
    def range(self) -> tuple[int, int]:
        """The smallest and largest stored value."""
        if self.signed:
            return -(2 ** (self.bits_stored - 1)), 2 ** (self.bits_stored - 1) - 1
        return 0, 2**self.bits_stored - 1


UNSIGNED_12 = PixelFormat(12, signed=False)  # synth, import-images
SIGNED_16 = PixelFormat(16, signed=True)  # any int16 HU stored as it is (import-volumes)


def decimal_text(value: float) -> str:
    """A number as a DICOM decimal string (at most 16 characters), to 10 significant digits
    where they fit; -0 is written 0."""
    value = float(value) + 0.0
    for digits in range(10, 0, -1):
        text = f"{value:.{digits}g}"
        if len(text) <= DS_MAX_CHARACTERS:
            return text
    raise ValueError(f"{value!r} cannot be written as a DICOM decimal string")


@dataclass(frozen=True)
class SlicePlane:
    """Where the slices of a series lie, as the decimal text their files carry.

    Attributes:
        positions: ImagePositionPatient (x, y, z in mm) of each slice's first pixel.
        pixel_spacing: PixelSpacing (row spacing, column spacing) in mm.
        slice_thickness: SliceThickness in mm.
        slice_locations: SliceLocation of each slice; None writes none.
        orientation: ImageOrientationPatient (row cosines, then column cosines); None writes
            the axial (1, 0, 0, 0, 1, 0).
        spacing_between_slices: SpacingBetweenSlices in mm; None writes none.
    """

    positions: tuple[tuple[str, str, str], ...]
    pixel_spacing: tuple[str, str]
    slice_thickness: str
    slice_locations: tuple[str, ...] | None = None
    orientation: tuple[str, ...] | None = None
    spacing_between_slices: str | None = None

    # The two layouts below differ only in the digits of their text (the volume's spacing
    # to 6 significant digits, the image's to 10 and its z as "0"): both date from before
    # this module, and one digit more would change the hash of every archive written since.
    @classmethod
    def axial_stack(cls, geometry: Geometry) -> SlicePlane:
        """The slices of a volume, z ascending by its slice step (synthetic volumes)."""
        ox, oy, oz = geometry.origin_xyz_mm
        dz, dy, dx = geometry.spacing_zyx_mm
        z_text = tuple(f"{oz + k * dz:.4f}" for k in range(geometry.shape_zyx[0]))
        return cls(
            positions=tuple((f"{ox:.4f}", f"{oy:.4f}", z) for z in z_text),
            pixel_spacing=(f"{dy:g}", f"{dx:g}"),
            slice_thickness=f"{dz:g}",
            slice_locations=z_text,
        )

    @classmethod
    def centered_image(
        cls, rows: int, columns: int, spacing_mm: float, thickness_mm: float
    ) -> SlicePlane:
        """One image of square pixels whose center is the patient origin (imported images)."""
        x = f"{-(columns - 1) / 2 * spacing_mm:.4f}"
        y = f"{-(rows - 1) / 2 * spacing_mm:.4f}"
        return cls(
            positions=((x, y, "0"),),
            pixel_spacing=(f"{spacing_mm:.10g}", f"{spacing_mm:.10g}"),
            slice_thickness=f"{thickness_mm:g}",
        )

    @classmethod
    def volume_grid(
        cls,
        positions_xyz_mm: np.ndarray,
        row_cosines: np.ndarray,
        column_cosines: np.ndarray,
        pixel_spacing_mm: tuple[float, float],
        slice_step_mm: float,
    ) -> SlicePlane:
        """The slices of a volume in any orientation (imported volumes), at the positions
        given (one row of x, y, z per slice, in the order ingest sorts them: along row
        cosines x column cosines). `pixel_spacing_mm`: (row spacing, column spacing);
        SliceThickness and SpacingBetweenSlices are the slice step (a volume file keeps no
        thickness)."""
        cosines = [0.0 if abs(v) < 1e-12 else float(v) for v in (*row_cosines, *column_cosines)]
        return cls(
            positions=tuple(
                (decimal_text(x), decimal_text(y), decimal_text(z)) for x, y, z in positions_xyz_mm
            ),
            pixel_spacing=(decimal_text(pixel_spacing_mm[0]), decimal_text(pixel_spacing_mm[1])),
            slice_thickness=decimal_text(slice_step_mm),
            orientation=tuple(decimal_text(v) for v in cosines),
            spacing_between_slices=decimal_text(slice_step_mm),
        )


@dataclass(frozen=True)
class SeriesUids:
    """The UIDs of one series: study, series, frame of reference, one SOP instance per slice."""

    study: str
    series: str
    frame_of_reference: str
    instances: tuple[str, ...]


def ct_series(
    stored: np.ndarray,
    plane: SlicePlane,
    mapping: PixelMapping,
    uids: SeriesUids,
    header: Dataset,
    pixel_format: PixelFormat = UNSIGNED_12,
) -> list[Dataset]:
    """One CT Image Storage dataset per slice of `stored` (z, y, x), ready to save.

    Args:
        stored: Stored pixel values, integers in the range of `pixel_format` (0..4095 by
            default; HU come from `mapping`).
        plane: Where each slice lies; one position per slice.
        mapping: Stored value -> HU, and the display window.
        uids: The series' UIDs; one instance UID per slice.
        header: Attributes every slice carries besides these: patient, study, equipment,
            descriptions. Copied, never changed.
        pixel_format: How the stored values are kept (`UNSIGNED_12` or `SIGNED_16`).
    """
    slices = stored.shape[0] if stored.ndim == 3 else 0
    if not slices or len(plane.positions) != slices or len(uids.instances) != slices:
        raise ValueError(
            f"stored values of shape {stored.shape} need (slices, rows, columns) with one "
            f"position ({len(plane.positions)}) and one UID ({len(uids.instances)}) per slice"
        )
    low, high = pixel_format.range
    if stored.min() < low or stored.max() > high:
        raise ValueError(
            f"stored values must lie in {low}..{high} ({pixel_format.bits_stored} bits stored)"
        )
    pixels = stored.astype("<i2" if pixel_format.signed else "<u2")
    return [_ct_slice(pixels, k, plane, mapping, uids, header, pixel_format) for k in range(slices)]


def _ct_slice(
    pixels: np.ndarray,
    k: int,
    plane: SlicePlane,
    mapping: PixelMapping,
    uids: SeriesUids,
    header: Dataset,
    pixel_format: PixelFormat,
) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CT_IMAGE_STORAGE
    meta.MediaStorageSOPInstanceUID = uids.instances[k]
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = copy.deepcopy(header)
    ds.file_meta = meta
    ds.preamble = b"\0" * 128
    ds.SOPClassUID = CT_IMAGE_STORAGE
    ds.SOPInstanceUID = uids.instances[k]
    ds.StudyInstanceUID = uids.study
    ds.SeriesInstanceUID = uids.series
    ds.FrameOfReferenceUID = uids.frame_of_reference
    ds.Modality = "CT"
    ds.InstanceNumber = k + 1
    ds.ImagePositionPatient = list(plane.positions[k])
    ds.ImageOrientationPatient = list(plane.orientation or (1, 0, 0, 0, 1, 0))
    if plane.slice_locations is not None:
        ds.SliceLocation = plane.slice_locations[k]
    ds.SliceThickness = plane.slice_thickness
    if plane.spacing_between_slices is not None:
        ds.SpacingBetweenSlices = plane.spacing_between_slices
    ds.PixelSpacing = list(plane.pixel_spacing)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = int(pixels.shape[1]), int(pixels.shape[2])
    ds.BitsAllocated, ds.BitsStored = 16, pixel_format.bits_stored
    ds.HighBit = pixel_format.bits_stored - 1
    ds.PixelRepresentation = int(pixel_format.signed)
    ds.RescaleSlope, ds.RescaleIntercept = mapping.rescale_text
    ds.RescaleType = "HU"
    ds.WindowCenter = f"{mapping.window_center:g}"
    ds.WindowWidth = f"{mapping.window_width:g}"
    ds.PixelData = pixels[k].tobytes()
    return ds


def dicom_bytes(ds: Dataset) -> bytes:
    """A dataset as a DICOM file (preamble, file meta, then the dataset)."""
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def pack_zip(members: list[tuple[str, bytes]], level: int | None = None) -> bytes:
    """A zip whose bytes depend only on the members (fixed timestamps and attributes);
    deflate at `level` (None: zlib's default)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members:
            info = zipfile.ZipInfo(name, date_time=_FIXED_ZIP_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            archive.writestr(info, data, compresslevel=level)
    return buffer.getvalue()


def pack_tar_gz(members: list[tuple[str, bytes]]) -> bytes:
    """A tar.gz whose bytes depend only on the members (mtime 0, no owner names)."""
    buffer = io.BytesIO()
    with (
        gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0, filename="") as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.USTAR_FORMAT) as archive,
    ):
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()
