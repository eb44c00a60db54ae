"""The Prefect flows, run for real in this process (Prefect's ephemeral API, local Ray): a
retrain killed in training and resumed, a rerun that does nothing, a new batch, retries."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flows.build_dataset import build_dataset_flow
from flows.common import RESULTS_DIR
from flows.ingest import ingest_archives
from flows.retrain import retrain
from lungcls.config import load_settings
from lungcls.dataset.manifest import DatasetRef, list_versions, load_manifest
from lungcls.flow_parameters import RetrainParameters, RunParameters
from lungcls.io.storage import Storage
from lungcls.monitor.batch_evaluation import read_batch_history
from lungcls.pipeline import RetrainSummary
from lungcls.registry.aliases import read_alias
from lungcls.registry.decisions import read_decisions
from lungcls.registry.store import list_model_versions, load_record
from lungcls.retention.gc import apply_gc, plan_gc
from lungcls.sources.synth import SynthOptions, synth_batch
from lungcls.train.runs import History, read_history
from tests.support import (
    ARTIFACT_KEYS,
    FLOW_CONFIG,
    FLOW_SCANS,
    flow_run_artifacts,
    make_settings,
    write_flow_config,
)

pytestmark = pytest.mark.slow
# A clean retrain leaves no unfinished version, orphan shard or series for gc to find.
NEVER_COLLECTED_HERE = {"uncommitted_version", "unreferenced_shard", "orphan_series"}


@pytest.fixture(scope="module", autouse=True)
def _ray_for_the_module():
    """Training starts a local Ray inside this process; stop it when the module is done."""
    yield
    import ray

    ray.shutdown()


def _tree_digest(root: Path, *folders: str) -> str:
    """One hash of every file's path and bytes under the given folders."""
    digest = hashlib.sha256()
    for folder in folders:
        for path in sorted((root / folder).rglob("*")):
            if path.is_file():
                digest.update(str(path.relative_to(root)).encode() + path.read_bytes())
    return digest.hexdigest()


def _retrain(config: Path, root: Path, **extra: object) -> tuple[RetrainSummary, object]:
    params = RetrainParameters(config_file=str(config), root=str(root), **extra)
    state = retrain(params, return_state=True)
    assert state.is_completed(), state
    return state.result(), state.state_details.flow_run_id


def test_killed_in_training_resumed_then_nothing_new_then_a_new_batch(tmp_path: Path) -> None:
    """One root through a retrain's life: a `lungcls run` killed with SIGKILL once two
    epochs are checkpointed, the retrain that finishes it (nothing ingested again, the same
    training run resumed from its checkpoint, every artifact on the run), a retrain with
    nothing new, gc, and a new batch. (One test: each retrain of a fresh root costs a
    minute or more of ingest, build and Ray start-up on CI's two cores.)"""
    epochs = 6  # killed after 2: the resumed run has epochs left to train
    config = write_flow_config(tmp_path, train={**FLOW_CONFIG["train"], "epochs": epochs})
    root = tmp_path / "root"
    settings = load_settings(config, root=str(root))
    storage = Storage.from_settings(settings)
    synth_batch(storage, "b1", SynthOptions(scans=48, seed=21, **FLOW_SCANS))

    # 1. A run killed in training; the retrain after it finishes the same training run
    #    without ingesting again, and promotes, with every artifact on its run (read back
    #    through the API).
    killed_run = _run_killed_in_training(config, root, tmp_path)
    assert list_model_versions(storage, settings.model.name) == []
    ingested = _tree_digest(root, "ledger", "series")
    first, run_id = _retrain(config, root)
    assert _tree_digest(root, "ledger", "series") == ingested  # nothing ingested again
    assert first.archives_ingested == 0
    assert list_versions(storage, "lung-nodules") == [1]  # the killed run's version, reused
    assert first.trained and first.gated and first.outcome == "promoted"
    assert read_alias(storage, settings.model.name, "champion").version == 1
    assert load_record(storage, settings.model.name, 1).train_run == killed_run
    resumed = read_history(storage, killed_run)
    assert [h.epoch for h in resumed] == list(range(epochs)) and resumed[-1].resumes >= 1
    artifacts = flow_run_artifacts(run_id)
    assert set(artifacts) >= ARTIFACT_KEYS, sorted(artifacts)
    history = artifacts["training-history"][0].data
    assert len(json.loads(history) if isinstance(history, str) else history) == epochs
    assert "ROC AUC" in artifacts["evaluation-report"][0].data
    assert "v1" in artifacts["promotion-decision"][0].description
    assert (root / RESULTS_DIR).is_dir() and any((root / RESULTS_DIR).iterdir())

    # 2. Nothing new: no ingest, build, training or gating work; storage untouched.
    before = _tree_digest(root, "ledger", "series", "datasets", "models", "ray-train")
    again, again_id = _retrain(config, root)
    assert not again.trained and not again.gated
    assert again.archives_ingested == 0 and not again.dataset_created
    assert _tree_digest(root, "ledger", "series", "datasets", "models", "ray-train") == before
    assert "nothing to do" in flow_run_artifacts(again_id)["ingest-summary"][0].data

    # gc after a whole retrain (no grace): it reclaims what finished runs left (Ray Train's
    # checkpoints beyond the one kept, Prefect's cache) and nothing a record names.
    collect = settings.model_copy(
        update={"storage": settings.storage.model_copy(update={"gc_grace_hours": 0})}
    )
    gone = apply_gc(storage, plan_gc(storage, collect))
    assert gone.removed_files > 0 and gone.removed_bytes > 0, gone
    assert not any(r.reason in NEVER_COLLECTED_HERE for r in gone.removed), gone.removed

    # 3. A second batch: only it is ingested; version 2 reuses shards; a new candidate is
    #    trained on it, evaluated and gated (after gc: nothing it needed went).
    new = synth_batch(storage, "b2", SynthOptions(scans=12, seed=77, **FLOW_SCANS))
    third, third_id = _retrain(config, root)
    archives_b2 = len(list((root / "inbox" / "b2").glob("archive-*")))
    assert third.archives_ingested == archives_b2
    assert third.series_ingested == len(new)
    assert third.dataset == DatasetRef(name="lung-nodules", version=2) and third.dataset_created
    manifest = load_manifest(storage, "lung-nodules", 2)
    assert manifest.parent == 1 and manifest.samples == 48 + 12
    assert third.trained and third.candidate == 2
    assert load_record(storage, settings.model.name, 2).dataset.version == 2
    gated = [d for d in read_decisions(storage, settings.model.name) if d.candidate_version == 2]
    assert len(gated) == 1 and gated[0].outcome == third.outcome
    # Before b2 joined the dataset, champion v1 scored it and its drift was measured (the
    # first run had no champion to do so).
    monitored = flow_run_artifacts(third_id)
    assert {"batch-evaluation", "batch-history", "drift-report"} <= set(monitored)
    assert "batch-evaluation" not in artifacts
    (row,) = read_batch_history(storage, settings.model.name)
    assert row.model_version == 1 and row.counts.samples == len(new)


def _lungcls_run(config: Path, root: Path, log: Path, marker: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "lungcls.cli", "--config", str(config), "--root", str(root)]
    return subprocess.Popen(
        [*command, "run"],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: the kill takes its children too
        env={**os.environ, "PYTHONUNBUFFERED": "1", "LUNGCLS_TEST_RUN": marker},
    )


def _kill_leftovers(marker: str) -> None:
    """Descendants of the killed run outside its process group (Ray's daemons start their
    own sessions), found by the variable they inherited, killed by PID."""
    needle = f"LUNGCLS_TEST_RUN={marker}".encode()
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and needle in (entry / "environ").read_bytes():
                os.kill(int(entry.name), signal.SIGKILL)
        except (OSError, ProcessLookupError):
            continue


def _run_killed_in_training(config: Path, root: Path, tmp_path: Path) -> str:
    """Start `lungcls run` and kill its process group once its training run has two epochs
    checkpointed; returns that run's id (its record still says running)."""
    marker = f"{os.getpid()}-{time.monotonic_ns()}"
    process = _lungcls_run(config, root, tmp_path / "killed.log", marker)
    killed_run = None
    while killed_run is None and process.poll() is None:  # a run that ends first fails below
        for history in root.glob("runs/train-*/history.json"):
            if len(History.from_json(history.read_bytes()).epochs) >= 2:  # two checkpointed
                os.killpg(process.pid, signal.SIGKILL)
                killed_run = history.parent.name
        time.sleep(0.3)
    process.wait(timeout=30)
    _kill_leftovers(marker)
    assert killed_run is not None, (tmp_path / "killed.log").read_text()[-3000:]
    train = json.loads((root / "runs" / killed_run / "train.json").read_text())
    assert train["status"] == "running"
    return killed_run


def test_bad_data_fails_at_once_but_storage_outages_are_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prefect import flow
    from prefect.cache_policies import NO_CACHE

    # Bad data: an empty series store cannot become a dataset; retrying cannot help.
    config = write_flow_config(tmp_path)
    state = build_dataset_flow(
        RunParameters(config_file=str(config), root=str(tmp_path / "empty")), return_state=True
    )
    assert state.is_failed() and "run `lungcls ingest` first" in str(state.message)
    assert _task_run_counts(state.state_details.flow_run_id) == [1]

    # A storage outage: S3 at a port where nothing listens fails with a connection error on
    # every attempt (botocore's own retries cut to one attempt), and each attempt is retried.
    dead = make_settings("s3://nowhere/root", tmp_path, s3_endpoint_url="http://127.0.0.1:9")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")

    @flow
    def outage() -> None:
        ingest_archives.with_options(
            retries=2, retry_delay_seconds=0, cache_policy=NO_CACHE, persist_result=False
        )(dead, None)

    failed = outage(return_state=True)
    assert failed.is_failed() and "Could not connect" in str(failed.message)
    assert _task_run_counts(failed.state_details.flow_run_id) == [3]  # 1 run + 2 retries


def _task_run_counts(flow_run_id: object) -> list[int]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
    return [run.run_count for run in runs]
