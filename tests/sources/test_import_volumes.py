"""import-volumes: real LIDC nodule crops (NIfTI) and SimpleITK-written MHA/NRRD volumes ->
DICOM batch -> ingest, checked voxel by voxel against the files' own geometry."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from lungcls.cli import main
from lungcls.config import Settings
from lungcls.dataset.preprocess import mm_to_voxel, voxel_to_mm
from lungcls.ingest.deid import pseudonym, pseudonym_key
from lungcls.ingest.ledger import Ledger
from lungcls.ingest.run import ingest
from lungcls.ingest.series_store import SeriesRecord, iter_series
from lungcls.ingest.summary import IngestSummary
from lungcls.io.storage import Storage
from lungcls.sources.dicom_writer import decimal_text
from lungcls.sources.volumes import (
    VolumeImportError,
    VolumeImportOptions,
    VolumeImportReport,
    VolumeImportResult,
    import_volumes,
)
from tests.support import REAL_DATA, TEST_KEY, make_settings

LIDC = REAL_DATA / "lidc-nodules"
# Two crops with LIDC's usual affine (RAS diagonal -, -, +: identity in LPS) and two of one
# patient with the flipped one (RAS +, +, +), one positive and one negative.
LIDC_NAMES = (
    "LIDC-IDRI-0001_R_1",
    "LIDC-IDRI-0004_R_1",
    "LIDC-IDRI-0671_R_4",
    "LIDC-IDRI-0671_R_6",
)
KEY = TEST_KEY.encode()


def copy_lidc(src: Path) -> list[dict[str, str]]:
    """SRC with the chosen crops, masks and their labels.csv rows, all columns kept."""
    with (LIDC / "labels.csv").open(newline="") as f:
        reader = csv.DictReader(f)
        header = list(reader.fieldnames or [])
        rows = [r for r in reader if Path(r["file"]).name.removesuffix(".nii.gz") in LIDC_NAMES]
    for row in rows:
        for column in ("file", "mask"):
            (src / row[column]).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(LIDC / row[column], src / row[column])
    with (src / "labels.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, header)
        writer.writeheader()
        writer.writerows(rows)
    return rows


def series_by_uid(storage: Storage) -> dict[str, SeriesRecord]:
    """The stored series by the pseudonym of the SeriesInstanceUID they were written with."""
    return {s.series_id: s for s in iter_series(storage, ledger=Ledger.load(storage))}


def batch_digests(root: Path, batch: str) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted((root / "inbox" / batch).iterdir())
    }


def assert_same_voxels(
    stored: SeriesRecord, hu: np.ndarray, ijk_to_lps: np.ndarray, corners_only: bool = False
) -> None:
    """Every voxel (i, j, k) of `hu` (indexed i, j, k), at the LPS position `ijk_to_lps` (4x4)
    gives it, is a voxel of the stored series with the same HU; corners and center to 0.01 mm
    through the stored geometry."""
    shape = np.asarray(hu.shape)
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).reshape(-1, 3)
    lps = ijk @ ijk_to_lps[:3, :3].T + ijk_to_lps[:3, 3]
    geometry = (stored.origin_xyz_mm, stored.orientation, stored.spacing_zyx_mm)
    kji = mm_to_voxel(lps, *geometry)
    nearest = np.rint(kji).astype(int)
    assert np.abs(kji - nearest).max() < 1e-3, "stored voxels sit on the source's voxels"
    assert sorted(np.asarray(stored.volume.shape)) == sorted(shape)
    assert (nearest >= 0).all() and (nearest < np.asarray(stored.volume.shape)).all()
    assert np.array_equal(stored.volume[tuple(nearest.T)], hu[tuple(ijk.T)]), "HU equal"
    picks = [
        (a, b, c) for a in (0, shape[0] - 1) for b in (0, shape[1] - 1) for c in (0, shape[2] - 1)
    ]
    picks.append(tuple(shape // 2))
    for pick in picks:
        at = int(np.ravel_multi_index(pick, shape))
        position = voxel_to_mm(nearest[at], *geometry)
        np.testing.assert_allclose(position, lps[at], atol=0.01)


@dataclass(frozen=True)
class LidcImport:
    tmp: Path
    rows: list[dict[str, str]]  # their rows of the shared labels.csv
    settings: Settings
    storage: Storage
    result: VolumeImportResult
    summary: IngestSummary


@pytest.fixture(scope="module")
def lidc(tmp_path_factory: pytest.TempPathFactory) -> LidcImport:
    """Four LIDC crops imported (half of each label's patients to test) and ingested."""
    tmp = tmp_path_factory.mktemp("lidc")
    rows = copy_lidc(tmp / "src")
    settings = make_settings(tmp / "root", tmp)
    storage = Storage.from_settings(settings)
    options = VolumeImportOptions(test_fraction=0.5)
    result = import_volumes(tmp / "src", storage, "lidc", options, pseudonym_key(settings, storage))
    summary = ingest(settings, progress=False)
    return LidcImport(tmp, rows, settings, storage, result, summary)


def test_lidc_voxels_keep_their_position_and_hu(lidc: LidcImport) -> None:
    rows, storage, result, summary = lidc.rows, lidc.storage, lidc.result, lidc.summary
    assert result.volumes == 4 and result.refused == [] and result.patients == 3
    assert summary.series_ingested == 4 and summary.quarantined == []
    stored = series_by_uid(storage)
    flipped = 0
    for row in rows:
        image = nib.load(LIDC / row["file"])
        ras_to_lps = np.diag([-1.0, -1.0, 1.0, 1.0])
        affine = ras_to_lps @ image.affine
        flipped += affine[0, 0] < 0
        imported = result.by_file()[row["file"]]
        series = stored[pseudonym(KEY, "series", imported.series_uid)]
        assert_same_voxels(series, np.asarray(image.dataobj), affine)
        assert series.pixel_representation == 1 and series.bits_stored == 16
        assert imported.label == int(row["label"]) and imported.slices == image.shape[2]
        assert imported.nodule_diameter_mm == float(row["diameter_mm"])
    assert flipped == 2, "two of the crops are stored flipped in x and y"
    # One source patient, one pseudonymous patient (and one split), whatever its labels.
    by_patient = {r["patient_id"]: result.by_file()[r["file"]].patient for r in rows}
    assert len(set(by_patient.values())) == 3
    assert {s.patient_id for s in stored.values()} == {
        pseudonym(KEY, "patient", p) for p in by_patient.values()
    }
    splits = {i.patient: i.split for i in result.imported}
    # Half of each label's patients to test: one of the two positive ones, of one negative
    # none (a single patient stays in train).
    assert sorted(splits.values()) == ["test", "train", "train"]


def test_lidc_nodule_centers_fall_inside_their_masks(lidc: LidcImport) -> None:
    rows, storage, result = lidc.rows, lidc.storage, lidc.result
    written = list(csv.DictReader(io.StringIO(storage.read_text("inbox/lidc/labels.csv"))))
    centers = {
        r["series_uid"]: np.array([float(r[f"nodule_{a}_mm"]) for a in "xyz"])
        for r in written
        if r["series_uid"]
    }
    assert result.centers == {"mask": 4}
    for row in rows:
        imported = result.by_file()[row["file"]]
        center = centers[imported.series_uid]
        np.testing.assert_allclose(center, imported.nodule_center_xyz_mm, atol=1e-4)
        mask = nib.load(LIDC / row["mask"])
        ras = center * [-1.0, -1.0, 1.0]
        ijk = np.rint(np.linalg.solve(mask.affine[:3, :3], ras - mask.affine[:3, 3])).astype(int)
        assert np.asarray(mask.dataobj)[tuple(ijk)] > 0, row["file"]
    patient_rows = [r for r in written if r["patient_id"]]
    assert {r["split"] for r in patient_rows} == {"train", "test"} and len(patient_rows) == 3
    # the ingest's labels table reads every row: nothing unknown, nothing unmatched
    assert lidc.summary.quarantined == []


def test_no_source_identifier_is_written(lidc: LidcImport) -> None:
    tmp, rows, storage, result = lidc.tmp, lidc.rows, lidc.storage, lidc.result
    secrets = {r["patient_id"] for r in rows}
    secrets |= {Path(r[c]).name.removesuffix(".nii.gz") for r in rows for c in ("file", "mask")}
    blobs = [storage.read_bytes(result.report)]
    for path in sorted((tmp / "root/inbox/lidc").iterdir()):
        blobs.append(path.read_bytes())
        if path.suffix == ".zip":
            with zipfile.ZipFile(path) as archive:
                for name in archive.namelist():
                    blobs.append(name.encode())
                    data = archive.read(name)
                    blobs.append(data)
                    ds = pydicom.dcmread(io.BytesIO(data))
                    assert ds.PatientID.startswith("vol-") and ds.PatientName == ""
    for blob in blobs:
        for secret in secrets:
            assert secret.encode() not in blob, secret
    assert "imported" not in json.loads(result.to_json()), "the source mapping stays in memory"


def test_reimport_writes_identical_bytes_and_ingest_skips_it(lidc: LidcImport) -> None:
    tmp, settings, storage, result = lidc.tmp, lidc.settings, lidc.storage, lidc.result
    before = batch_digests(tmp / "root", "lidc")
    again = import_volumes(
        tmp / "src", storage, "lidc", VolumeImportOptions(test_fraction=0.5), KEY
    )
    assert batch_digests(tmp / "root", "lidc") == before
    assert [i.series_uid for i in again.imported] == [i.series_uid for i in result.imported]
    repeat = ingest(settings, progress=False)
    assert repeat.series_ingested == 0 and repeat.archives_skipped == repeat.archives_seen == 3


def write_volume(path: Path, hu: np.ndarray, spacing, origin, direction) -> sitk.Image:
    """`hu` indexed (i, j, k) as a volume file (the format from the suffix); returns it."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(hu.transpose(2, 1, 0)))
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(np.asarray(direction, dtype=np.float64).ravel().tolist())
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))
    return image


def index_to_lps(image: sitk.Image) -> np.ndarray:
    """The 4x4 matrix SimpleITK maps an index (i, j, k) to LPS mm with."""
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    matrix = np.eye(4)
    matrix[:3, :3] = direction * np.asarray(image.GetSpacing())
    matrix[:3, 3] = image.GetOrigin()
    return matrix


def test_mha_and_nrrd_keep_flipped_and_permuted_grids(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    src = tmp_path / "src"
    # Float voxels holding whole HU over more than 12 bits; x flipped: the slices (k, +z)
    # run against the normal of the rows and columns (-x by +y = -z), so they are reversed.
    flipped_hu = rng.integers(-3024, 3071, size=(7, 5, 4)).astype(np.float32)
    flipped = write_volume(
        src / "a/flipped.mha", flipped_hu, (0.8, 1.1, 2.5), (12.5, -30.25, 101.0),
        np.diag([-1.0, 1.0, 1.0]),
    )  # fmt: skip
    # int16, axes permuted and flipped: i runs along -z (the slices), j along x, k along -y.
    permuted_hu = rng.integers(-1024, 2000, size=(4, 6, 5)).astype(np.int16)
    permuted = write_volume(
        src / "b/permuted.nrrd", permuted_hu, (1.25, 0.7, 0.9), (-40.0, 15.5, -200.0),
        [[0, 1, 0], [0, 0, -1], [-1, 0, 0]],
    )  # fmt: skip
    center_mm = permuted.TransformContinuousIndexToPhysicalPoint((1.5, 2.0, 3.0))
    (src / "labels.csv").write_text(
        "file,patient_id,label,nodule_i,nodule_j,nodule_k,nodule_x_mm,nodule_y_mm,nodule_z_mm,"
        "split\n"
        "a/flipped.mha,P-A,1,3,2,1,,,,test\n"
        f"b/permuted.nrrd,P-B,0,,,,{center_mm[0]},{center_mm[1]},{center_mm[2]},\n"
    )
    settings = make_settings(tmp_path / "root", tmp_path)
    storage = Storage.from_settings(settings)
    result = import_volumes(src, storage, "vols", VolumeImportOptions(split="val"), KEY)
    assert result.volumes == 2 and result.refused == []
    assert result.centers == {"mm": 1, "voxel": 1}
    assert ingest(settings, progress=False).series_ingested == 2
    stored = series_by_uid(storage)
    written = [(flipped, flipped_hu, "a/flipped.mha"), (permuted, permuted_hu, "b/permuted.nrrd")]
    for image, hu, file in written:
        imported = result.by_file()[file]
        series = stored[pseudonym(KEY, "series", imported.series_uid)]
        assert_same_voxels(series, hu.astype(np.int16), index_to_lps(image))
    a, b = result.by_file()["a/flipped.mha"], result.by_file()["b/permuted.nrrd"]
    assert stored[pseudonym(KEY, "series", a.series_uid)].spacing_zyx_mm == (2.5, 1.1, 0.8)
    assert stored[pseudonym(KEY, "series", b.series_uid)].spacing_zyx_mm == (1.25, 0.9, 0.7)
    assert (a.split, b.split) == ("test", "val"), "the split column wins over --split"
    np.testing.assert_allclose(
        a.nodule_center_xyz_mm, flipped.TransformContinuousIndexToPhysicalPoint((3, 2, 1))
    )
    np.testing.assert_allclose(b.nodule_center_xyz_mm, center_mm)
    labels = storage.read_text("inbox/vols/labels.csv").splitlines()
    assert labels[0] == (
        "series_uid,patient_id,label,nodule_x_mm,nodule_y_mm,nodule_z_mm,nodule_diameter_mm,split"
    )
    assert sorted(line.rsplit(",", 1)[1] for line in labels[1:]) == ["", "", "test", "val"]


def small(path: Path, hu: np.ndarray | None = None, **grid) -> None:
    """A 4 x 4 x 3 volume (or `hu`, indexed i, j, k) at 1 mm, or another grid."""
    values = np.full((4, 4, 3), -800, np.int16) if hu is None else hu
    write_volume(
        path,
        values,
        grid.get("spacing", (1.0, 1.0, 1.0)),
        grid.get("origin", (0.0, 0.0, 0.0)),
        grid.get("direction", np.eye(3)),
    )


def refusal_source(src: Path, outside: Path) -> None:
    """SRC with one good row and one of every refusal."""
    for name in ("good", "v2", "v3", "v4", "v5", "dup", "v6", "v7", "v8", "unlisted"):
        small(src / f"{name}.nii.gz")
    small(src / "masks/good.nii.gz", np.pad(np.ones((1, 1, 1), np.int16), ((2, 1), (1, 2), (1, 1))))
    small(src / "masks/other-grid.nii.gz", spacing=(1.0, 1.0, 2.0))
    small(src / "masks/empty.nii.gz", np.zeros((4, 4, 3), np.int16))
    small(src / "huge.nii.gz", np.full((4, 4, 3), 1e6, np.float32))
    # Every axis 54.7° from z (z is the grid's diagonal): no slicing of it is axial.
    diagonal = [[1 / 2**0.5, -1 / 2**0.5, 0], [1 / 6**0.5, 1 / 6**0.5, -2 / 6**0.5], [3**-0.5] * 3]
    small(src / "oblique.nii.gz", direction=diagonal)
    sitk.WriteImage(sitk.Image(4, 4, sitk.sitkInt16), str(src / "flat.nii.gz"))
    (src / "garbage.nii.gz").write_bytes(b"\x1f\x8b not a volume at all")
    small(outside / "elsewhere.nii.gz")
    (src / "link.nii.gz").symlink_to(outside / "elsewhere.nii.gz")
    (src / "notes.txt").write_text("not a volume: ignored")
    (src / "labels.csv").write_text(
        "file,mask,patient_id,label,nodule_i,nodule_j,nodule_k,split,reader_malignancy\n"
        "good.nii.gz,masks/good.nii.gz,P1,1,,,,,4 5\n"
        "missing.nii.gz,,P2,0,,,,,\n"
        ",,P2,0,,,,,\n"
        "garbage.nii.gz,,P3,1,,,,,\n"
        "v2.nii.gz,masks/none.nii.gz,P3,1,,,,,\n"
        "v3.nii.gz,masks/other-grid.nii.gz,P3,1,,,,,\n"
        "v4.nii.gz,,P4,maybe,,,,,\n"
        "v5.nii.gz,,P4,0,10,0,0,,\n"
        "dup.nii.gz,,P5,0,,,,,\n"
        "./dup.nii.gz,,P5,1,,,,,\n"
        "../elsewhere.nii.gz,,P6,0,,,,,\n"
        f"{outside / 'elsewhere.nii.gz'},,P6,0,,,,,\n"
        "link.nii.gz,,P6,0,,,,,\n"
        "slice.png,,P6,0,,,,,\n"
        "v6.nii.gz,masks/empty.nii.gz,P7,0,,,,,\n"
        "huge.nii.gz,,P7,0,,,,,\n"
        "oblique.nii.gz,,P7,0,,,,,\n"
        "flat.nii.gz,,P7,0,,,,,\n"
        "v7.nii.gz,,P8,0,,,,train,\n"
        "v8.nii.gz,,P8,1,,,,test,\n"
        "v8.nii.gz-not-there,,,1,,,,,\n"
    )


def test_bad_rows_and_files_are_refused_with_codes(tmp_path: Path) -> None:
    src = tmp_path / "src"
    refusal_source(src, tmp_path / "outside")
    settings = make_settings(tmp_path / "root", tmp_path)
    storage = Storage.from_settings(settings)
    result = import_volumes(src, storage, "b", VolumeImportOptions(), KEY)
    codes = [(r.row, r.file, r.code) for r in result.refused]
    assert codes == [
        (2, "missing.nii.gz", "volume_missing"),
        (3, None, "volume_missing"),
        (4, "garbage.nii.gz", "volume_unreadable"),
        (5, "v2.nii.gz", "mask_missing"),
        (6, "v3.nii.gz", "mask_grid_mismatch"),
        (7, "v4.nii.gz", "bad_label"),
        (8, "v5.nii.gz", "center_outside_volume"),
        (9, "dup.nii.gz", "duplicate_file"),
        (10, "dup.nii.gz", "duplicate_file"),
        (11, "../elsewhere.nii.gz", "path_outside_source"),
        (12, str(tmp_path / "outside/elsewhere.nii.gz"), "path_outside_source"),
        (13, "link.nii.gz", "path_outside_source"),
        (14, "slice.png", "unsupported_format"),
        (15, "v6.nii.gz", "empty_mask"),
        (16, "huge.nii.gz", "hu_out_of_range"),
        (17, "oblique.nii.gz", "non_axial_volume"),
        (18, "flat.nii.gz", "unsupported_volume"),
        (19, "v7.nii.gz", "conflicting_split"),
        (20, "v8.nii.gz", "conflicting_split"),
        (21, "v8.nii.gz-not-there", "unsupported_format"),
        (None, "unlisted.nii.gz", "unlisted_volume"),
    ]
    assert result.volumes == 1 and result.centers == {"mask": 1}
    (good,) = result.imported
    np.testing.assert_allclose(good.nodule_center_xyz_mm, (2.0, 1.0, 1.0))  # the marked voxel
    records = [json.loads(storage.read_bytes(i.path)) for i in storage.list_files("quarantine")]
    assert sorted(r["code"] for r in records) == sorted(c for _, _, c in codes)
    report = VolumeImportReport.load(storage, result.report)
    assert report.refused["path_outside_source"] == 3 and report.volumes == 1
    assert "missing.nii.gz" not in storage.read_text(result.report), "counts, never paths"
    assert ingest(settings, progress=False).series_ingested == 1

    (src / "labels.csv").write_text("file,label\nv2.nii.gz,1\n")
    with pytest.raises(VolumeImportError, match="lacks the column"):
        import_volumes(src, storage, "c", VolumeImportOptions(), KEY)
    (src / "labels.csv").unlink()
    with pytest.raises(VolumeImportError, match=r"has no labels\.csv"):
        import_volumes(src, storage, "c", VolumeImportOptions(), KEY)
    with pytest.raises(VolumeImportError, match="not both"):
        import_volumes(src, storage, "c", VolumeImportOptions(0.2, split="test"), KEY)


def test_cli_import_volumes(tmp_path: Path, capsys) -> None:
    src = tmp_path / "src"
    refusal_source(src, tmp_path / "outside")
    root = str(tmp_path / "root")
    into = ["--root", root, "import-volumes", str(src)]
    assert main([*into, "--batch", "b", "--split", "test"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "1 volumes of 1 pseudonymous patients in 1 archives, 21 refused" in lines[0]
    assert lines[1:4] == [
        "  nodule centers: 1 from mask",
        "  train  negative     0  positive     0",
        "  val    negative     0  positive     0",
    ]
    assert lines[4] == "  test   negative     0  positive     1"
    assert "  refused row 7 v4.nii.gz: bad_label: label must be one of" in "\n".join(lines)
    assert lines[-1].startswith("  refused unlisted.nii.gz: unlisted_volume:")

    assert main([*into, "--batch", "j", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["volumes"] == 1 and "imported" not in printed
    assert VolumeImportResult.model_validate(printed).refused[0].code == "volume_missing"

    (src / "good.nii.gz").unlink()
    (src / "masks/good.nii.gz").unlink()
    assert main([*into, "--batch", "none"]) == 3
    assert "nothing imported" in capsys.readouterr().err
    assert not (tmp_path / "root/inbox/none").exists()
    (src / "labels.csv").unlink()
    assert main([*into, "--batch", "none"]) == 3
    assert "has no labels.csv" in capsys.readouterr().err


def test_decimal_text_fits_dicom() -> None:
    assert decimal_text(-0.0) == "0" and decimal_text(0.703125) == "0.703125"
    assert decimal_text(-63.14375305175781) == "-63.14375305"
    assert all(len(decimal_text(v)) <= 16 for v in (-1 / 3 * 1e5, 6.123e-17, -1.23456789e-300))
