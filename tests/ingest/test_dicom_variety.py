"""What real exports hold beside the axial CT slices, and headers that lie: Enhanced CT
(multi-frame, geometry in functional groups), localizers, dose reports, secondary captures,
reformats, PET, burned-in annotations and malformed header values. Every case starts from a
real Lung-PET-CT-Dx slice (../shared/data) whose header the test changes."""

from __future__ import annotations

import copy
import hashlib
import logging
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from highdicom.legacy import LegacyConvertedEnhancedCTImage
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.tag import Tag
from pydicom.uid import RLELossless, generate_uid

from lungcls.config import Settings
from lungcls.ingest import dicom_series
from lungcls.ingest.ct_volume import CTVolume, assemble_series
from lungcls.ingest.deid import kept_metadata
from lungcls.ingest.dicom_series import CTSlice, Problem, Skipped, read_file
from lungcls.ingest.run import ingest
from lungcls.sources.dicom_writer import dicom_bytes, pack_zip
from tests.support import REAL_DATA

LUNG_SERIES = REAL_DATA / "lung-pet-ct-dx" / "Lung_Dx-A0001" / "2.000000-5mm-40805"
ENHANCED_CT = "1.2.840.10008.5.1.4.1.1.2.1"
LEGACY_CONVERTED_ENHANCED_CT = "1.2.840.10008.5.1.4.1.1.2.2"
NEMA_ENHANCED = REAL_DATA / "dicom-codecs" / "CT0012.fragmented_no_bot_jpeg_baseline.51.dcm"


def lung_paths(count: int, first: int = 20) -> list[Path]:
    """`count` contiguous slices of the real series (by position), from the `first`-th."""
    paths = sorted(LUNG_SERIES.glob("*.dcm"))
    assert len(paths) == 64, f"real CT data missing at {LUNG_SERIES} (../shared/data/README.md)"

    def z_mm(path: Path) -> float:
        return float(pydicom.dcmread(path, stop_before_pixels=True).ImagePositionPatient[2])

    return sorted(paths, key=z_mm)[first : first + count]


def read(data: bytes, member: str = "x.dcm") -> list[CTSlice] | Problem | Skipped:
    return read_file(member, data, hashlib.sha256(data).hexdigest())


def read_all(datas: list[bytes]) -> list[CTSlice]:
    slices: list[CTSlice] = []
    for data in datas:
        decoded = read(data)
        assert isinstance(decoded, list), decoded
        slices += decoded
    return slices


def assembled(slices: list[CTSlice]) -> CTVolume:
    volume = assemble_series(slices)
    assert isinstance(volume, CTVolume), volume
    return volume


@pytest.fixture(scope="module")
def real_slices() -> list[Dataset]:
    return [pydicom.dcmread(p) for p in lung_paths(12)]


@pytest.fixture(scope="module")
def single_frame_volume(real_slices: list[Dataset]) -> CTVolume:
    return assembled(read_all([dicom_bytes(ds) for ds in real_slices]))


def with_raw(ds: Dataset, keyword: str, raw: bytes) -> Dataset:
    """`ds` with `keyword` holding exactly these bytes, as a file from a sloppy writer
    would (pydicom refuses to set a malformed value through its API)."""
    ds = copy.deepcopy(ds)
    tag = Tag(tag_for_keyword(keyword))
    raw = raw + b" " if len(raw) % 2 else raw
    ds._dict[tag] = RawDataElement(tag, dictionary_VR(tag), len(raw), raw, 0, True, True)
    return ds


# --- Enhanced CT ------------------------------------------------------------------------


def legacy_converted(datasets: list[Dataset]) -> Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # highdicom on the collection's one-part PatientName
        return LegacyConvertedEnhancedCTImage(
            legacy_datasets=datasets,
            series_instance_uid=generate_uid(),
            series_number=99,
            sop_instance_uid=generate_uid(),
            instance_number=1,
        )


def test_a_legacy_converted_enhanced_ct_is_the_same_volume(
    real_slices: list[Dataset], single_frame_volume: CTVolume
) -> None:
    converted = legacy_converted(real_slices)
    assert converted.SOPClassUID == LEGACY_CONVERTED_ENHANCED_CT
    assert "ImagePositionPatient" not in converted  # the geometry is in functional groups
    slices = read_all([dicom_bytes(converted)])
    assert len(slices) == 12 and len({s.sop_uid for s in slices}) == 12
    assert {s.series_uid for s in slices} == {str(converted.SeriesInstanceUID)}
    volume = assembled(slices)
    assert np.array_equal(volume.hu, single_frame_volume.hu)
    assert volume.spacing_zyx_mm == single_frame_volume.spacing_zyx_mm
    assert volume.origin_xyz_mm == single_frame_volume.origin_xyz_mm
    assert volume.orientation == single_frame_volume.orientation
    assert volume.metadata["slice_thickness_mm"] == 5.0  # from PixelMeasuresSequence
    assert volume.metadata["sop_class_uid"] == LEGACY_CONVERTED_ENHANCED_CT


def hand_built_enhanced_ct(datasets: list[Dataset]) -> Dataset:
    """A true Enhanced CT Image (SOP ...2.1) of these slices, frames in reverse order: the
    orientation, pixel measures, rescale and KVP only in the shared functional groups, each
    frame's position in its own; frame 2 stores values 24 higher with its own intercept."""
    first = datasets[0]
    ds = copy.deepcopy(first)
    for keyword in (
        "ImagePositionPatient",
        "ImageOrientationPatient",
        "PixelSpacing",
        "SliceThickness",
        "RescaleSlope",
        "RescaleIntercept",
        "KVP",
        "SliceLocation",
    ):
        delattr(ds, keyword)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = ENHANCED_CT
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL", "NONE"]
    frames = list(reversed(datasets))
    ds.NumberOfFrames = len(frames)

    def item(**values: object) -> Dataset:
        element = Dataset()
        for keyword, value in values.items():
            setattr(element, keyword, value)
        return element

    shared = item(
        PlaneOrientationSequence=Sequence(
            [item(ImageOrientationPatient=first.ImageOrientationPatient)]
        ),
        PixelMeasuresSequence=Sequence(
            [item(PixelSpacing=first.PixelSpacing, SliceThickness=first.SliceThickness)]
        ),
        PixelValueTransformationSequence=Sequence(
            [item(RescaleSlope="1", RescaleIntercept="-1024", RescaleType="HU")]
        ),
        CTXRayDetailsSequence=Sequence([item(KVP=first.KVP)]),
    )
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    per_frame, pixels = [], []
    for number, frame in enumerate(frames, start=1):
        group = item(
            PlanePositionSequence=Sequence([item(ImagePositionPatient=frame.ImagePositionPatient)])
        )
        stored = frame.pixel_array.astype(np.uint16)
        if number == 2:
            stored = stored + 24
            group.PixelValueTransformationSequence = Sequence(
                [item(RescaleSlope="1", RescaleIntercept="-1048", RescaleType="HU")]
            )
        per_frame.append(group)
        pixels.append(stored)
    ds.PerFrameFunctionalGroupsSequence = Sequence(per_frame)
    ds.PixelData = np.stack(pixels).astype("<u2").tobytes()
    return ds


def test_a_true_enhanced_ct_reads_its_functional_groups(
    real_slices: list[Dataset], single_frame_volume: CTVolume
) -> None:
    enhanced = hand_built_enhanced_ct(real_slices)
    slices = read_all([dicom_bytes(enhanced)])
    assert [s.sop_uid for s in slices[:2]] == [
        f"{enhanced.SOPInstanceUID}#1",
        f"{enhanced.SOPInstanceUID}#2",
    ]
    assert slices[0].metadata["kvp"] == 120.0  # from CTXRayDetailsSequence
    assert all(not s.metadata for s in slices[1:])  # metadata once per file
    volume = assembled(slices)
    assert np.array_equal(volume.hu, single_frame_volume.hu)  # frame 2's own rescale applied
    assert volume.spacing_zyx_mm == single_frame_volume.spacing_zyx_mm
    assert volume.origin_xyz_mm == single_frame_volume.origin_xyz_mm


def test_an_enhanced_series_split_over_two_files_is_one_volume(
    real_slices: list[Dataset], single_frame_volume: CTVolume
) -> None:
    lower, upper = hand_built_enhanced_ct(real_slices[:6]), hand_built_enhanced_ct(real_slices[6:])
    upper.SeriesInstanceUID = lower.SeriesInstanceUID
    slices = read_all([dicom_bytes(upper), dicom_bytes(lower)])
    assert np.array_equal(assembled(slices).hu, single_frame_volume.hu)


def test_the_nema_enhanced_ct_frames_take_their_own_positions() -> None:
    """A real Enhanced CT (NEMA's multi-frame CT, 2 frames in fragmented lossy JPEG). It is a
    perfusion map, skipped as derived; declared a plain axial CT, its frames assemble."""
    assert read(NEMA_ENHANCED.read_bytes()) == Skipped(
        "skip_derived", "a derived image (RCBF), not HU in one plane"
    )
    ds = pydicom.dcmread(NEMA_ENHANCED)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL", "NONE"]
    slices = read_all([dicom_bytes(ds)])
    assert [float(s.position_xyz_mm[2]) for s in slices] == [-159.0, -149.0]
    assert all(s.pixel_spacing_mm == (0.388672, 0.388672) for s in slices)
    volume = assembled(slices)
    assert volume.spacing_zyx_mm == pytest.approx((10.0, 0.388672, 0.388672))
    stored = ds.pixel_array.astype(np.int32) - 1024
    assert np.array_equal(volume.hu, stored[[1, 0]])  # sorted along the normal


def test_enhanced_ct_without_per_frame_positions_is_missing_geometry(
    real_slices: list[Dataset],
) -> None:
    enhanced = hand_built_enhanced_ct(real_slices[:3])
    del enhanced.PerFrameFunctionalGroupsSequence[1].PlanePositionSequence
    decoded = read(dicom_bytes(enhanced))
    assert isinstance(decoded, Problem) and decoded.code == "missing_geometry"
    assert decoded.series_uid == str(enhanced.SeriesInstanceUID)


# --- skips and burned-in annotations ------------------------------------------------------


def _edited(ds: Dataset, **values: object) -> Dataset:
    ds = copy.deepcopy(ds)
    for keyword, value in values.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    return ds


DOSE_SR = "1.2.840.10008.5.1.4.1.1.88.67"
SKIPS = {
    "localizer": ({"ImageType": ["ORIGINAL", "PRIMARY", "LOCALIZER"]}, "skip_localizer"),
    "scout": ({"ImageType": ["ORIGINAL", "PRIMARY", "SCOUT"]}, "skip_localizer"),
    "dose report": (
        {"SOPClassUID": DOSE_SR, "Modality": "SR", "PixelData": None},
        "skip_non_image",
    ),
    "private non-image": (
        {"SOPClassUID": "1.3.12.2.1107.5.9.1", "PixelData": None},
        "skip_non_image",
    ),
    "presentation state": (
        {"SOPClassUID": "1.2.840.10008.5.1.4.1.1.11.1", "Modality": "PR", "PixelData": None},
        "skip_non_image",
    ),
    "secondary capture": ({"SOPClassUID": "1.2.840.10008.5.1.4.1.1.7"}, "skip_secondary_capture"),
    "mip": ({"ImageType": ["DERIVED", "SECONDARY", "AXIAL", "MIP"]}, "skip_derived"),
    "coronal reformat": (
        {"ImageOrientationPatient": [1, 0, 0, 0, 0, -1], "ImageType": ["DERIVED", "SECONDARY"]},
        "skip_non_axial",
    ),
    "sagittal": ({"ImageOrientationPatient": [0, 1, 0, 0, 0, -1]}, "skip_non_axial"),
    "pet": (
        {"SOPClassUID": "1.2.840.10008.5.1.4.1.1.128", "Modality": "PT"},
        "skip_other_modality",
    ),
    "mr": ({"SOPClassUID": "1.2.840.10008.5.1.4.1.1.4", "Modality": "MR"}, "skip_other_modality"),
}


@pytest.mark.parametrize("case", sorted(SKIPS))
def test_files_beside_the_axial_series_are_skipped_with_their_code(
    case: str, real_slices: list[Dataset]
) -> None:
    values, code = SKIPS[case]
    decoded = read(dicom_bytes(_edited(real_slices[0], **values)))
    assert isinstance(decoded, Skipped) and decoded.code == code


KEPT = {
    "axial MPR": {"ImageType": ["DERIVED", "SECONDARY", "MPR"]},
    "30 degree gantry tilt": {
        "ImageOrientationPatient": [1, 0, 0, 0, 0.866025, -0.5],
        "BurnedInAnnotation": "NO",
    },
}


@pytest.mark.parametrize("case", sorted(KEPT))
def test_axial_reconstructions_are_kept(case: str, real_slices: list[Dataset]) -> None:
    decoded = read(dicom_bytes(_edited(real_slices[0], **KEPT[case])))
    assert isinstance(decoded, list) and len(decoded) == 1


NOT_CT = {
    "CT labelled with an MR SOP class": {"SOPClassUID": "1.2.840.10008.5.1.4.1.1.4"},
    "CT SOP class labelled MR": {"Modality": "MR"},
    "no modality, unknown SOP class": {"Modality": None, "SOPClassUID": "1.2.3.4"},
}


@pytest.mark.parametrize("case", sorted(NOT_CT))
def test_headers_that_contradict_themselves_are_not_ct(
    case: str, real_slices: list[Dataset]
) -> None:
    decoded = read(dicom_bytes(_edited(real_slices[0], **NOT_CT[case])))
    assert isinstance(decoded, Problem) and decoded.code == "not_ct"
    assert "1.2.3.4" not in decoded.message  # an unregistered value is not repeated


def test_burned_in_annotations_are_refused(real_slices: list[Dataset]) -> None:
    decoded = read(dicom_bytes(_edited(real_slices[0], BurnedInAnnotation="YES")))
    assert isinstance(decoded, Problem) and decoded.code == "burned_in_annotation"
    assert decoded.series_uid == str(real_slices[0].SeriesInstanceUID)  # the series goes too
    assert isinstance(read(dicom_bytes(_edited(real_slices[0], BurnedInAnnotation="NO"))), list)


def test_ingest_counts_skips_and_stores_the_series(
    settings: Settings, real_slices: list[Dataset], single_frame_volume: CTVolume
) -> None:
    members = [(f"ct/{k:02d}.dcm", dicom_bytes(ds)) for k, ds in enumerate(real_slices)]
    for case in ("localizer", "dose report", "pet", "coronal reformat", "secondary capture"):
        values, _ = SKIPS[case]
        extra = _edited(real_slices[0], **values)
        extra.SOPInstanceUID = generate_uid()
        if case != "localizer":  # other objects of the export: series of their own
            extra.SeriesInstanceUID = generate_uid()
        members.append((f"other/{case}.dcm", dicom_bytes(extra)))
    inbox = Path(settings.root) / "inbox" / "export"
    inbox.mkdir(parents=True)
    (inbox / "study.zip").write_bytes(pack_zip(members))
    summary = ingest(settings, progress=False)
    assert (summary.series_ingested, summary.quarantined) == (1, [])
    assert summary.skipped == {
        "skip_localizer": 1,
        "skip_non_image": 1,
        "skip_other_modality": 1,
        "skip_non_axial": 1,
        "skip_secondary_capture": 1,
    }


# --- malformed header values --------------------------------------------------------------

# keyword -> malformed raw value: each refuses the file as bad_header_value.
BAD_VALUES = {
    "RescaleSlope": b"1,0",
    "RescaleIntercept": b"-1024 HU",
    "PixelSpacing": b"0.8418",  # one value
    "ImagePositionPatient": b"-228.03\\-93.06",  # two values
    "ImageOrientationPatient": b"1\\0\\0\\0\\1",  # five values
    "SeriesInstanceUID": b"1.2.840.DOE^JANE",
    "SOPInstanceUID": b"1.2." + b"4711" * 16,  # over 64 characters
    "StudyInstanceUID": b"MRN4711",
}
NOT_FINITE = {
    "RescaleIntercept": b"nan",
    "RescaleSlope": b"inf",
    "ImagePositionPatient": b"0\\0\\-inf",
}


@pytest.mark.parametrize("keyword", sorted(BAD_VALUES))
def test_a_malformed_value_is_a_bad_header_value_named_not_quoted(
    keyword: str, real_slices: list[Dataset]
) -> None:
    raw = BAD_VALUES[keyword]
    decoded = read(dicom_bytes(with_raw(real_slices[0], keyword, raw)))
    assert isinstance(decoded, Problem) and decoded.code == "bad_header_value"
    assert keyword in decoded.message
    assert raw.decode() not in decoded.message
    for part in raw.decode().replace("\\", " ").replace(",", " ").split():
        assert part not in decoded.message or part in {"1", "0", "1.2."}
    if keyword != "SeriesInstanceUID":
        assert decoded.series_uid == str(real_slices[0].SeriesInstanceUID)


@pytest.mark.parametrize("keyword", sorted(NOT_FINITE))
def test_non_finite_numbers_are_bad_header_values(keyword: str, real_slices: list[Dataset]) -> None:
    decoded = read(dicom_bytes(with_raw(real_slices[0], keyword, NOT_FINITE[keyword])))
    assert isinstance(decoded, Problem) and decoded.code == "bad_header_value"
    assert keyword in decoded.message and "nan" not in decoded.message.lower()


GEOMETRY_NONSENSE = {
    "PixelSpacing": ["0", "0"],
    "ImageOrientationPatient": [2, 0, 0, 0, 2, 0],  # not unit vectors
    "RescaleSlope": "0",
}


@pytest.mark.parametrize("keyword", sorted(GEOMETRY_NONSENSE))
def test_well_formed_but_impossible_values_are_bad_header_values(
    keyword: str, real_slices: list[Dataset]
) -> None:
    edited = _edited(real_slices[0], **{keyword: GEOMETRY_NONSENSE[keyword]})
    decoded = read(dicom_bytes(edited))
    assert isinstance(decoded, Problem) and decoded.code == "bad_header_value"
    assert keyword in decoded.message


def test_a_malformed_per_frame_value_names_its_frame(real_slices: list[Dataset]) -> None:
    enhanced = hand_built_enhanced_ct(real_slices[:4])
    position = enhanced.PerFrameFunctionalGroupsSequence[2].PlanePositionSequence
    position[0] = with_raw(position[0], "ImagePositionPatient", b"1\\2\\DOE")
    decoded = read(dicom_bytes(enhanced))
    assert isinstance(decoded, Problem) and decoded.code == "bad_header_value"
    assert decoded.message == "ImagePositionPatient (frame 3) is not 3 finite numbers"


@pytest.mark.parametrize("raw", [b"two", b"999999999"])
def test_a_frame_count_that_does_not_fit_is_a_bad_header_value(
    raw: bytes, real_slices: list[Dataset]
) -> None:
    enhanced = with_raw(hand_built_enhanced_ct(real_slices[:2]), "NumberOfFrames", raw)
    decoded = read(dicom_bytes(enhanced))
    assert isinstance(decoded, Problem) and decoded.code == "bad_header_value"
    assert "NumberOfFrames" in decoded.message and raw.decode() not in decoded.message


# kept attribute -> (malformed raw value, column): the file is read, the attribute dropped.
DROPPED = {
    "KVP": (b"120kV", "kvp"),
    "SliceThickness": (b"abc", "slice_thickness_mm"),
}


@pytest.mark.parametrize("keyword", sorted(DROPPED))
def test_a_malformed_descriptive_value_is_dropped_not_fatal(
    keyword: str, real_slices: list[Dataset]
) -> None:
    raw, column = DROPPED[keyword]
    decoded = read(dicom_bytes(with_raw(real_slices[0], keyword, raw)))
    assert isinstance(decoded, list)
    assert column not in decoded[0].metadata
    assert decoded[0].metadata["manufacturer"] == "Philips"  # the rest is kept


def test_kept_metadata_keeps_only_finite_single_numbers(real_slices: list[Dataset]) -> None:
    dual_energy = _edited(real_slices[0], KVP=["80", "140"])
    assert "kvp" not in kept_metadata(dual_energy)
    assert "kvp" not in kept_metadata(with_raw(real_slices[0], "KVP", b"nan"))
    assert kept_metadata(real_slices[0])["kvp"] == 120.0
    kernels = kept_metadata(_edited(real_slices[0], ConvolutionKernel=["Br40f", "3"]))
    assert kernels["convolution_kernel"] == "Br40f\\3"


def test_pydicom_does_not_log_header_values(
    real_slices: list[Dataset], caplog: pytest.LogCaptureFixture
) -> None:
    bad = dicom_bytes(with_raw(real_slices[0], "SeriesInstanceUID", b"1.2.840.DOE^JANE"))
    with caplog.at_level(logging.DEBUG), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        read(bad)
    assert "DOE^JANE" not in caplog.text
    assert not [w for w in caught if "DOE^JANE" in str(w.message)]


# --- nothing escapes ----------------------------------------------------------------------


def test_an_unexpected_error_is_internal_error_without_its_text(
    real_slices: list[Dataset], monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(ds: Dataset) -> list:
        raise ValueError(f"cannot place {ds.PatientID}")

    monkeypatch.setattr(dicom_series, "frame_headers", broken)
    decoded = read(dicom_bytes(real_slices[0]))
    assert decoded == Problem(
        "internal_error", "unexpected ValueError while reading this file; please report it"
    )


def test_a_file_cut_short_is_truncated_and_names_its_series(real_slices: list[Dataset]) -> None:
    """pydicom reads a cut file without complaint (a shorter last value, or nothing at all
    after a cut inside encapsulated pixel data): read_file notices, and names the series so
    that it is not stored short."""
    series_uid = str(real_slices[0].SeriesInstanceUID)
    native = dicom_bytes(real_slices[0])
    rle = copy.deepcopy(real_slices[0])
    rle.compress(RLELossless, generate_instance_uid=False)
    encapsulated = dicom_bytes(rle)
    pixel_data_tag = b"\xe0\x7f\x10\x00"  # (7FE0,0010), little endian
    header_end = native.index(pixel_data_tag)
    for cut in (native[:-300], encapsulated[: len(encapsulated) // 2], native[: header_end - 3]):
        decoded = read(cut)
        assert isinstance(decoded, Problem) and decoded.code == "truncated", decoded
        assert decoded.series_uid == series_uid
    at_boundary = read(native[:header_end])  # nothing says it was cut: no pixels
    assert isinstance(at_boundary, Problem) and at_boundary.code == "missing_pixel_data"
    assert at_boundary.series_uid == series_uid


def test_cut_and_flipped_real_files_never_raise(real_slices: list[Dataset]) -> None:
    data = dicom_bytes(real_slices[0])
    rng = np.random.default_rng(13)
    variants = [data[:cut] for cut in range(0, 2000, 37)]
    variants += [data[: len(data) - k * 9973] for k in range(1, 8)]
    for _ in range(60):
        flipped = bytearray(data)
        for offset in rng.integers(128, 2000, size=4):
            flipped[offset] ^= 1 << int(rng.integers(8))
        variants.append(bytes(flipped))
    for variant in variants:
        assert isinstance(read(variant), (list, Problem, Skipped))
