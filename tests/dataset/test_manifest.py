"""The dataset version records: checked on read, and a root written by lungcls 0.1.0 loads."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from lungcls.dataset.manifest import (
    BuildRecord,
    DatasetError,
    DatasetRef,
    Manifest,
    list_versions,
    load_build_record,
    load_manifest,
)
from lungcls.dataset.shards import read_shard_metadata
from lungcls.dataset.summary import BuildSummary
from lungcls.ingest.ledger import Ledger
from lungcls.io.quarantine import QuarantineItem, read_quarantine
from lungcls.io.records import RecordError
from lungcls.io.storage import Storage
from tests.support import OLD_ROOT

MANIFEST = "datasets/lung-nodules/v1/manifest.json"

# A reason.json exactly as lungcls 0.1.0's `write_quarantine` wrote it (the fixture root
# quarantined nothing, so this one was written by that code into a scratch root).
OLD_REASON = {
    "schema": "lungcls.quarantine/1",
    "run": "dataset-20261130T202048Z-cf3e55",
    "at": "2026-11-30T20:37:39+00:00",
    "level": "series",
    "code": "contract_violation",
    "message": "series_metadata v2: expect_column_values_to_be_between(slice_thickness_mm) "
    "observed 12.0",
    "source_url": "file:///root/series/abc.parquet",
    "member": None,
    "sha256": None,
    "series_id": "series-3f2a9c",
    "row": None,
    "details": {
        "contract": "series_metadata",
        "version": "v2",
        "expectations": ["expect_column_values_to_be_between"],
        "observed": {"slice_thickness_mm": "12.0"},
    },
}
OLD_REASON_PATH = "quarantine/dataset-20261130T202048Z-cf3e55/series-614f677a22ead236/reason.json"


@pytest.fixture
def old_root(tmp_path: Path) -> Storage:
    """A writable copy of the root lungcls 0.1.0 wrote."""
    shutil.copytree(OLD_ROOT, tmp_path / "root")
    return Storage(str(tmp_path / "root"))


def test_an_unknown_manifest_schema_is_refused_naming_file_and_versions(old_root: Storage) -> None:
    raw = json.loads(old_root.read_bytes(MANIFEST))
    old_root.write_atomic(MANIFEST, json.dumps({**raw, "schema": "lungcls.dataset/9"}).encode())
    with pytest.raises(RecordError) as error:
        load_manifest(old_root, "lung-nodules", 1)
    message = str(error.value)
    assert old_root.url(MANIFEST) in message
    assert "'lungcls.dataset/9'" in message and "'lungcls.dataset/1'" in message


def test_a_missing_version_says_so(old_root: Storage) -> None:
    with pytest.raises(DatasetError, match="has no version 7"):
        load_manifest(old_root, "lung-nodules", 7)
    with pytest.raises(DatasetError, match="lungcls dataset build"):
        load_manifest(old_root, "no-such-dataset")


def test_the_0_1_0_root_loads_into_the_typed_records(old_root: Storage) -> None:
    raw = json.loads(old_root.read_bytes(MANIFEST))
    assert list_versions(old_root, "lung-nodules") == [1]
    manifest = load_manifest(old_root, "lung-nodules")
    assert manifest.ref == DatasetRef(name="lung-nodules", version=1)
    assert manifest.samples == raw["samples"] == 40 and manifest.parent is None
    assert manifest.counts == raw["counts"]
    assert manifest.tensor_shape == raw["tensor"]["shape"] == [1, 16, 16, 16]
    assert manifest.preprocess.config.shape == (16, 16, 16)
    assert manifest.contracts["series_metadata"].version == "v2"
    assert [s.model_dump() for s in manifest.shards] == raw["shards"]
    for split, by_label in manifest.counts.items():
        (shard,) = manifest.shards_of(split)
        assert shard.rows == sum(by_label.values())
        assert old_root.sha256(shard.path) == shard.sha256

    build = load_build_record(old_root, manifest.ref)  # untagged in 0.1.0
    assert build.schema_tag == BuildRecord.SCHEMA
    assert (build.preprocessed, build.reused_shards) == (40, 0)
    assert build.run_id == "dataset-20261130T202048Z-cf3e55"
    assert set(build.validation) == {"series_metadata", "tensor"}

    ledger = Ledger.load(old_root)
    series = {s for entry in ledger.entries for s in entry.series_ids}
    sharded = {
        str(s)
        for shard in manifest.shards
        for s in read_shard_metadata(old_root, shard.path)["series_id"]
    }
    assert len(ledger.entries) == 28 and {e.status for e in ledger.entries} == {"ingested"}
    assert sharded == series and len(series) == manifest.samples


def test_a_0_1_0_quarantine_record_loads_and_is_written_the_same_way(tmp_path: Path) -> None:
    storage = Storage(str(tmp_path))
    storage.write_atomic(OLD_REASON_PATH, json.dumps(OLD_REASON, indent=2).encode())
    (item,) = read_quarantine(storage)
    assert item.level == "series" and item.details is not None
    assert item.details.observed == {"slice_thickness_mm": "12.0"}
    assert item.path(OLD_REASON["run"]) == OLD_REASON_PATH  # same item, same folder
    assert json.loads(item.to_json()) == OLD_REASON  # same keys, same values

    fresh = QuarantineItem.model_validate(
        {k: v for k, v in OLD_REASON.items() if k not in ("schema", "run", "at")}
    )
    assert fresh.run is None and fresh.path(OLD_REASON["run"]) == OLD_REASON_PATH


def test_the_manifest_round_trips_to_the_same_json(old_root: Storage) -> None:
    data = old_root.read_bytes(MANIFEST)
    manifest = Manifest.from_json(data, MANIFEST)
    assert json.loads(manifest.to_json()) == json.loads(data)
    assert Manifest.from_json(manifest.to_json()) == manifest


def test_renderers_say_what_the_manifest_says(old_root: Storage) -> None:
    manifest = load_manifest(old_root, "lung-nodules")
    assert manifest.listing_line().startswith("lung-nodules v1: 40 samples (train=29 val=8 test=3)")
    shown = "\n".join(manifest.describe_lines())
    assert "tensor [1, 16, 16, 16] float16" in shown and "3 shards" in shown
    assert manifest.count_table()[0] == {
        "split": "train",
        "negative (0)": 11,
        "positive (1)": 18,
        "total": 29,
    }
    built = BuildSummary(
        name="lung-nodules",
        version=1,
        created=True,
        manifest_path=MANIFEST,
        preprocessed=40,
        quarantined=[QuarantineItem.model_validate(OLD_REASON)],
        counts=manifest.counts,
    )
    assert "1 quarantined" in built.summary_lines()[0]
    assert built.summary_lines()[-1].startswith(
        "  quarantined series file:///root/series/abc.parquet series-3f2a9c:"
    )
    markdown = built.validation_markdown(manifest, "file:///docs")
    assert "| series_metadata | v2 | 17 | 40 | 0 |" in markdown
    assert "Quarantined at this build: 1" in markdown
    cached = built.as_cached()
    assert (cached.created, cached.preprocessed, cached.quarantined) == (False, 0, [])
    assert cached.summary_lines() == [
        "dataset lung-nodules v1 is up to date: no new data, no new version"
    ]
    assert BuildSummary.from_json(built.to_json()) == built
