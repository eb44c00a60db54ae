"""Dataset versions: contracts, preprocessing, patient splits, shards and manifests."""

from __future__ import annotations

import codecs
import csv
import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from lungcls.cli import main
from lungcls.config import Settings
from lungcls.dataset.build import build_dataset
from lungcls.dataset.contracts import ContractError, load_contract
from lungcls.dataset.labelling import apply_labels
from lungcls.dataset.manifest import (
    BuildRecord,
    LabelChange,
    Manifest,
    ShardInfo,
    list_versions,
    load_manifest,
)
from lungcls.dataset.shards import iter_samples, read_shard_metadata
from lungcls.dataset.validation import series_frame
from lungcls.ingest.archive import discover_archives
from lungcls.ingest.deid import pseudonym
from lungcls.ingest.label_table import LabelsHistory, current_labels, refresh_labels
from lungcls.ingest.ledger import LOG_DIR, Ledger
from lungcls.ingest.run import ingest
from lungcls.io.quarantine import read_quarantine
from lungcls.io.storage import Storage
from lungcls.sources.synth import SynthOptions, synth_batch
from tests.support import TEST_KEY, copy_root, make_settings

SCANS = SynthOptions(
    scans=40, slices=20, rows=64, columns=64, pixel_spacing_mm=5.6, slice_spacing_mm=5.0, seed=21
)
KEY = TEST_KEY.encode()
OVERRIDES = {
    "contracts": {"max_pixel_spacing_mm": 6.0},
    "preprocess": {"shape": (12, 12, 12), "spacing_mm": (3.0, 3.0, 3.0)},
}


def dataset_settings(root: Path | str, tmp_path: Path, **extra: object) -> Settings:
    return make_settings(root, tmp_path, **{**OVERRIDES, **extra})


@pytest.fixture(scope="module")
def _ingested(tmp_path_factory: pytest.TempPathFactory) -> Storage:
    """The batch ingested once for the module (read-only: `ds_settings` copies it)."""
    folder = tmp_path_factory.mktemp("ingested")
    settings = dataset_settings(folder / "root", folder)
    synth_batch(Storage.from_settings(settings), "b1", SCANS)
    ingest(settings, progress=False)
    return Storage.from_settings(settings)


@pytest.fixture
def ds_settings(tmp_path: Path, _ingested: Storage) -> Settings:
    """A root of its own with the batch ingested."""
    settings = dataset_settings(tmp_path / "root", tmp_path)
    copy_root(_ingested, Storage.from_settings(settings))
    return settings


def test_first_build_publishes_a_consistent_version(ds_settings: Settings) -> None:
    storage = Storage.from_settings(ds_settings)
    result = build_dataset(ds_settings, progress=False)
    assert (result.created, result.version, result.preprocessed) == (True, 1, 40)
    manifest = load_manifest(storage, "lung-nodules")
    assert manifest.samples == 40 and manifest.parent is None
    assert set(manifest.splits_present) == {"train", "val", "test"}
    assert all(min(c.values()) > 0 for c in manifest.counts.values())
    suite = load_contract("series_metadata").suite
    assert manifest.contracts["series_metadata"].evaluated_expectations == len(
        suite["expectations"]
    )
    for shard in manifest.shards:
        assert storage.sha256(shard.path) == shard.sha256
    samples = list(iter_samples(storage, manifest.shards))
    assert len(samples) == 40
    tensor = samples[0].array()
    assert tensor.shape == (1, 12, 12, 12) and tensor.dtype == np.float16
    assert float(tensor.min()) >= 0.0 and float(tensor.max()) <= 1.0
    splits_by_patient: dict[str, set[str]] = {}
    for sample in samples:
        splits_by_patient.setdefault(sample.patient_id, set()).add(sample.split)
    assert all(len(s) == 1 for s in splits_by_patient.values())
    assert len(splits_by_patient) < 40  # some patients have two series, kept together
    build = BuildRecord.load(storage, "datasets/lung-nodules/v1/build.json")
    assert (build.preprocessed, build.reused_shards) == (40, 0)
    assert storage.exists(build.validation["series_metadata"])
    assert storage.exists(f"{build.data_docs}/series_metadata/index.html")


def test_no_new_data_no_new_version(ds_settings: Settings) -> None:
    first = build_dataset(ds_settings, progress=False)
    again = build_dataset(ds_settings, progress=False)
    assert (again.created, again.version, again.preprocessed) == (False, 1, 0)
    assert again.seconds < first.seconds * 0.5
    assert list_versions(Storage.from_settings(ds_settings), "lung-nodules") == [1]


def test_new_batch_preprocesses_only_new_series(ds_settings: Settings) -> None:
    storage = Storage.from_settings(ds_settings)
    build_dataset(ds_settings, progress=False)
    v1 = load_manifest(storage, "lung-nodules", 1)
    before = {s.sample_id: s.split for s in iter_samples(storage, v1.shards)}
    synth_batch(storage, "b2", SynthOptions(**{**SCANS.__dict__, "scans": 12, "seed": 22}))
    ingest(ds_settings, progress=False)
    second = build_dataset(ds_settings, progress=False)
    assert (second.version, second.preprocessed, second.reused_shards) == (2, 12, 3)
    v2 = load_manifest(storage, "lung-nodules", 2)
    assert v2.parent == 1 and v2.samples == 52
    assert set(v1.shards) <= set(v2.shards)
    after = {s.sample_id: s.split for s in iter_samples(storage, v2.shards)}
    assert {k: after[k] for k in before} == before  # nobody changed split


def test_contract_violation_is_quarantined_and_the_rest_builds(ds_settings: Settings) -> None:
    storage = Storage.from_settings(ds_settings)
    thick = SynthOptions(
        **{**SCANS.__dict__, "scans": 1, "slice_spacing_mm": 12.0, "slices": 10, "seed": 99}
    )
    synth_batch(storage, "thick", thick)
    ingest(ds_settings, progress=False)
    result = build_dataset(ds_settings, progress=False)
    assert result.created and result.preprocessed == 40
    (item,) = result.quarantined
    assert item.code == "contract_violation" and item.details is not None
    assert "expect_column_values_to_be_between" in item.details.expectations
    assert item.details.observed["slice_thickness_mm"] == "12.0"
    records = [r for r in read_quarantine(storage) if r.code == "contract_violation"]
    assert records == [item]  # what the build reports is what it wrote
    manifest = load_manifest(storage, "lung-nodules")
    assert manifest.excluded.series_contract == 1 and manifest.samples == 40


def test_a_split_without_both_classes_fails_loudly(tmp_path: Path) -> None:
    settings = dataset_settings(tmp_path / "root", tmp_path)
    synth_batch(
        Storage.from_settings(settings),
        "b",
        SynthOptions(**{**SCANS.__dict__, "scans": 4, "positive_fraction": 1.0}),
    )
    ingest(settings, progress=False)
    with pytest.raises(ContractError, match="partial_missing_list"):
        build_dataset(settings, progress=False)
    assert list_versions(Storage.from_settings(settings), "lung-nodules") == []


def test_same_version_on_s3(ds_settings: Settings, s3_settings: Settings, tmp_path: Path) -> None:
    s3 = s3_settings.model_copy(update={k: ds_settings.__dict__[k] for k in OVERRIDES})
    synth_batch(Storage.from_settings(s3), "b1", SCANS)
    ingest(s3, progress=False)
    remote = build_dataset(s3, progress=False)
    local = build_dataset(ds_settings, progress=False)
    storages = (Storage.from_settings(s3), Storage.from_settings(ds_settings))
    manifests = [
        load_manifest(s, "lung-nodules", r.version)
        for s, r in zip(storages, (remote, local), strict=True)
    ]
    assert manifests[0] == manifests[1]


def test_kill_9_mid_build_then_rerun_gives_the_clean_manifest(tmp_path: Path) -> None:
    roots = {}
    for name in ("killed", "clean"):
        settings = dataset_settings(
            tmp_path / name, tmp_path, dataset={"shard_target_mb": 0.02}
        )  # ~3 samples per shard
        synth_batch(Storage.from_settings(settings), "b1", SCANS)
        ingest(settings, progress=False)
        roots[name] = settings
    config = tmp_path / "killed.yaml"
    config.write_text(yaml.safe_dump({**roots["killed"].masked(), "pseudonym_key": TEST_KEY}))
    process = subprocess.Popen(
        [sys.executable, "-m", "lungcls.cli", "--config", str(config), "dataset", "build"],
        stderr=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
    )
    shards = tmp_path / "killed" / "datasets" / "lung-nodules" / "v1" / "shards"
    deadline = time.monotonic() + 120
    while process.poll() is None and time.monotonic() < deadline:
        if shards.is_dir() and len(list(shards.glob("*.parquet"))) >= 2:
            break
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    killed_storage = Storage.from_settings(roots["killed"])
    assert list_versions(killed_storage, "lung-nodules") == [], "the kill came too late"

    build_dataset(roots["killed"], progress=False)
    build_dataset(roots["clean"], progress=False)
    clean_storage = Storage.from_settings(roots["clean"])
    # The killed build's number is never reused: the rerun commits the next one, with the
    # manifest of a clean build but for its number.
    assert list_versions(killed_storage, "lung-nodules") == [2]
    rerun = load_manifest(killed_storage, "lung-nodules").model_dump_json()
    clean = load_manifest(clean_storage, "lung-nodules").model_dump_json()
    assert rerun.replace("/v2/", "/v1/").replace('"version":2', '"version":1') == clean
    killed_files = sorted(p.name for p in (shards.parent.parent / "v2" / "shards").iterdir())
    clean_files = sorted(
        p.name for p in (tmp_path / "clean/datasets/lung-nodules/v1/shards").iterdir()
    )
    assert killed_files == clean_files
    # The killed build's own folder is left as it was (claimed, never committed) for gc.
    assert (shards.parent / "claim.json").exists()
    assert not (shards.parent / "manifest.json").exists()


def _labels_rows(storage: Storage, batch: str = "b1") -> list[list[str]]:
    text = storage.read_text(f"inbox/{batch}/labels.csv")
    return list(csv.reader(io.StringIO(text)))


def _deliver_labels(storage: Storage, rows: list[list[str]], batch: str = "b1") -> None:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    time.sleep(0.01)  # a new mtime, as a second delivery has
    storage.write_atomic(f"inbox/{batch}/labels.csv", buffer.getvalue().encode())


def _show(settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> str:
    """What `lungcls dataset show` prints for the latest version."""
    config = tmp_path / "show.yaml"
    config.write_text(yaml.safe_dump({**settings.masked(), "pseudonym_key": TEST_KEY}))
    capsys.readouterr()
    assert main(["--config", str(config), "dataset", "show"]) == 0
    return capsys.readouterr().out


def _shard_of(storage: Storage, manifest: Manifest, series_id: str) -> ShardInfo:
    (shard,) = [
        s
        for s in manifest.shards
        if series_id in read_shard_metadata(storage, s.path)["series_id"].to_pylist()
    ]
    return shard


def test_late_labels_count_in_the_next_version_without_ingest(
    ds_settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    storage = Storage.from_settings(ds_settings)
    late = synth_batch(storage, "b2", SynthOptions(**{**SCANS.__dict__, "scans": 12, "seed": 22}))
    labels = storage.read_bytes("inbox/b2/labels.csv")
    storage.remove("inbox/b2/labels.csv")  # the archives come first
    ingest(ds_settings, progress=False)
    first = build_dataset(ds_settings, progress=False)
    v1 = load_manifest(storage, "lung-nodules", first.version)
    assert (v1.samples, v1.excluded.unlabelled) == (40, 12)
    ledger = storage.list_files(LOG_DIR)

    storage.write_atomic("inbox/b2/labels.csv", labels)  # the labels a week later
    second = build_dataset(ds_settings, progress=False)
    assert (second.created, second.preprocessed, second.reused_shards) == (True, 12, 3)
    assert storage.list_files(LOG_DIR) == ledger  # no archive was read again
    v2 = load_manifest(storage, "lung-nodules", second.version)
    assert (v2.samples, v2.excluded.unlabelled, v2.parent) == (52, 0, 1)
    gained = {pseudonym(KEY, "series", s.scan.series_uid) for s in late}
    assert {c.series_id for c in v2.label_changes} == gained
    assert {(c.kind, c.before) for c in v2.label_changes} == {("gained", None)}
    samples = {s.sample_id: s.label for s in iter_samples(storage, v2.shards)}
    assert all(samples[pseudonym(KEY, "series", s.scan.series_uid)] == s.label for s in late)
    shown = _show(ds_settings, tmp_path, capsys)
    assert "label changes since v1: 12 series (12 gained)" in shown
    change = v2.label_changes[0]
    assert f"{change.series_id}: unlabelled -> {change.after} (gained)" in shown


def test_a_corrected_label_remakes_only_its_shard(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = dataset_settings(tmp_path / "root", tmp_path, dataset={"shard_target_mb": 0.02})
    storage = Storage.from_settings(settings)
    scans = synth_batch(storage, "b1", SCANS)
    ingest(settings, progress=False)
    build_dataset(settings, progress=False)
    v1 = load_manifest(storage, "lung-nodules", 1)
    assert len(v1.shards) > 3  # several shards per split

    rows = _labels_rows(storage)
    number = next(i for i, r in enumerate(rows) if i and r[0] and r[3] in ("0", "1"))
    flipped = pseudonym(KEY, "series", rows[number][0])
    before = int(rows[number][3])
    rows[number][3] = str(1 - before)
    _deliver_labels(storage, rows)
    second = build_dataset(settings, progress=False)
    v2 = load_manifest(storage, "lung-nodules", 2)
    assert v2.label_changes == [LabelChange(series_id=flipped, before=before, after=1 - before)]
    remade = _shard_of(storage, v1, flipped)
    assert (second.preprocessed, second.reused_shards) == (remade.rows, len(v1.shards) - 1)
    assert set(v1.shards) - set(v2.shards) == {remade}
    samples = {s.sample_id: s.label for s in iter_samples(storage, v2.shards)}
    assert samples[flipped] == 1 - before and v2.samples == v1.samples
    assert f"{flipped}: {before} -> {1 - before} (changed)" in _show(settings, tmp_path, capsys)

    # A corrected nodule center: no label changes, but that sample is cropped again.
    number = next(i for i, r in enumerate(rows) if i and r[0] and r[4])
    moved = pseudonym(KEY, "series", rows[number][0])
    rows[number][4] = str(float(rows[number][4]) + 9.0)
    _deliver_labels(storage, rows)
    third = build_dataset(settings, progress=False)
    v3 = load_manifest(storage, "lung-nodules", 3)
    assert v3.label_changes == []
    remade = _shard_of(storage, v2, moved)
    assert (third.preprocessed, third.reused_shards) == (remade.rows, len(v2.shards) - 1)
    tensors = [{s.sample_id: s.array() for s in iter_samples(storage, v.shards)} for v in (v2, v3)]
    assert not np.array_equal(tensors[0][moved], tensors[1][moved])
    assert len(scans) == v3.samples


def test_labels_saved_again_by_excel_make_no_new_version(ds_settings: Settings) -> None:
    storage = Storage.from_settings(ds_settings)
    build_dataset(ds_settings, progress=False)
    rows = _labels_rows(storage)  # as Excel saves it where decimals have a comma
    rows = [r[:4] + [v.replace(".", ",") for v in r[4:]] for r in rows]
    excel = "".join(";".join(r) + "\r\n" for r in rows)
    time.sleep(0.01)
    storage.write_atomic("inbox/b1/labels.csv", codecs.BOM_UTF8 + excel.encode())
    again = build_dataset(ds_settings, progress=False)
    assert (again.created, again.version, again.quarantined) == (False, 1, [])
    assert [e.version for e in LabelsHistory.load(storage).entries] == [1, 2]


def test_batches_without_a_labels_version_keep_their_records_labels(
    ds_settings: Settings,
) -> None:
    storage = Storage.from_settings(ds_settings)
    storage.write_atomic("inbox/b2/labels.csv", b"patient_id,label,split\nP1,1,test\n")
    _, files = discover_archives(storage, "inbox")
    refresh_labels(storage, KEY, [f for f in files if "/b2/" in f.path], "r1")
    stamped = series_frame(storage, Ledger.load(storage)).head(3).copy()
    stamped["batch"] = ["b0", "b0", "b2"]  # b0: ingested before labels tables existed
    stamped["label"] = pd.array([1, 0, 0], dtype="Int64")
    stamped["split"] = ["val", None, None]
    stamped["nodule_x_mm"] = [1.0, None, 2.0]
    stamped["patient_id"] = [stamped["patient_id"].iloc[0], "x", pseudonym(KEY, "patient", "P1")]
    applied = apply_labels(stamped, current_labels(storage))
    assert applied["label"].tolist() == [1, 0, 1]
    assert [s if isinstance(s, str) else None for s in applied["split"]] == ["val", None, "test"]
    assert applied["nodule_x_mm"].iloc[0] == 1.0 and pd.isna(applied["nodule_x_mm"].iloc[2])
    assert applied["label_level"].iloc[2] == "patient"
