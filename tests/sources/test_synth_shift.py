"""`lungcls synth --shift`: a batch from another acquisition, written by the same DICOM writer."""

from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pydicom
import pytest

from lungcls.cli import main
from lungcls.io.storage import Storage
from lungcls.sources.fake_identities import SCANNERS, SHIFTED_SCANNER
from lungcls.sources.synth import AcquisitionShift, SynthOptions, synth_batch

SMALL = ["--scans", "3", "--slices", "8", "--rows", "40", "--columns", "40", "--seed", "5"]
GRID = ["--pixel-spacing", "8", "--slice-spacing", "2.5"]
OPTIONS = SynthOptions(
    scans=2, slices=8, rows=40, columns=40, pixel_spacing_mm=8.0, slice_spacing_mm=2.5, seed=5
)


def _datasets(storage: Storage, batch: str) -> list[pydicom.Dataset]:
    """Every DICOM file of a batch, in archive and member order."""
    found = []
    for info in sorted(storage.list_files(f"inbox/{batch}"), key=lambda i: i.path):
        data = storage.read_bytes(info.path)
        if info.path.endswith(".zip"):
            with zipfile.ZipFile(io.BytesIO(data)) as z:
                members = [z.read(n) for n in sorted(z.namelist())]
        elif info.path.endswith(".tar.gz"):
            with tarfile.open(fileobj=io.BytesIO(data)) as t:
                names = sorted(t.getnames())
                members = [t.extractfile(n).read() for n in names]  # type: ignore[union-attr]
        else:
            continue
        found += [pydicom.dcmread(io.BytesIO(m)) for m in members]
    return found


def _hu(datasets: list[pydicom.Dataset]) -> np.ndarray:
    return np.stack(
        [d.pixel_array * float(d.RescaleSlope) + float(d.RescaleIntercept) for d in datasets]
    )


def test_shift_alone_writes_another_scanner_kernel_and_thicker_slices(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "root"
    assert main(["--root", str(root), "synth", "--batch", "usual", *SMALL, *GRID]) == 0
    assert main(["--root", str(root), "synth", "--batch", "later", *SMALL, *GRID, "--shift"]) == 0
    assert "shifted acquisition: Canon Medical Systems Aquilion Prime SP" in capsys.readouterr().out
    storage = Storage(str(root))
    usual, later = _datasets(storage, "usual"), _datasets(storage, "later")
    assert {(d.Manufacturer, d.ConvolutionKernel) for d in usual} <= {
        (s.manufacturer, s.kernel) for s in SCANNERS
    }
    assert {float(d.SliceThickness) for d in usual} == {2.5}
    shift = AcquisitionShift()
    assert {
        (d.Manufacturer, d.ManufacturerModelName, d.ConvolutionKernel, float(d.KVP)) for d in later
    } == {tuple(SHIFTED_SCANNER)}
    assert {float(d.SliceThickness) for d in later} == {shift.slice_thickness_mm} == {5.0}
    assert len(later) == len(usual) // 2  # the same length of chest in half as many slices
    first = later[0].SeriesInstanceUID
    zs = sorted(float(d.ImagePositionPatient[2]) for d in later if d.SeriesInstanceUID == first)
    assert np.allclose(np.diff(zs), 5.0)
    # Other pixels under other UIDs: the same seed's series never reappear shifted.
    assert not {d.SeriesInstanceUID for d in usual} & {d.SeriesInstanceUID for d in later}
    # Denser (+60 HU) and noisier: the median HU of the lung and body is higher.
    body_usual, body_later = _hu(usual), _hu(later)
    lung = (-950, -400)
    median_usual = np.median(body_usual[(body_usual > lung[0]) & (body_usual < lung[1])])
    median_later = np.median(body_later[(body_later > lung[0] + 60) & (body_later < lung[1] + 60)])
    assert median_later - median_usual == pytest.approx(60, abs=25)


def test_the_offset_moves_every_hu_by_the_same_amount(tmp_path: Path) -> None:
    """Same grid and noise, an offset alone: voxel for voxel, HU differ by the offset."""
    storage = Storage(str(tmp_path / "root"))
    offset_only = AcquisitionShift(slice_thickness_mm=2.5, hu_offset=60.0, extra_noise_hu=0.0)
    synth_batch(storage, "usual", OPTIONS)
    synth_batch(storage, "offset", SynthOptions(**{**OPTIONS.__dict__, "shift": offset_only}))
    usual, offset = _hu(_datasets(storage, "usual")), _hu(_datasets(storage, "offset"))
    assert usual.shape == offset.shape
    unclipped = usual < 3071 - 60
    assert np.all((offset - usual)[unclipped] == 60)
    assert usual.min() == -1024 and offset.min() == -1024 + 60  # air outside: -1024 + 60
