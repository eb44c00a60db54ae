"""Synthetic batches: real DICOM, byte-identical per seed, labels that match the pixels."""

from __future__ import annotations

import csv
import io
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pydicom
import pytest

from lungcls.cli import main
from lungcls.config import load_settings
from lungcls.ingest.archive import discover_archives
from lungcls.io.storage import Storage
from lungcls.sources.demo import DEMO_BATCH, ensure_demo_batch
from lungcls.sources.synth import SynthOptions, synth_batch
from tests.support import TEST_KEY

OPTIONS = SynthOptions(
    scans=6, slices=8, rows=40, columns=40, pixel_spacing_mm=8.0, slice_spacing_mm=6.0, seed=5
)


def _members(storage: Storage, rel: str) -> dict[str, bytes]:
    data = storage.read_bytes(rel)
    if rel.endswith(".zip"):
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            return {n: z.read(n) for n in z.namelist()}
    with tarfile.open(fileobj=io.BytesIO(data)) as t:
        return {m.name: t.extractfile(m).read() for m in t.getmembers()}  # type: ignore[union-attr]


def test_same_seed_gives_byte_identical_batches(tmp_path) -> None:
    a, b = Storage(str(tmp_path / "a")), Storage(str(tmp_path / "b"))
    synth_batch(a, "x", OPTIONS)
    synth_batch(b, "x", OPTIONS)
    files_a = {i.path: a.sha256(i.path) for i in a.list_files("inbox")}
    files_b = {i.path: b.sha256(i.path) for i in b.list_files("inbox")}
    assert files_a == files_b
    assert any(p.endswith(".zip") for p in files_a) and any(p.endswith(".tar.gz") for p in files_a)
    c = Storage(str(tmp_path / "c"))
    synth_batch(c, "x", SynthOptions(**{**OPTIONS.__dict__, "seed": 6}))
    assert {i.path: c.sha256(i.path) for i in c.list_files("inbox")} != files_a


def test_files_are_complete_ct_with_fake_identifiers(storage: Storage) -> None:
    scans = synth_batch(storage, "x", OPTIONS)
    members = _members(storage, scans[0].archive)
    datasets = [pydicom.dcmread(io.BytesIO(data)) for data in members.values()]
    ds = datasets[0]
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2" and ds.Modality == "CT"
    for keyword in (
        "PatientName",
        "PatientBirthDate",
        "PatientAddress",
        "InstitutionName",
        "AccessionNumber",
        "ReferringPhysicianName",
        "OtherPatientIDs",
    ):
        assert str(ds.get(keyword, "")), keyword
    assert len({d.SOPInstanceUID for d in datasets}) == len(datasets)
    hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    assert hu.min() >= -1024 and hu.max() > 300  # air and bone both present
    zs = sorted(
        float(d.ImagePositionPatient[2])
        for d in datasets
        if d.SeriesInstanceUID == ds.SeriesInstanceUID
    )
    assert np.allclose(np.diff(zs), OPTIONS.slice_spacing_mm)


def test_labels_csv_matches_the_plan(storage: Storage) -> None:
    scans = synth_batch(storage, "x", SynthOptions(**{**OPTIONS.__dict__, "scans": 20}))
    rows = list(csv.DictReader(io.StringIO(storage.read_text("inbox/x/labels.csv"))))
    assert len(rows) == 20
    assert any(r["patient_id"] for r in rows) and any(r["series_uid"] for r in rows)
    assert {r["label"] for r in rows} >= {"0", "1"}
    positives = [s for s in scans if s.label == 1]
    assert len(positives) == 10
    assert all(s.nodule is not None and s.nodule.malignant for s in positives)
    assert all(s.nodule is None or not s.nodule.malignant for s in scans if s.label == 0)
    # some patients have two series: a patient-level split must keep them together
    patients = [s.patient.patient_id for s in scans]
    assert len(set(patients)) < len(patients)


def test_slice_mode_cuts_through_the_nodule(storage: Storage) -> None:
    options = SynthOptions(
        scans=4,
        rows=64,
        columns=64,
        pixel_spacing_mm=5.0,
        mode="slice",
        positive_fraction=1.0,
        seed=2,
    )
    scans = synth_batch(storage, "s", options)
    for scan in scans:
        assert scan.geometry.shape_zyx[0] == 1
        assert scan.nodule is not None
        assert scan.geometry.origin_xyz_mm[2] == scan.nodule.center_xyz_mm[2]


def test_synth_and_the_demo_write_into_the_configured_inbox(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`ingest.inbox` set to another folder: `lungcls synth` and the demo batch go there,
    where ingest looks, and nothing lands in the default `inbox/`."""
    monkeypatch.setenv("LUNGCLS_INGEST__INBOX", "deliveries")
    root = tmp_path / "root"
    small = ["--scans", "3", "--slices", "8", "--rows", "40", "--columns", "40"]
    grid = ["--pixel-spacing", "8", "--slice-spacing", "6", "--seed", "5"]
    assert main(["--root", str(root), "synth", "--batch", "b", *small, *grid]) == 0
    assert "deliveries/b" in capsys.readouterr().out
    settings = load_settings(None, root=str(root), pseudonym_key=TEST_KEY)
    assert settings.ingest.inbox == "deliveries"
    ensure_demo_batch(settings, OPTIONS)
    storage = Storage.from_settings(settings)
    archives, labels = discover_archives(storage, "deliveries")
    assert {a.batch for a in archives} == {"b", DEMO_BATCH}
    assert {info.path for info in labels} == {
        "deliveries/b/labels.csv",
        f"deliveries/{DEMO_BATCH}/labels.csv",
    }
    assert not (root / "inbox").exists()
    ensure_demo_batch(settings, OPTIONS)
    assert "already there, kept" in capsys.readouterr().out
