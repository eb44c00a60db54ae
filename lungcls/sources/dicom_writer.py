"""The one way lungcls writes a CT series as DICOM files, and packs files into archives.

    uids = SeriesUids(study_uid, series_uid, frame_uid, instance_uids)
    datasets = ct_series(stored, SlicePlane.axial_stack(geometry), mapping, uids, header)
    members = [(f"{k + 1:04d}.dcm", dicom_bytes(ds)) for k, ds in enumerate(datasets)]
    storage.write_atomic(rel, pack_zip(members))

Both makers of test and training data use it: `synth` (phantom volumes with fake identifiers,
so that de-identification can be tested) and `import-images` (display images re-encoded as
single-slice series). Every slice is a CT Image Storage file in Explicit VR Little Endian
with the image plane, the pixel module (16 bits allocated, 12 stored, unsigned), the rescale
to HU and a display window; the caller gives the stored values, where the slices lie, the
pixel mapping, the UIDs, and a `header` of what the series is (patient, study, equipment).

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
class SlicePlane:
    """Where the slices of an axial series lie, as the decimal text their files carry.

    Attributes:
        positions: ImagePositionPatient (x, y, z in mm) of each slice's first pixel.
        pixel_spacing: PixelSpacing (row spacing, column spacing) in mm.
        slice_thickness: SliceThickness in mm.
        slice_locations: SliceLocation of each slice; None writes none.
    """

    positions: tuple[tuple[str, str, str], ...]
    pixel_spacing: tuple[str, str]
    slice_thickness: str
    slice_locations: tuple[str, ...] | None = None

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
) -> list[Dataset]:
    """One CT Image Storage dataset per slice of `stored` (z, y, x), ready to save.

    Args:
        stored: Stored pixel values, integers in 0..4095 (HU come from `mapping`).
        plane: Where each slice lies; one position per slice.
        mapping: Stored value -> HU, and the display window.
        uids: The series' UIDs; one instance UID per slice.
        header: Attributes every slice carries besides these: patient, study, equipment,
            descriptions. Copied, never changed.
    """
    slices = stored.shape[0] if stored.ndim == 3 else 0
    if not slices or len(plane.positions) != slices or len(uids.instances) != slices:
        raise ValueError(
            f"stored values of shape {stored.shape} need (slices, rows, columns) with one "
            f"position ({len(plane.positions)}) and one UID ({len(uids.instances)}) per slice"
        )
    if stored.min() < 0 or stored.max() > STORED_MAX:
        raise ValueError(f"stored values must lie in 0..{STORED_MAX} (12 bits stored)")
    pixels = stored.astype("<u2")
    return [_ct_slice(pixels, k, plane, mapping, uids, header) for k in range(slices)]


def _ct_slice(
    pixels: np.ndarray,
    k: int,
    plane: SlicePlane,
    mapping: PixelMapping,
    uids: SeriesUids,
    header: Dataset,
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
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    if plane.slice_locations is not None:
        ds.SliceLocation = plane.slice_locations[k]
    ds.SliceThickness = plane.slice_thickness
    ds.PixelSpacing = list(plane.pixel_spacing)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = int(pixels.shape[1]), int(pixels.shape[2])
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.PixelRepresentation = 0
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


def pack_zip(members: list[tuple[str, bytes]]) -> bytes:
    """A zip whose bytes depend only on the members (fixed timestamps and attributes)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members:
            info = zipfile.ZipInfo(name, date_time=_FIXED_ZIP_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            archive.writestr(info, data)
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
