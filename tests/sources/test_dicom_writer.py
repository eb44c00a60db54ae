"""The DICOM CT writer: complete slices that read back as the HU and geometry put in,
independent of each other and of the header they share."""

from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from lungcls.sources.dicom_writer import (
    PixelMapping,
    SeriesUids,
    SlicePlane,
    ct_series,
    dicom_bytes,
    nominal_rescale,
    pack_tar_gz,
    pack_zip,
)
from lungcls.sources.phantom import Geometry

UIDS = SeriesUids("1.2.3.1", "1.2.3.2", "1.2.3.3", ("1.2.3.4.1", "1.2.3.4.2", "1.2.3.4.3"))


def _header() -> Dataset:
    header = Dataset()
    header.PatientID = "P-1"
    header.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
    return header


def test_a_volume_reads_back_as_the_hu_and_geometry_written() -> None:
    geometry = Geometry((3, 4, 5), (2.5, 0.7, 0.7), (-10.0, -20.0, 30.0))
    hu = np.arange(3 * 4 * 5, dtype=np.float64).reshape(3, 4, 5) * 10 - 1000
    mapping = PixelMapping(slope=1.0, intercept=-1024.0, window_center=-600.0, window_width=1500.0)
    stored = (hu - mapping.intercept).astype(np.uint16)
    header = _header()
    datasets = ct_series(stored, SlicePlane.axial_stack(geometry), mapping, UIDS, header)
    read = [pydicom.dcmread(io.BytesIO(dicom_bytes(ds))) for ds in datasets]
    for k, ds in enumerate(read):
        assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2" and ds.Modality == "CT"
        assert ds.SOPInstanceUID == ds.file_meta.MediaStorageSOPInstanceUID == UIDS.instances[k]
        assert (ds.StudyInstanceUID, ds.SeriesInstanceUID) == (UIDS.study, UIDS.series)
        assert ds.PatientID == "P-1" and ds.InstanceNumber == k + 1
        slice_hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        assert np.array_equal(slice_hu, hu[k])
        assert [float(v) for v in ds.ImagePositionPatient] == [-10.0, -20.0, 30.0 + 2.5 * k]
        assert float(ds.SliceLocation) == 30.0 + 2.5 * k
        assert [float(v) for v in ds.PixelSpacing] == [0.7, 0.7]
    assert (read[0].WindowCenter, read[0].WindowWidth) == (-600, 1500)
    # Slices are independent: a change to one (as tests of bad input make) stays in it.
    datasets[0].PatientID = "changed"
    datasets[0].ImageType[0] = "ORIGINAL"
    assert datasets[1].PatientID == header.PatientID == "P-1"
    assert datasets[1].ImageType[0] == header.ImageType[0] == "DERIVED"


def test_grey_levels_map_linearly_onto_the_window() -> None:
    window = (-600.0, 1500.0)
    mapping = PixelMapping.grey_window(window)
    assert nominal_rescale(window) == mapping.rescale_text == ("5.882352941", "-1350")
    grey = np.array([[[0, 255], [128, 17]]], dtype=np.uint8)
    plane = SlicePlane.centered_image(rows=2, columns=2, spacing_mm=1.5, thickness_mm=1.0)
    (ds,) = ct_series(grey, plane, mapping, SeriesUids("1.1", "1.2", "1.3", ("1.4",)), Dataset())
    ds = pydicom.dcmread(io.BytesIO(dicom_bytes(ds)))
    hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    assert hu[0, 0] == pytest.approx(-1350) and hu[0, 1] == pytest.approx(150, abs=1e-6)
    assert [float(v) for v in ds.ImagePositionPatient] == [-0.75, -0.75, 0.0]
    assert "SliceLocation" not in ds


def test_inconsistent_input_is_refused() -> None:
    plane = SlicePlane.centered_image(2, 2, 1.0, 1.0)
    mapping = PixelMapping.grey_window((-600.0, 1500.0))
    uids = SeriesUids("1.1", "1.2", "1.3", ("1.4",))
    with pytest.raises(ValueError, match=r"0\.\.4095"):
        ct_series(np.full((1, 2, 2), 4096), plane, mapping, uids, Dataset())
    with pytest.raises(ValueError, match="one UID"):
        ct_series(np.zeros((2, 2, 2), np.uint16), plane, mapping, uids, Dataset())
    with pytest.raises(ValueError, match="slices, rows, columns"):
        ct_series(np.zeros((2, 2), np.uint16), plane, mapping, uids, Dataset())


def test_archives_depend_only_on_their_members() -> None:
    members = [("a/0001.dcm", b"one"), ("a/0002.dcm", b"two")]
    assert pack_zip(members) == pack_zip(list(members))
    assert pack_tar_gz(members) == pack_tar_gz(list(members))
    assert pack_zip(members) != pack_zip(members[::-1])
