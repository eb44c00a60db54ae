"""Training with Ray Train on a real local Ray: learning, worker failure, determinism, tuning,
cross-validation. Training on S3 with checkpoints in the bucket is tested on a Ray cluster
(tests/infra/test_infra_cluster.py)."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from lungcls.config import Settings
from lungcls.dataset.build import build_dataset
from lungcls.ingest.run import ingest
from lungcls.io.storage import Storage
from lungcls.registry.store import load_model, load_record
from lungcls.sources.synth import SynthOptions, synth_batch
from lungcls.train.runs import TrainResult, load_run, read_history, unfinished_runs
from lungcls.train.trainer import train_model
from tests.support import make_settings

pytestmark = pytest.mark.slow

SCANS = SynthOptions(
    scans=48, slices=20, rows=64, columns=64, pixel_spacing_mm=5.6, slice_spacing_mm=5.0, seed=21
)
TINY = {
    "contracts": {"max_pixel_spacing_mm": 6.0},
    "preprocess": {"shape": (16, 16, 16), "spacing_mm": (2.5, 2.5, 2.5)},
    "model": {"width": 8, "depth": 2},
    "train": {
        "epochs": 12,
        "batch_size": 8,
        "learning_rate": 3e-3,
        "warmup_epochs": 1,
        "early_stopping_patience": 100,
        "folds": 1,
    },
    "ray": {"executor": "local", "num_cpus": 2},
}


@pytest.fixture(scope="module")
def ray_local(tmp_path_factory: pytest.TempPathFactory):
    """One local Ray for the module."""
    import ray

    from lungcls.io.compute import ensure_ray

    work = tmp_path_factory.mktemp("ray")
    ensure_ray(make_settings(work / "root", work, ray={"executor": "ray", "num_cpus": 2}))
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def shared_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One ingested dataset version for the module's local tests (each trains its own
    model name, so versions start at 1 in every test)."""
    tmp = tmp_path_factory.mktemp("train")
    settings = make_settings(tmp / "root", tmp, **TINY)
    synth_batch(Storage.from_settings(settings), "b1", SCANS)
    ingest(settings, progress=False)
    assert build_dataset(settings, progress=False).created
    return tmp


_counter = iter(range(1000))


def _prepared(shared: Path, **extra: object) -> Settings:
    """Settings on the shared root, with a fresh model name and the given overrides."""
    model = {**TINY["model"], "name": f"cnn-{next(_counter)}"}
    return make_settings(shared / "root", shared, **{**TINY, "model": model, **extra})


def _weights(settings: Settings, version: int | None = None) -> dict[str, torch.Tensor]:
    storage = Storage.from_settings(settings)
    return load_model(storage, load_record(storage, settings.model.name, version)).state_dict()


def test_two_workers_learn_far_above_chance_and_a_killed_worker_resumes(
    shared_root: Path, ray_local: None
) -> None:
    """Two DDP workers train 12 epochs; once two epochs are checkpointed one worker process
    is killed: Ray Train restarts the group from the last checkpoint, each epoch runs once,
    the model learns far above chance and is published with its TorchScript twin."""
    settings = _prepared(shared_root)
    storage = Storage.from_settings(settings)
    outcome: dict[str, TrainResult] = {}
    thread = threading.Thread(target=lambda: outcome.update(result=train_model(settings)))
    thread.start()
    killed = None
    # No deadline but the training's own end: a loaded machine may take minutes to reach
    # epoch 2, and a run that ends first fails the test below.
    while killed is None and thread.is_alive():
        runs = [load_run(storage, r) for r in unfinished_runs(storage)]
        mine = [r.run_id for r in runs if r.model.name == settings.model.name]
        history = read_history(storage, mine[0]) if mine else []
        if len(history) >= 2:  # epochs done and checkpointed: kill a process that ran them
            killed = history[-1].worker_pids[-1]
            os.kill(killed, signal.SIGKILL)
        time.sleep(0.2)
    thread.join(timeout=900)
    assert not thread.is_alive(), "training did not finish"
    assert killed is not None, "training ended before a worker could be killed"
    result = outcome["result"]
    history = result.history
    assert [h.epoch for h in history] == list(range(12))  # each epoch once: resumed
    assert history[0].resumes == 0 and history[-1].resumes >= 1
    assert killed in history[0].worker_pids and killed not in history[-1].worker_pids
    assert history[0].workers == 2

    assert result.best_val_auc is not None and result.best_val_auc >= 0.8, history
    record = load_record(storage, settings.model.name)
    assert (record.dataset.name, record.dataset.version) == ("lung-nodules", 1)
    assert record.version == result.model_version == 1
    assert len(record.history) == 12 and record.train_run == result.run_id
    assert load_run(storage, record.train_run).model_version == 1  # the run is finished
    model_ts = f"models/{settings.model.name}/v1/model.ts"
    scripted = torch.jit.load(str(Path(settings.root) / model_ts))
    x = torch.rand(2, 1, 16, 16, 16)
    model = load_model(storage, record)
    assert all(torch.isfinite(w).all() for w in model.state_dict().values())
    assert torch.allclose(scripted(x), model(x), atol=1e-5)


def test_same_seed_on_one_worker_gives_identical_weights(
    shared_root: Path, ray_local: None
) -> None:
    one = {**TINY["train"], "num_workers": 1, "epochs": 1, "cpus_per_worker": 1}
    settings = _prepared(shared_root, train=one)
    train_model(settings)
    train_model(settings)
    first, second = _weights(settings, 1), _weights(settings, 2)
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_tune_publishes_the_best_trial(shared_root: Path, ray_local: None) -> None:
    from lungcls.train.tune import tune_model

    one = {**TINY["train"], "num_workers": 1, "cpus_per_worker": 1}  # DDP is tested above
    tune = {"trials": 2, "max_epochs": 2, "grace_period": 1}
    settings = _prepared(shared_root, train=one, tune=tune)
    result = tune_model(settings)
    record = load_record(Storage.from_settings(settings), settings.model.name)
    assert record.version == result.model_version == 1 and record.tune is not None
    trials = record.tune.trials
    assert len(trials) == 2
    assert result.best_val_auc == max(t.val_auc for t in trials)
    assert record.model.width == record.tune.best_config["width"]
    assert _weights(settings)


def test_cross_validation_scores_every_patient_once_and_publishes_their_average(
    shared_root: Path, ray_local: None
) -> None:
    from lungcls.dataset.manifest import load_manifest
    from lungcls.dataset.shards import iter_samples, read_shard_metadata
    from lungcls.evaluate.evaluation import evaluate_model
    from lungcls.train.ensemble import Ensemble, FlipAveraged
    from lungcls.train.folds import read_oof_scores, standardise
    from lungcls.train.models import build_model
    from lungcls.train.scoring import score_samples

    settings = _prepared(
        shared_root,
        train={**TINY["train"], "epochs": 2, "folds": 2, "select_epoch": "last"},
        model={**TINY["model"], "name": "cnn-folds", "test_time_flips": True},
    )
    storage = Storage.from_settings(settings)
    result = train_model(settings)
    record = load_record(storage, settings.model.name)
    cv = record.cross_validation
    assert cv is not None and [f.fold for f in cv.folds] == [0, 1]
    assert result.cross_validation == cv and result.best_val_auc == cv.oof_auc
    assert all(f.best_epoch == f.epochs_run - 1 == 1 for f in cv.folds)  # select_epoch: last

    # Every train/val sample has exactly one out-of-fold score; no patient spans two folds.
    manifest = load_manifest(storage, "lung-nodules")
    pooled = [
        read_shard_metadata(storage, s.path).to_pandas()
        for split in ("train", "val")
        for s in manifest.shards_of(split)
    ]
    samples = sorted(s for frame in pooled for s in frame["sample_id"])
    oof = read_oof_scores(storage, record)
    assert sorted(oof["sample_id"]) == samples and "test" not in set(oof["split"])
    assert oof.groupby("patient_id")["fold"].nunique().max() == 1
    assert sum(f.patients for f in cv.folds) == oof["patient_id"].nunique()
    assert [f.positives + f.negatives for f in cv.folds] == list(
        oof.groupby("fold").size().sort_index()
    )

    # The published network averages the fold models' standardised logits over the input
    # and its 7 flipped views (`model.test_time_flips`), scripted alike.
    model = load_model(storage, record)
    assert isinstance(model, FlipAveraged) and isinstance(model.network, Ensemble)
    ensemble = model.network
    assert len(ensemble.members) == 2
    x = torch.rand(3, 1, 16, 16, 16)
    flips = [[], [2], [3], [4], [2, 3], [2, 4], [3, 4], [2, 3, 4]]
    views = [
        (member(x.flip(dims)) - ensemble.offsets[k]) / ensemble.scales[k]
        for k, member in enumerate(ensemble.members)
        for dims in flips
    ]
    assert torch.allclose(model(x), torch.stack(views).mean(dim=0), atol=1e-5)
    scripted = torch.jit.load(str(Path(settings.root) / record.folder / "model.ts"))
    assert torch.allclose(scripted(x), model(x), atol=1e-5)

    # Each fold's held-out scores are its model's, flip-averaged as the published one
    # scores; pooled, they are standardised with the offsets and scales the ensemble holds.
    folds = Path(settings.root) / f"runs/{result.run_id}/folds"
    fold_model = build_model(settings.model, manifest.tensor_shape, seed=0)
    fold_model.load_state_dict(torch.load(folds / "0.pt"))
    raw = pd.read_parquet(folds / "0-scores.parquet")
    shards = [s for split in ("train", "val") for s in manifest.shards_of(split)]
    held_out = (s for s in iter_samples(storage, shards) if s.patient_id in set(raw["patient_id"]))
    rescored = score_samples(FlipAveraged(fold_model).eval(), held_out)
    assert list(rescored["sample_id"]) == list(raw["sample_id"])
    assert abs(rescored["score"] - raw["score"]).max() < 1e-5
    plain = score_samples(fold_model.eval(), iter_samples(storage, shards)).set_index("sample_id")
    assert not np.allclose(plain.loc[raw["sample_id"], "score"], raw["score"])
    pooled = pd.concat([pd.read_parquet(folds / f"{k}-scores.parquet") for k in (0, 1)])
    expected, offsets, scales = standardise(pooled.sort_values("sample_id", ignore_index=True))
    assert np.allclose(oof["score"], expected["score"])
    assert np.allclose(ensemble.offsets, offsets) and np.allclose(ensemble.scales, scales)

    # Evaluation fits calibration and the operating point on the out-of-fold scores.
    report = evaluate_model(settings).report
    assert report.operating_point.chosen_on.startswith("out-of-fold scores of 2 folds")
    assert report.splits["oof"].samples == len(samples) and "val" not in report.splits

    # A run killed after one fold resumes with the second only (kept folds are not redone).
    run = load_run(storage, result.run_id)
    run.model_copy(update={"status": "running", "model_version": None}).save(
        storage, f"runs/{result.run_id}/train.json"
    )
    kept = storage.read_bytes(f"runs/{result.run_id}/folds/0.json")
    storage.remove(f"runs/{result.run_id}/folds/1.json")
    again = train_model(settings, resume=True)
    assert again.run_id == result.run_id and again.model_version == 2
    assert storage.read_bytes(f"runs/{result.run_id}/folds/0.json") == kept
    assert storage.exists(f"runs/{result.run_id}/folds/1.json")
