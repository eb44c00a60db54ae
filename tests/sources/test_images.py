"""import-images: generated PNG/JPEG folders -> DICOM batch -> ingest -> 2D dataset, for real."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pydicom
import pytest
import yaml
from PIL import Image

from lungcls.cli import main
from lungcls.config import Settings
from lungcls.dataset.build import build_dataset
from lungcls.dataset.manifest import load_manifest
from lungcls.dataset.shards import iter_samples
from lungcls.evaluate.evaluation import evaluate_model
from lungcls.ingest.label_table import current_labels
from lungcls.ingest.ledger import Ledger
from lungcls.ingest.run import ingest
from lungcls.ingest.series_store import iter_series
from lungcls.io.storage import Storage
from lungcls.registry.promote import promote
from lungcls.sources.images import (
    ImageImportError,
    ImportOptions,
    ImportReport,
    PatientGroup,
    assign_splits,
    case_number,
    import_images,
    labels_csv,
)
from tests.support import TEST_KEY, make_settings, train_in_process

ROWS, COLUMNS = 40, 48  # not square: spacing follows the longer side
FOV_MM = 96.0  # 2 mm pixels: inside the contract's pixel-spacing range
TWO_D = {
    "preprocess": {
        "mode": "2d",
        "shape": (1, ROWS, COLUMNS),
        "spacing_mm": (1.0, FOV_MM / COLUMNS, FOV_MM / COLUMNS),
        "crop_center": "image",
    },
}


def slice_image(seed: int, bright: bool) -> np.ndarray:
    """A made-up grey 'slice': dark background, a disc, noise (no real patient pixels)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:ROWS, :COLUMNS]
    disc = (y - ROWS / 2) ** 2 + (x - COLUMNS / 2) ** 2 < (ROWS / 3) ** 2
    grey = rng.integers(0, 40, size=(ROWS, COLUMNS))
    grey[disc] = rng.integers(120 if bright else 60, 256 if bright else 200, size=disc.sum())
    return grey.astype(np.uint8)


def write_folder(root: Path, counts: dict[str, int], suffix: str = ".png") -> dict[str, dict]:
    """SRC/<class>/<class>-NNN<suffix>; returns the pixels written, by class and number."""
    written: dict[str, dict] = {}
    for index, (name, count) in enumerate(counts.items()):
        (root / name).mkdir(parents=True)
        written[name] = {}
        for number in range(1, count + 1):
            grey = slice_image(index * 1000 + number, bright=index == 0)
            Image.fromarray(grey).save(root / name / f"{name}-{number:03d}{suffix}")
            written[name][number] = grey
    return written


def test_case_number_is_the_first_integer() -> None:
    assert case_number("malignant-040.jpg") == 40
    assert case_number("Malignant case (12).png") == 12
    assert case_number("000108 (3).png") == 108
    assert case_number("scan.png") is None


@pytest.mark.parametrize(
    ("groups", "test_range", "layout"),
    [
        (40, (0.8, 1.0), "....._VVV_..........._VVV_....._TTTTTTTT"),
        (40, (0.4, 0.6), "....._VVV_....._TTTTTTTT_...._VVV_......"),
        (9, (0.0, 0.2), "TT_._V_.."),
    ],
)
def test_split_layout_blocks_and_gaps(groups: int, test_range, layout: str) -> None:
    """Test: one contiguous range; val: two blocks across the rest; a gap group (no label)
    beside every held-out block."""
    ordered = [PatientGroup("c", 1, i, i, []) for i in range(groups)]
    assign_splits(ordered, ImportOptions(("c",), test_range=test_range, val_fraction=0.15))
    code = {"train": ".", "val": "V", "test": "T", "gap": "_"}
    assert "".join(code[g.split] for g in ordered) == layout
    assert labels_csv(ordered, "b").count("\n") == 1 + layout.count(".") + len(
        layout.replace(".", "").replace("_", "")
    )


def test_import_ingest_round_trip_grouping_and_splits(tmp_path: Path) -> None:
    written = write_folder(tmp_path / "src", {"cancer": 14, "normal": 12})
    settings = make_settings(tmp_path / "root", tmp_path, **TWO_D)
    storage = Storage.from_settings(settings)
    options = ImportOptions(
        positive=("cancer",),
        group_size=3,
        fov_mm=FOV_MM,
        test_range=(0.75, 1.0),
        val_fraction=0.25,
        gap_groups=0,  # too few groups to leave some out (see the layout test)
    )
    result = import_images(str(tmp_path / "src"), storage, "imgs", options)
    assert result.images == 26 and result.quarantined == []
    # 14 numbers in groups of 3 -> 5 groups; 12 -> 4
    assert {name: entry.model_dump() for name, entry in result.classes.items()} == {
        "cancer": {"label": 1, "images": 14, "patients": 5},
        "normal": {"label": 0, "images": 12, "patients": 4},
    }
    labels = storage.read_text("inbox/imgs/labels.csv").splitlines()
    assert labels[0] == "patient_id,label,split"
    # the last groups are test (one contiguous tail), val is taken from the rest
    assert labels[1:6] == [
        "imgs:cancer:1-3,1,train",
        "imgs:cancer:4-6,1,train",
        "imgs:cancer:7-9,1,val",
        "imgs:cancer:10-12,1,train",
        "imgs:cancer:13-15,1,test",
    ]
    assert [line.rsplit(",", 1)[1] for line in labels[6:]] == ["train", "val", "train", "test"]
    with zipfile.ZipFile(tmp_path / "root/inbox/imgs/cancer-00001-00003.zip") as archive:
        assert archive.namelist() == [f"cancer-00{n}.dcm" for n in (1, 2, 3)]
        ds = pydicom.dcmread(archive.open("cancer-001.dcm"))
    assert ds.Modality == "CT" and list(ds.ImageType)[:2] == ["DERIVED", "SECONDARY"]
    assert "cancer" not in str(ds.SeriesDescription if "SeriesDescription" in ds else "")
    assert float(ds.PixelSpacing[0]) == pytest.approx(FOV_MM / COLUMNS)

    summary = ingest(settings, progress=False)
    assert summary.series_ingested == 26 and summary.quarantined == []
    stored = list(iter_series(storage, ledger=Ledger.load(storage)))
    labels = current_labels(storage)  # labels are their own table, applied at dataset build
    tail = {("cancer", 13), ("cancer", 14), ("normal", 10), ("normal", 11), ("normal", 12)}
    slope, intercept = 1500 / 255, -1350.0
    for series in stored:
        hu = series.volume
        assert hu.shape == (1, ROWS, COLUMNS)
        grey = np.rint((hu[0] - intercept) / slope)
        matches = [
            (c, n) for c, by in written.items() for n, g in by.items() if np.array_equal(g, grey)
        ]
        assert len(matches) == 1, "every stored slice is exactly one source image"
        (class_name, number) = matches[0]
        label = labels.lookup(series.batch, series.series_id, series.study_id, series.patient_id)
        assert label is not None and label.label == int(class_name == "cancer")
        split = labels.split_for(series.batch, series.patient_id)
        assert (split == "test") == ((class_name, number) in tail)
    patients = {s.patient_id for s in stored}
    assert len(patients) == 9 and all(p.startswith("patient-") for p in patients)

    built = build_dataset(settings, progress=False)
    manifest = load_manifest(storage, built.name)
    assert manifest.splits.assigned_patients == 9
    assert built.counts == {
        "train": {"0": 6, "1": 9},
        "val": {"0": 3, "1": 3},
        "test": {"0": 3, "1": 2},  # cancer 13-14 (group 13-15) and normal 10-12
    }
    for sample in iter_samples(storage, manifest.shards):
        tensor = sample.array().astype(np.float32)
        assert tensor.shape == (1, ROWS, COLUMNS)
        # The default preprocessing window is the import window: grey comes back as g/255.
        grey = np.rint(tensor[0] * 255)
        assert any(np.array_equal(grey, g) for by in written.values() for g in by.values())

    again = import_images(str(tmp_path / "src"), storage, "imgs", options)
    assert again.images == 26
    assert ingest(settings, progress=False).series_ingested == 0, "byte-identical: skipped"


def test_bad_inputs_are_refused_with_reasons(tmp_path: Path, settings: Settings) -> None:
    src = tmp_path / "src"
    write_folder(src, {"malignant": 3, "benign": 2}, suffix=".jpg")
    (src / "malignant" / "notes.txt").write_text("not an image")
    (src / "malignant" / "malignant-010.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    colour = np.zeros((ROWS, COLUMNS, 3), dtype=np.uint8)
    colour[..., 0] = 200
    Image.fromarray(colour).save(src / "benign" / "benign-020.png")
    grey_rgb = np.repeat(slice_image(5, True)[..., None], 3, axis=2)
    Image.fromarray(grey_rgb).save(src / "benign" / "benign-021.png")  # grey stored as RGB: fine
    shutil.copy(src / "benign" / "benign-001.jpg", src / "benign" / "benign-030.jpg")
    Image.fromarray(slice_image(9, False)).save(src / "benign" / "unnumbered.png")
    storage = Storage.from_settings(settings)

    result = import_images(str(src), storage, "b", ImportOptions(positive=("malignant",)))
    codes = {item.member: item.code for item in result.quarantined}
    assert codes == {
        "malignant/notes.txt": "not_image",
        "malignant/malignant-010.png": "unreadable_image",
        "benign/benign-020.png": "colour_image",
        "benign/benign-030.jpg": "duplicate_image",
        "benign/unnumbered.png": "no_case_number",
    }
    assert result.images == 6  # 3 + 2 JPEGs and the grey RGB PNG
    assert "labels.csv" in {p.name for p in (Path(settings.root) / "inbox/b").iterdir()}
    assert ",split" not in storage.read_text("inbox/b/labels.csv").splitlines()[0]
    reasons = [json.loads(storage.read_bytes(i.path)) for i in storage.list_files("quarantine")]
    assert {r["code"] for r in reasons} == set(codes.values())
    assert ingest(settings, progress=False).series_ingested == 6

    (src / "empty").mkdir()
    with pytest.raises(ImageImportError, match="'empty' holds no usable"):
        import_images(str(src), storage, "c", ImportOptions(positive=("malignant",)))
    with pytest.raises(ImageImportError, match="not found"):
        import_images(str(src), storage, "c", ImportOptions(positive=("tumour",)))


def test_cli_import_images(tmp_path: Path, settings: Settings, capsys) -> None:
    write_folder(tmp_path / "src", {"pos": 4, "neg": 5})
    into = ["--root", settings.root, "import-images", str(tmp_path / "src")]
    whole = ["--positive", "pos", "--group-size", "2", "--test-range", "0:1", "--json"]
    assert main([*into, "--batch", "b", *whole]) == 0  # an external set: all test
    printed = json.loads(capsys.readouterr().out)
    assert printed["splits"]["test"] == {"0": 5, "1": 4} and printed["patients"] == 5
    report = ImportReport.load(Storage(settings.root), printed["report"])
    assert report.model_dump(include=set(printed)) == printed  # the summary, and more:
    assert report.options.positive == ("pos",) and report.options.test_range == (0.0, 1.0)
    assert [g.split for g in report.groups] == ["test"] * 5
    assert report.pixel_mapping.rescale_intercept == "-1350"
    assert main([*into, "--batch", "d", *whole[:-1]]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "9 images as 5 pseudonymous patients in 5 archives, 0 refused" in lines[0]
    assert lines[0].endswith("/import.json") and "/inbox/d;" in lines[0]
    assert lines[1:] == [
        "  class neg          label 0      5 images     3 patients",
        "  class pos          label 1      4 images     2 patients",
        "  train  negative     0  positive     0",
        "  val    negative     0  positive     0",
        "  test   negative     5  positive     4",
        "  gap    negative     0  positive     0",
    ]
    assert main([*into, "--batch", "c", "--positive", "pos", "--window", "x"]) == 2
    assert "--window 'x'" in capsys.readouterr().err


def test_champion_scores_another_imported_batch(tmp_path: Path, capsys) -> None:
    """Train on one imported batch; `lungcls evaluate --model champion --dataset X` scores a
    second batch imported the same way, with the operating point chosen on the first."""
    write_folder(tmp_path / "src", {"pos": 12, "neg": 12})
    write_folder(tmp_path / "held", {"pos": 4, "neg": 5})
    relaxed = {"min_sensitivity": 0.0, "min_auc_lower_ci": 0.0, "max_ece": 1.0}
    settings = make_settings(
        tmp_path / "root",
        tmp_path,
        **TWO_D,
        dataset={"name": "home", "batches": ["a"]},
        model={"width": 8, "depth": 2},
        promotion=relaxed,
        evaluation={"bootstrap_rounds": 200, "min_patients_per_class": 1},
    )
    config = tmp_path / "lungcls.yaml"
    config.write_text(yaml.safe_dump({**settings.masked(), "pseudonym_key": TEST_KEY}))
    cli = ["--config", str(config)]
    common = ["--positive", "pos", "--group-size", "2", "--fov-mm", str(FOV_MM)]
    src, held = str(tmp_path / "src"), str(tmp_path / "held")
    split = ["--test-range", "0.7:1", "--val-fraction", "0.3", "--gap-groups", "0"]
    assert main([*cli, "import-images", src, "--batch", "a", *common, *split]) == 0
    assert main([*cli, "import-images", held, "--batch", "b", *common, "--test-range", "0:1"]) == 0
    assert main([*cli, "ingest"]) == 0
    assert main([*cli, "dataset", "build"]) == 0  # dataset.batches: only batch a
    # The second batch, with the first one's too: what the model saw must be left out.
    assert main([*cli, "dataset", "build", "--name", "more", "--batch", "a", "--batch", "b"]) == 0
    version = train_in_process(settings, steps=40)
    assert promote(settings, version).outcome == "promoted"
    capsys.readouterr()

    assert main([*cli, "evaluate", "--model", "champion", "--dataset", "more", "--json"]) == 0
    key = json.loads(capsys.readouterr().out)
    assert key["dataset"] == {"name": "more", "version": 1}
    home = evaluate_model(settings, version="champion")
    assert key["operating_point"]["threshold"] == home.report.operating_point.threshold
    assert key["operating_point"]["chosen_on"] == "val of home v1"
    assert 0.0 <= key["test"]["roc_auc"]["value"] <= 1.0
    report = json.loads(Path(key["report"]["json"].removeprefix("file://")).read_text())
    assert report["calibration"] == home.report.calibration.model_dump()
    counts = load_manifest(Storage.from_settings(settings), "home").counts
    seen = sum(int(n) for split in ("train", "val") for n in counts[split].values())
    assert report["external"]["excluded_seen_in_training"] == seen == 16
    assert report["external"]["samples_scored"] == 8 + 9  # batch a's test split + batch b
