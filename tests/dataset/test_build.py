"""Dataset versions: contracts, preprocessing, patient splits, shards and manifests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from lungcls.config import Settings
from lungcls.dataset.build import build_dataset
from lungcls.dataset.contracts import ContractError, load_contract
from lungcls.dataset.manifest import BuildRecord, list_versions, load_manifest
from lungcls.dataset.shards import iter_samples
from lungcls.ingest.run import ingest
from lungcls.io.quarantine import read_quarantine
from lungcls.io.storage import Storage
from lungcls.sources.synth import SynthOptions, synth_batch
from tests.support import TEST_KEY, make_settings

SCANS = SynthOptions(
    scans=40, slices=20, rows=64, columns=64, pixel_spacing_mm=5.6, slice_spacing_mm=5.0, seed=21
)
OVERRIDES = {
    "contracts": {"max_pixel_spacing_mm": 6.0},
    "preprocess": {"shape": (12, 12, 12), "spacing_mm": (3.0, 3.0, 3.0)},
}


def dataset_settings(root: Path | str, tmp_path: Path, **extra: object) -> Settings:
    return make_settings(root, tmp_path, **{**OVERRIDES, **extra})


@pytest.fixture
def ds_settings(tmp_path: Path) -> Settings:
    settings = dataset_settings(tmp_path / "root", tmp_path)
    synth_batch(Storage.from_settings(settings), "b1", SCANS)
    ingest(settings, progress=False)
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
    samples = list(iter_samples(storage, [s.path for s in manifest.shards]))
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
    before = {s.sample_id: s.split for s in iter_samples(storage, [s.path for s in v1.shards])}
    synth_batch(storage, "b2", SynthOptions(**{**SCANS.__dict__, "scans": 12, "seed": 22}))
    ingest(ds_settings, progress=False)
    second = build_dataset(ds_settings, progress=False)
    assert (second.version, second.preprocessed, second.reused_shards) == (2, 12, 3)
    v2 = load_manifest(storage, "lung-nodules", 2)
    assert v2.parent == 1 and v2.samples == 52
    assert set(v1.shards) <= set(v2.shards)
    after = {s.sample_id: s.split for s in iter_samples(storage, [s.path for s in v2.shards])}
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
    assert load_manifest(killed_storage, "lung-nodules") == load_manifest(
        clean_storage, "lung-nodules"
    )
    killed_files = sorted(p.name for p in shards.iterdir())
    clean_files = sorted(
        p.name for p in (tmp_path / "clean/datasets/lung-nodules/v1/shards").iterdir()
    )
    assert killed_files == clean_files  # leftovers of the killed run are gone
