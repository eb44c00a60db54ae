"""`lungcls gc`: exactly the leftovers go, every committed file stays and still verifies, and
what a running stage may still commit or read is held back."""

from __future__ import annotations

import json
import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from lungcls.cli import main
from lungcls.config import Settings
from lungcls.dataset.manifest import DatasetRef, load_manifest
from lungcls.dataset.shards import iter_samples
from lungcls.ingest import ledger as ledger_module
from lungcls.ingest.ledger import Ledger, LedgerEntry
from lungcls.io.leases import hold_lease
from lungcls.io.storage import Storage
from lungcls.io.versions import claim_version
from lungcls.retention import leftovers, run_files
from lungcls.retention.gc import apply_gc, plan_gc
from lungcls.train.runs import TrainRun, run_path
from tests.support import OLD_ROOT

DATASET = "datasets/lung-nodules"
MODEL = "models/lung-nodule-cnn"


def put(storage: Storage, rel: str, size: int = 100) -> str:
    storage.write_atomic(rel, os.urandom(size))
    return rel


def entry(archive: str, sha256: str, series_file: str) -> LedgerEntry:
    return LedgerEntry(
        archive=archive,
        batch="b",
        kind="zip",
        size=1,
        version_tag="t",
        sha256=sha256,
        status="ingested",
        reason_code="",
        series_file=series_file,
        series_ids=[f"series-{archive[-5]}"],
        ingested_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )


def checkpoints(storage: Storage, run: str, count: int) -> list[str]:
    """A Ray Train run folder as plain files; its checkpoint files, oldest first."""
    put(storage, f"ray-train/{run}/checkpoint_manager_snapshot.json")
    return [
        put(storage, f"ray-train/{run}/checkpoint_2026-01-01_00-00-{i:02d}.000000/checkpoint.pt")
        for i in range(count)
    ]


def train_run(settings: Settings, storage: Storage, run_id: str, finished: bool) -> None:
    TrainRun(
        run_id=run_id,
        status="finished" if finished else "running",
        dataset=DatasetRef(name="lung-nodules", version=1),
        train=settings.train,
        model=settings.model,
        model_version=1 if finished else None,
    ).save(storage, run_path(run_id))


def build_root(settings: Settings, storage: Storage) -> dict[str, str]:
    """A lungcls 0.1.0 root, then what the suite's kinds of runs leave: committed versions
    that share shards, and leftovers of killed or finished runs. Returns the leftovers
    (path -> the reason gc must give)."""
    for path in sorted(OLD_ROOT.rglob("*")):
        if path.is_file():
            storage.write_atomic(path.relative_to(OLD_ROOT).as_posix(), path.read_bytes())
    expected: dict[str, str] = {}
    # v2 reuses v1's train and test shards and writes its own val shard, plus a stray one.
    v1 = load_manifest(storage, "lung-nodules", 1)
    assert claim_version(storage, DATASET, "dataset-v2") == 2
    own = f"{DATASET}/v2/shards/val-00000.parquet"
    val = next(s for s in v1.shards if s.split == "val")
    storage.write_atomic(own, storage.read_bytes(val.path))
    shards = [s.model_copy(update={"path": own}) if s is val else s for s in v1.shards]
    v2 = v1.model_copy(update={"version": 2, "parent": 1, "shards": shards})
    assert v2.save(storage, v2.ref.manifest_path, exclusive=True)
    expected[put(storage, f"{DATASET}/v2/shards/val-00001.parquet")] = "unreferenced_shard"
    # Killed builds (one without a claim, as lungcls 0.1 wrote), training and evaluation.
    assert claim_version(storage, DATASET, "dataset-killed") == 3
    for rel in (f"{DATASET}/v3/shards/train-00000.parquet", f"{DATASET}/v3/build.json"):
        expected[put(storage, rel)] = "uncommitted_version"
    expected[put(storage, "datasets/other/v1/shards/train-00000.parquet")] = "uncommitted_version"
    assert claim_version(storage, MODEL, "train-killed") == 2
    expected[put(storage, f"{MODEL}/v2/model.pt")] = "uncommitted_version"
    evaluations = f"{MODEL}/v1/evaluations/lung-nodules-v1"
    assert claim_version(storage, evaluations, "evaluate-killed") == 1
    expected[put(storage, f"{evaluations}/v1/scores.parquet")] = "uncommitted_version"
    # Series: one superseded by a changed archive, one no row names; a checkpoint every
    # two segments, so that segments 1-4 and checkpoint 2 are compacted.
    ledger = Ledger.load(storage)
    rows = [
        entry("inbox/b/a.zip", "1", put(storage, "series/a-1.parquet")),
        entry("inbox/b/a.zip", "2", put(storage, "series/a-2.parquet")),
        entry("inbox/b/b.zip", "3", put(storage, "series/b-1.parquet")),
        entry("inbox/b/c.zip", "4", ""),
    ]
    for row in rows:
        ledger.record(row)
        ledger.save(storage)
    expected["series/a-1.parquet"] = "superseded_series"
    expected[put(storage, "series/orphan-1.parquet")] = "orphan_series"
    for seq in range(1, 5):
        expected[f"ledger/log/{seq:012d}.parquet"] = "compacted_ledger_segment"
    expected["ledger/checkpoint/000000000002.parquet"] = "compacted_ledger_segment"
    # Two ingests one after the other: the first one's lease generation is stale.
    for run in ("ingest-1", "ingest-2"):
        with hold_lease(storage, "ingest", run):
            pass
    for info in storage.list_files("leases/ingest/"):
        if info.path.split("/")[-1].startswith("000000000001"):
            expected[info.path] = "stale_lease"
    expected[put(storage, "staging/ingest-killed/archive-x.parquet")] = "stale_staging"
    expected[put(storage, "probes/" + "0" * 32)] = "stale_probe"
    # Prefect results: one past the expiration written into it, one without any.
    tomorrow = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    for key, expiration in (("expired", tomorrow), ("current", None)):
        record = {"metadata": {"expiration": expiration}, "result": "{}"}
        storage.write_atomic(f"prefect-results/{key}", json.dumps(record).encode())
    expected["prefect-results/expired"] = "expired_cache"
    # Ray Train: a finished run keeps its newest checkpoint; a resumable run keeps all, and
    # so does its fold without a record; its finished fold and an abandoned trial do not.
    train_run(settings, storage, "train-done", finished=True)
    train_run(settings, storage, "train-live", finished=False)
    put(storage, "runs/train-live/folds/0.json")
    for run, count, resumable in (
        ("train-done", 3, False),
        ("train-live", 3, True),
        ("train-live-fold-0", 2, False),
        ("train-live-fold-1", 2, True),
        ("tune-20260101T000000Z-abcdef-trial1", 2, False),
    ):
        files = checkpoints(storage, run, count)
        if not resumable:
            expected.update(dict.fromkeys(files[:-1], "old_checkpoint"))
    if storage.is_local:  # a write killed between its temporary file and the rename
        expected[put(storage, f"{DATASET}/v1/.manifest.json.{'a' * 32}")] = "temp_file"
    return expected


def test_gc_deletes_exactly_the_leftovers_and_committed_data_still_verifies(
    root_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ledger_module, "COMPACT_EVERY", 2)
    storage = Storage.from_settings(root_settings)
    expected = build_root(root_settings, storage)
    before = {i.path: i.size for i in storage.list_files("")}
    series_before = Ledger.load(storage).series_files()
    now = datetime.now(UTC) + timedelta(days=2)  # past the grace period of every file

    plan = plan_gc(storage, root_settings, now=now)
    assert {c.path: c.reason for c in plan.candidates} == expected
    kept = {(k.reason, k.why): k.files for k in plan.kept}
    assert kept == {("old_checkpoint", "in_use"): 3}  # train-live: 2, its fold 1: 1
    result = apply_gc(storage, plan)

    assert result.removed_files == len(expected)
    assert result.removed_bytes == sum(before[path] for path in expected)
    after = {i.path for i in storage.list_files("")}
    assert after == (before.keys() - expected.keys()) | {"datasets/other/v1/claim.json"}
    for version in (1, 2):  # every shard of every version is there and matches its SHA-256
        manifest = load_manifest(storage, "lung-nodules", version)
        assert sum(1 for _ in iter_samples(storage, manifest.shards)) == manifest.samples
    ledger = Ledger.load(storage)
    assert ledger.series_files() == series_before
    assert all(storage.exists(rel) for rel in ("series/a-2.parquet", "series/b-1.parquet"))
    # No version number is ever claimed twice.
    assert claim_version(storage, DATASET, "next") == 4
    assert claim_version(storage, "datasets/other", "next") == 2
    assert claim_version(storage, MODEL, "next") == 3
    assert plan_gc(storage, root_settings, now=now).candidates == []


def test_gc_holds_back_what_running_stages_may_still_commit_or_read(
    root_settings: Settings,
) -> None:
    settings = root_settings.model_copy(deep=True)
    settings.storage.gc_grace_hours = 0
    storage = Storage.from_settings(settings)
    ledger = Ledger.load(storage)
    for sha256, series in (("1", "series/a-1.parquet"), ("2", "series/a-2.parquet")):
        ledger.record(entry("inbox/b/a.zip", sha256, put(storage, series)))
        ledger.save(storage)
    with (
        hold_lease(storage, "dataset-build", "dataset-live"),
        hold_lease(storage, "ingest", "ingest-live"),
    ):
        assert claim_version(storage, "datasets/d", "dataset-live") == 1
        put(storage, "datasets/d/v1/shards/train-00000.parquet")
        assert claim_version(storage, "datasets/d", "dataset-dead") == 2
        dead = put(storage, "datasets/d/v2/shards/train-00000.parquet")
        put(storage, "series/written-now.parquet")
        put(storage, "staging/ingest-live/archive-x.parquet")
        plan = plan_gc(storage, settings, now=datetime.now(UTC) + timedelta(minutes=1))

    assert [c.path for c in plan.candidates] == [dead]
    assert {(k.reason, k.why): k.files for k in plan.kept} == {
        ("uncommitted_version", "in_use"): 1,  # its run holds the dataset-build lease
        ("superseded_series", "in_use"): 1,  # a build may have read the ledger before
        ("orphan_series", "in_use"): 1,  # written under the live ingest lease
        ("stale_staging", "in_use"): 1,  # the staging of the ingest holding the lease
    }


def age(root: Path, *rels: str, days: float = 2) -> None:
    moment = time.time() - days * 86400
    for rel in rels:
        os.utime(root / rel, (moment, moment))


def test_young_files_stay_and_a_version_folder_goes_only_when_all_of_it_is_old(
    settings: Settings, storage: Storage
) -> None:
    root = Path(settings.root)
    assert claim_version(storage, "datasets/d", "dataset-killed") == 1
    shard = put(storage, "datasets/d/v1/shards/train-00000.parquet")
    probe = put(storage, "probes/" + "1" * 32)
    plan = plan_gc(storage, settings)
    assert plan.candidates == []
    assert {(k.reason, k.why) for k in plan.kept} == {
        ("uncommitted_version", "young"),
        ("stale_probe", "young"),
    }
    age(root, shard, probe)  # the claim is still young: the build may be writing
    assert [c.path for c in plan_gc(storage, settings).candidates] == [probe]
    age(root, "datasets/d/v1/claim.json")
    assert {c.path for c in plan_gc(storage, settings).candidates} == {probe, shard}


def test_apply_skips_what_was_committed_or_named_after_the_plan(
    settings: Settings, storage: Storage
) -> None:
    root = Path(settings.root)
    assert claim_version(storage, "datasets/d", "dataset-slow") == 1
    shard = put(storage, "datasets/d/v1/shards/train-00000.parquet")
    series = put(storage, "series/late.parquet")
    age(root, shard, series, "datasets/d/v1/claim.json")
    plan = plan_gc(storage, settings)
    assert {c.path for c in plan.candidates} == {shard, series}
    assert storage.create("datasets/d/v1/manifest.json", b"{}")  # committed meanwhile
    ledger = Ledger.load(storage)
    ledger.record(entry("inbox/b/l.zip", "9", series))  # its ledger row came after all
    ledger.save(storage)

    result = apply_gc(storage, plan)
    assert result.removed_files == 0
    assert {c.path for c in result.skipped} == {shard, series}
    assert storage.exists(shard) and storage.exists(series)


def test_cli_lists_by_default_and_deletes_with_apply(
    settings: Settings, storage: Storage, capsys: pytest.CaptureFixture[str]
) -> None:
    probe = put(storage, "probes/" + "2" * 32, size=1500)
    args = ["--root", settings.root, "gc", "--grace-hours", "0"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "stale_probe" in out and "1.5 kB" in out and "dry run" in out
    assert storage.exists(probe)

    assert main([*args, "--apply", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert (result["removed_files"], result["removed_bytes"]) == (1, 1500)
    assert not storage.exists(probe)
    assert main([*args, "--apply"]) == 0
    assert "deleted 0 files, 0 B reclaimed" in capsys.readouterr().out
    assert main(["--root", settings.root, "gc", "--grace-hours", "-1"]) == 2


def test_the_names_gc_hardcodes_are_the_writers_names(storage: Storage) -> None:
    from flows.common import RESULTS_DIR
    from lungcls.evaluate.report import REPORT
    from lungcls.registry.store import RECORD
    from lungcls.train.trainer import _ray_storage

    assert run_files.RESULTS_DIR == RESULTS_DIR
    assert leftovers.EVALUATION_RECORD == REPORT
    assert leftovers.MODEL_RECORD == RECORD
    assert _ray_storage(storage)[1].endswith("/" + run_files.RAY_TRAIN_DIR)
