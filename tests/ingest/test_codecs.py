"""Compressed real CT: the dicom-codecs corpus in ../shared/data (one GE chest slice in 15
transfer syntaxes, vendor JPEG 2000 / JPEG-LS quirks) and real Lung-PET-CT-Dx slices
re-encoded with pydicom's encoders (RLE, JPEG-LS, JPEG 2000; all lossless)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import UID, JPEG2000Lossless, JPEGLSLossless, RLELossless, generate_uid

from lungcls.config import Settings
from lungcls.ingest.deid import pseudonym
from lungcls.ingest.dicom_series import CTSlice, Problem, Skipped, read_file
from lungcls.ingest.run import ingest
from lungcls.ingest.series_store import iter_series
from lungcls.io.storage import Storage
from lungcls.sources.dicom_writer import dicom_bytes, pack_zip
from tests.support import REAL_DATA, TEST_KEY, make_settings

CODECS = REAL_DATA / "dicom-codecs"
LUNG_SERIES = REAL_DATA / "lung-pet-ct-dx" / "Lung_Dx-A0001" / "2.000000-5mm-40805"


def _ge(syntax: str, uid: str) -> str:
    return f"CTImage.dcm_{syntax}TransferSyntax_{uid}.dcm"


REFERENCE = _ge("LittleEndianExplicit", "1.2.840.10008.1.2.1")
LOSSLESS = [
    "CTImage.dcm",
    _ge("LittleEndianImplicit", "1.2.840.10008.1.2"),
    _ge("BigEndianExplicit", "1.2.840.10008.1.2.2"),
    _ge("DeflatedExplicitVRLittleEndian", "1.2.840.10008.1.2.1.99"),
    _ge("RLELossless", "1.2.840.10008.1.2.5"),
    _ge("JPEGProcess14", "1.2.840.10008.1.2.4.57"),
    _ge("JPEGProcess14SV1", "1.2.840.10008.1.2.4.70"),
    _ge("JPEGLSLossless", "1.2.840.10008.1.2.4.80"),
    _ge("JPEG2000LosslessOnly", "1.2.840.10008.1.2.4.90"),
]
# Lossy syntax -> (mean, worst) absolute HU error inside the field of view, as measured on
# this slice with a little headroom. The 8-bit JPEG baseline file stores 32 HU per grey level.
LOSSY = {
    _ge("JPEG2000", "1.2.840.10008.1.2.4.91"): (1.0, 8),
    _ge("JPEGLSLossy", "1.2.840.10008.1.2.4.81"): (1.0, 1),  # near-lossless, NEAR = 1
    _ge("JPEGProcess2_4", "1.2.840.10008.1.2.4.51"): (6.0, 40),  # 12 bits, slope 2
    _ge("JPEGProcess1", "1.2.840.10008.1.2.4.50"): (20.0, 70),  # 8 bits, slope 32
}
NO_DECODER = [
    _ge("JPEGProcess6_8", "1.2.840.10008.1.2.4.53"),
    _ge("JPEGProcess10_12", "1.2.840.10008.1.2.4.55"),
]
# Vendor files: what read_file makes of each (a list: it decodes to one slice).
QUIRKS: dict[str, str] = {
    "693_J2KI.dcm": "decodes",  # GE, lossy JPEG 2000, 14 bits stored
    "693_J2KR.dcm": "decodes",
    "CT1_J2KR": "decodes",
    "CT1_JLSN.dcm": "decodes",  # JPEG-LS near-lossless
    "CT2_J2KR": "decodes",  # Toshiba
    "CT_small.dcm": "decodes",
    "ELSCINT1_JP2vsJ2K.dcm": "decodes",  # a JP2 header where a J2K codestream belongs
    "J2K_pixelrep_mismatch.dcm": "decodes",  # J2K unsigned, PixelRepresentation 1
    "TOSHIBA_J2K_OpenJPEGv2Regression.dcm": "decodes",
    "explicit_VR-UN.dcm": "decodes",  # attributes with VR UN
    # Garbage out of a damaged JPEG lossless stream: values far below any padding.
    "JPEGLossless_1s_1f_i_16_16_bad.dcm": "hu_out_of_range",
    "MAROTECH_CT_JP2Lossy.dcm": "skip_localizer",  # ImageType ORIGINAL\PRIMARY\LOCALIZER
    # Coronal MPRs (ImageOrientationPatient 1\0\0\0\0\-1); made axial below.
    "TOSHIBA_J2K_SIZ0_PixRep1.dcm": "skip_non_axial",
    "TOSHIBA_J2K_SIZ1_PixRep0.dcm": "skip_non_axial",
    # Enhanced CT, 2 frames, fragmented lossy JPEG: a regional cerebral blood flow map.
    "CT0012.fragmented_no_bot_jpeg_baseline.51.dcm": "skip_derived",
}


def _read(name: str, data: bytes | None = None) -> list[CTSlice] | Problem | Skipped:
    data = (CODECS / name).read_bytes() if data is None else data
    return read_file(name, data, hashlib.sha256(data).hexdigest())


def _one(decoded: list[CTSlice] | Problem | Skipped) -> CTSlice:
    assert isinstance(decoded, list) and len(decoded) == 1, decoded
    return decoded[0]


def _outcome(decoded: list[CTSlice] | Problem | Skipped) -> str:
    return decoded.code if isinstance(decoded, (Problem, Skipped)) else "decodes"


@pytest.fixture(scope="module")
def reference() -> CTSlice:
    return _one(_read(REFERENCE))


def test_the_reference_is_stored_values_plus_the_intercept(reference: CTSlice) -> None:
    ds = pydicom.dcmread(CODECS / REFERENCE)
    assert (float(ds.RescaleSlope), float(ds.RescaleIntercept)) == (1.0, -1024.0)
    assert reference.hu.dtype == np.int16 and reference.hu.shape == (512, 512)
    assert np.array_equal(reference.hu, ds.pixel_array.astype(np.int32) - 1024)
    assert reference.transfer_syntax == "1.2.840.10008.1.2.1"


def test_the_corpus_is_all_here() -> None:
    names = {p.name for p in CODECS.iterdir()}
    assert {REFERENCE, *LOSSLESS, *LOSSY, *NO_DECODER, *QUIRKS} == names


@pytest.mark.parametrize("name", LOSSLESS)
def test_every_lossless_syntax_gives_the_original_hu(name: str, reference: CTSlice) -> None:
    piece = _one(_read(name))
    assert np.array_equal(piece.hu, reference.hu)
    assert piece.hu.dtype == np.int16
    assert np.array_equal(piece.position_xyz_mm, reference.position_xyz_mm)
    assert piece.pixel_spacing_mm == reference.pixel_spacing_mm
    assert (piece.sop_uid, piece.series_uid) == (reference.sop_uid, reference.series_uid)
    if name != "CTImage.dcm":
        assert piece.transfer_syntax == name.removesuffix(".dcm").rsplit("_", 1)[1]


@pytest.mark.parametrize("name", sorted(LOSSY))
def test_lossy_syntaxes_decode_close_to_the_original(name: str, reference: CTSlice) -> None:
    piece = _one(_read(name))
    assert piece.hu.shape == reference.hu.shape and piece.hu.dtype == np.int16
    inside = reference.hu > -1500  # the field of view (outside: padding of -3024 HU)
    error = np.abs(piece.hu.astype(np.int32) - reference.hu)[inside]
    mean_bound, worst_bound = LOSSY[name]
    assert error.mean() <= mean_bound and error.max() <= worst_bound, (error.mean(), error.max())
    assert not np.array_equal(piece.hu, reference.hu)  # really lossy: the test compares


@pytest.mark.parametrize("name", NO_DECODER)
def test_jpeg_processes_without_a_decoder_are_refused(name: str) -> None:
    decoded = _read(name)
    assert isinstance(decoded, Problem) and decoded.code == "no_decoder"
    assert decoded.series_uid == str(pydicom.dcmread(CODECS / name).SeriesInstanceUID)
    assert "Process" in decoded.message and decoded.series_uid not in decoded.message


@pytest.mark.parametrize("name", sorted(QUIRKS))
def test_vendor_quirks_decode_or_are_refused_with_a_code(name: str) -> None:
    decoded = _read(name)
    assert _outcome(decoded) == QUIRKS[name], decoded
    if isinstance(decoded, list):
        hu = decoded[0].hu
        assert hu.ndim == 2 and min(hu.shape) >= 128
        # Real CT: air or padding at the low end, nothing beyond dense bone at the top.
        assert np.percentile(hu, 1) < -800 and np.percentile(hu, 99.9) < 3200


def _made_axial(name: str) -> bytes:
    ds = pydicom.dcmread(CODECS / name)
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    return dicom_bytes(ds)


def test_a_j2k_sign_mismatch_is_refused_not_stored_as_garbage() -> None:
    """The two Toshiba files hold one image; one declares it unsigned while its codestream is
    signed. Read as declared, air (-1000) becomes 64536: refused, not clipped."""
    signed = _one(_read("signed", _made_axial("TOSHIBA_J2K_SIZ0_PixRep1.dcm")))
    assert signed.hu.min() == -2048 and -1100 < np.median(signed.hu) < 500
    mismatch = _read("mismatch", _made_axial("TOSHIBA_J2K_SIZ1_PixRep0.dcm"))
    assert isinstance(mismatch, Problem) and mismatch.code == "hu_out_of_range"


def test_declared_pixel_padding_may_fall_outside_the_hu_range(reference: CTSlice) -> None:
    """The GE slice declares PixelPaddingValue -32768 (stored), which rescales to -33792 HU:
    padding pixels are clipped to -32768 HU; any other value out of range refuses the file."""
    ds = pydicom.dcmread(CODECS / REFERENCE)
    assert ds.PixelPaddingValue == -32768
    pixels = ds.pixel_array.copy()
    pixels[:8] = -32768  # the top rows become padding
    ds.PixelData = pixels.tobytes()
    piece = _one(_read("padded", dicom_bytes(ds)))
    assert (piece.hu[:8] == -32768).all() and np.array_equal(piece.hu[8:], reference.hu[8:])
    del ds.PixelPaddingValue
    refused = _read("undeclared", dicom_bytes(ds))
    assert isinstance(refused, Problem) and refused.code == "hu_out_of_range"


def test_a_decoder_panic_is_a_pixel_decode_error() -> None:
    """One flipped bit in an RLE segment makes the Rust RLE decoder panic: pyo3 raises a
    PanicException, a BaseException that `except Exception` does not catch."""
    name = _ge("RLELossless", "1.2.840.10008.1.2.5")
    damaged = bytearray((CODECS / name).read_bytes())
    damaged[14712] ^= 1
    decoded = _read(name, bytes(damaged))
    assert isinstance(decoded, Problem) and decoded.code == "pixel_decode_error"
    assert decoded.message == "pixel data (RLE Lossless) cannot be decoded (PanicException)"


# --- real Lung-PET-CT-Dx slices, re-encoded ---------------------------------------------

REENCODINGS = [RLELossless, JPEGLSLossless, JPEG2000Lossless]


def lung_slices(count: int, first: int = 20) -> list[Path]:
    """`count` contiguous slices of the real series (by position), from the `first`-th."""
    paths = sorted(LUNG_SERIES.glob("*.dcm"))
    assert len(paths) == 64, f"real CT data missing at {LUNG_SERIES} (../shared/data/README.md)"
    by_z = sorted(paths, key=_z_mm)
    return by_z[first : first + count]


def _z_mm(path: Path) -> float:
    return float(pydicom.dcmread(path, stop_before_pixels=True).ImagePositionPatient[2])


def reencoded(path: Path, syntax: UID, series_uid: str | None = None) -> Dataset:
    """A real slice compressed with pydicom's encoder; with new UIDs when `series_uid` is
    given (another series of the same images)."""
    ds = pydicom.dcmread(path)
    ds.compress(syntax, generate_instance_uid=False)  # the same instance, re-encoded
    if series_uid is not None:
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = generate_uid(entropy_srcs=[series_uid, str(ds.SOPInstanceUID)])
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds


@pytest.mark.parametrize("syntax", REENCODINGS, ids=lambda s: s.name)
def test_reencoded_real_slices_give_identical_hu(syntax: UID) -> None:
    for path in lung_slices(3, first=10) + lung_slices(1, first=40):
        original = _one(_read(path.name, path.read_bytes()))
        data = dicom_bytes(reencoded(path, syntax))
        piece = _one(_read(path.name, data))
        assert piece.transfer_syntax == syntax
        assert np.array_equal(piece.hu, original.hu)
        assert piece.sop_uid == original.sop_uid
        assert np.array_equal(piece.position_xyz_mm, original.position_xyz_mm)
        assert len(data) < 0.8 * path.stat().st_size  # really compressed


def _series_by_id(settings: Settings) -> dict[str, object]:
    return {s.series_id: s for s in iter_series(Storage.from_settings(settings))}


def test_ingest_stores_identical_hu_for_reencoded_series(settings: Settings, tmp_path) -> None:
    """16 real slices as four series: uncompressed (ingested on a root of its own), and
    re-encoded as RLE, JPEG-LS and JPEG 2000 series in three zips of one batch."""
    paths = lung_slices(16)
    plain = make_settings(tmp_path / "plain-root", tmp_path / "plain")
    inbox = Path(plain.root) / "inbox" / "tcia"
    inbox.mkdir(parents=True)
    (inbox / "plain.zip").write_bytes(pack_zip([(p.name, p.read_bytes()) for p in paths]))
    assert ingest(plain, progress=False).series_ingested == 1
    (original,) = _series_by_id(plain).values()
    assert original.volume.shape == (16, 512, 512)

    compressed_inbox = Path(settings.root) / "inbox" / "tcia"
    compressed_inbox.mkdir(parents=True)
    series_uids = {}
    for syntax in REENCODINGS:
        series_uid = generate_uid(entropy_srcs=["lungcls re-encoded", syntax])
        series_uids[syntax] = series_uid
        members = [(p.name, dicom_bytes(reencoded(p, syntax, series_uid))) for p in paths]
        (compressed_inbox / f"{syntax.name.split()[0]}.zip").write_bytes(pack_zip(members))
    summary = ingest(settings, progress=False)
    assert (summary.series_ingested, summary.quarantined) == (3, [])

    stored = _series_by_id(settings)
    key = TEST_KEY.encode()
    for syntax, series_uid in series_uids.items():
        series = stored[pseudonym(key, "series", series_uid)]
        assert series.transfer_syntax == syntax
        assert np.array_equal(series.volume, original.volume)
        assert series.spacing_zyx_mm == original.spacing_zyx_mm
        assert series.origin_xyz_mm == original.origin_xyz_mm
        assert series.orientation == original.orientation
