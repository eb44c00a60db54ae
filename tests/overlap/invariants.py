"""What must hold on a root whatever ran on it at once or was killed: every committed record's
files exist with the SHA-256 it names, every version number was claimed by the run that
committed it and never reused, the ledger holds every delivered archive and each series once.

The `*_outcome` functions give what a rerun after a kill must share with a clean run: the
results, without what names the run (run ids, times, version numbers, file names).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterable
from typing import Any

import pyarrow.parquet as pq

from lungcls.config import Settings
from lungcls.dataset.manifest import (
    MANIFEST,
    Manifest,
    list_versions,
    load_build_record,
    load_manifest,
)
from lungcls.evaluate.report import REPORT, EvaluationReport
from lungcls.ingest.ledger import LOG_DIR, Ledger
from lungcls.ingest.series_store import iter_series, read_series_index
from lungcls.io.integrity import check_file
from lungcls.io.storage import Storage
from lungcls.io.versions import CLAIM, committed_versions
from lungcls.registry.aliases import alias_dir, read_alias
from lungcls.registry.decisions import read_decisions
from lungcls.registry.promote import CHAMPION
from lungcls.registry.store import RECORD, list_model_versions, load_model, load_record
from lungcls.retention.gc import plan_gc
from tests.overlap.harness import without_grace


def _names(storage: Storage, folder: str) -> list[str]:
    return [path.rsplit("/", 1)[-1] for path in storage.list_dirs(folder)]


def _claimant(storage: Storage, folder: str) -> str:
    return json.loads(storage.read_bytes(f"{folder}/{CLAIM}"))["run_id"]


def version_folders(storage: Storage, folder: str, marker: str) -> dict[int, bool]:
    """Every `v<N>` folder under `folder` (claimed, all of them): N -> committed?"""
    found = {}
    for path in storage.list_dirs(folder):
        tail = path.rsplit("/", 1)[-1]
        if tail.startswith("v") and tail[1:].isdigit():
            found[int(tail[1:])] = storage.exists(f"{path}/{marker}")
    return found


def assert_claims_kept(storage: Storage, folder: str, marker: str) -> None:
    """Every version folder keeps the claim that took its number (gc included), but for a
    folder whose claim was never made: a run killed inside the exclusive create of a local
    root leaves its folder holding only the create's hidden temp file (`.claim.json.<hex>`),
    and a number nobody claimed was never used."""
    for number in version_folders(storage, folder, marker):
        path = f"{folder}/v{number}"
        never_claimed = all(
            info.path.rsplit("/", 1)[-1].startswith(".") for info in storage.list_files(path)
        )
        assert storage.exists(f"{path}/{CLAIM}") or never_claimed, f"{path} lost its claim"


def assert_number_fresh(
    before: dict[int, bool], after: dict[int, bool], version: int, created: bool
) -> None:
    """After a killed run and its rerun: the rerun's `version` is committed, and when the
    rerun made it (`created`), it took a number above every one claimed before, the killed
    run's included, so that nobody commits into a killed run's folder (`before`, `after`:
    `version_folders` before the killed run and after the rerun)."""
    assert after.get(version), f"v{version} is not committed: {after}"
    if created:
        others = [n for n in after if n != version]
        assert version not in before and version > max(others, default=0), (before, after)


# -- datasets ------------------------------------------------------------------------------


def assert_datasets_verify(storage: Storage) -> int:
    """Every committed manifest's shards exist with its SHA-256s and sizes, its counts add
    up, and its number was claimed by the build that committed it; returns the manifests."""
    checked = 0
    for name in _names(storage, "datasets"):
        assert_claims_kept(storage, f"datasets/{name}", MANIFEST)
        for version in list_versions(storage, name):
            manifest = load_manifest(storage, name, version)
            assert (manifest.name, manifest.version) == (name, version)
            assert sum(s.rows for s in manifest.shards) == manifest.samples
            for shard in manifest.shards:
                assert storage.info(shard.path).size == shard.bytes, shard.path
                check_file(storage, shard.path, shard.sha256)
            run = load_build_record(storage, manifest.ref).run_id
            assert _claimant(storage, manifest.ref.folder) == run, f"{manifest.ref}: claimed"
            checked += 1
    return checked


def manifest_outcome(manifest: Manifest) -> dict[str, Any]:
    """A manifest as a rerun must repeat it: all but its number (shards by file name)."""
    data = manifest.model_dump(mode="json", exclude={"version"})
    for shard in data["shards"]:
        shard["path"] = shard["path"].rsplit("/", 1)[-1]
    return data


# -- models and evaluations ----------------------------------------------------------------


def assert_models_verify(storage: Storage) -> int:
    """Every committed model.json's files match its SHA-256s, the weights load, and its
    number was claimed by the training run that committed it; returns the versions."""
    checked = 0
    for name in _names(storage, "models"):
        assert_claims_kept(storage, f"models/{name}", RECORD)
        for version in list_model_versions(storage, name):
            record = load_record(storage, name, version)
            assert (record.name, record.version) == (name, version)
            assert {"model.pt", "model.ts"} <= set(record.files), record.files
            for file_name, sha256 in record.files.items():
                check_file(storage, f"{record.folder}/{file_name}", sha256)
            load_model(storage, record)
            assert _claimant(storage, record.folder) == record.train_run, f"{record} claimed"
            checked += 1
    return checked


def model_weights(storage: Storage, name: str, version: int) -> dict[str, Any]:
    """A committed version's weights as lists (comparable with ==)."""
    state = load_model(storage, load_record(storage, name, version)).state_dict()
    return {key: value.tolist() for key, value in state.items()}


def assert_evaluations_verify(storage: Storage) -> int:
    """Every committed evaluation's files match the SHA-256s its report.json names; returns
    the evaluations."""
    checked = 0
    for name in _names(storage, "models"):
        for version in list_model_versions(storage, name):
            base = f"models/{name}/v{version}/evaluations"
            for evaluated in _names(storage, base):
                folder = f"{base}/{evaluated}"
                assert_claims_kept(storage, folder, REPORT)
                for number in committed_versions(storage, folder, REPORT):
                    report = EvaluationReport.load(storage, f"{folder}/v{number}/{REPORT}")
                    assert report.version == number and report.folder == f"{folder}/v{number}"
                    assert {"scores.parquet", "report.html"} <= set(report.files)
                    for file_name, sha256 in report.files.items():
                        check_file(storage, f"{report.folder}/{file_name}", sha256)
                    checked += 1
    return checked


def evaluation_outcome(report: EvaluationReport) -> dict[str, Any]:
    """An evaluation as a rerun must repeat it: every number, not when or where."""
    return report.model_dump(mode="json", exclude={"created_at", "version", "files"})


def promotion_outcome(storage: Storage, name: str) -> dict[str, Any]:
    """Where the champion points, and the last decision's outcome and candidate."""
    last = read_decisions(storage, name)[-1]
    return {
        "champion": read_alias(storage, name, CHAMPION).version,
        "last_outcome": last.outcome,
        "last_candidate": last.candidate_version,
    }


def assert_aliases_whole(storage: Storage, name: str) -> None:
    """The champion's pointers are numbered 1..n, each moved from where the one before
    pointed, to a committed model version, by a decision in the log."""
    files = storage.list_files(alias_dir(name, CHAMPION))
    pointers = [json.loads(storage.read_bytes(f.path)) for f in files if f.path.endswith(".json")]
    numbers = [int(f.path.rsplit("/", 1)[-1][:-5]) for f in files if f.path.endswith(".json")]
    assert numbers == list(range(1, len(numbers) + 1)), numbers
    committed = set(list_model_versions(storage, name))
    logged = {decision.id for decision in read_decisions(storage, name)}
    previous = None
    for pointer in pointers:
        assert pointer["version"] in committed and pointer["previous_version"] == previous
        assert pointer["decision"] in logged, f"no decision logged for {pointer}"
        previous = pointer["version"]


# -- the ledger and the series store -------------------------------------------------------


def _log_rows(storage: Storage) -> dict[int, list[dict[str, Any]]]:
    segments = {}
    for info in storage.list_files(LOG_DIR):
        name = info.path.rsplit("/", 1)[-1]
        if name.endswith(".parquet") and not name.startswith("."):
            with storage.open(info.path, "rb") as f:
                segments[int(name.removesuffix(".parquet"))] = pq.read_table(f).to_pylist()
    return segments


def assert_ledger_whole(storage: Storage, archives: Iterable[str], series: set[str]) -> None:
    """Every delivered archive is current and ingested; the current rows own exactly the
    delivered `series`, each once, and the store holds each once; the log's segments are
    numbered 1..n, each written by one run, each archive version recorded once."""
    ledger = Ledger.load(storage)
    for archive in archives:
        current = ledger.current(archive)
        assert current is not None and current.status == "ingested", (archive, current)
    owned = Counter(s for e in ledger.entries if e.status == "ingested" for s in e.series_ids)
    assert set(owned) == series and set(owned.values()) == {1}, owned
    stored = Counter(read_series_index(storage, ledger).column("series_id").to_pylist())
    assert set(stored) == series and set(stored.values()) == {1}, stored

    segments = _log_rows(storage)
    assert sorted(segments) == list(range(1, len(segments) + 1)), sorted(segments)
    for seq, rows in segments.items():
        assert {row["seq"] for row in rows} == {seq}
        assert len({row["run_id"] for row in rows}) == 1, f"segment {seq}: two writers"
    versions = Counter(
        (row["archive"], row["sha256"])
        for rows in segments.values()
        for row in rows
        if row["row_kind"] == "entry"
    )
    assert set(versions.values()) == {1}, versions


def ingest_outcome(storage: Storage) -> dict[str, Any]:
    """The current ledger rows and the series they own, as a rerun must repeat them: all
    but run ids, times, file names and ETags/mtimes (each root's own)."""
    ledger = Ledger.load(storage)
    rows = {
        archive: (e.status, e.sha256, e.size, sorted(e.series_ids), e.archive_id, e.reason_code)
        for archive in sorted({e.archive for e in ledger.entries})
        if (e := ledger.current(archive)) is not None
    }
    series = {}
    for record in iter_series(storage, ledger=ledger):
        fields = {k: v for k, v in vars(record).items() if k not in ("volume", "ingest_run")}
        volume = hashlib.sha256(record.volume.tobytes()).hexdigest()
        series[record.series_id] = {**fields, "volume_sha256": volume}
    return {"ledger": rows, "series": series}


def assert_no_orphans(storage: Storage, settings: Settings) -> None:
    """After `lungcls gc --apply`, a second look finds nothing left to delete."""
    plan = plan_gc(storage, without_grace(settings))
    assert plan.candidates == [], [(c.reason, c.path) for c in plan.candidates]


def assert_root_verifies(storage: Storage) -> None:
    """Every committed record on the root verifies (datasets, models, evaluations)."""
    assert_datasets_verify(storage)
    assert_models_verify(storage)
    assert_evaluations_verify(storage)
