"""Flow `train`: a dataset version -> a candidate model version, with Ray Train."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from prefect import flow, get_run_logger

from flows.artifacts import training_artifacts
from flows.common import content_key, run_stage, stage_task
from flows.parameters import TrainParameters
from lungcls.config import Settings
from lungcls.dataset.build import load_manifest, version_dir
from lungcls.io.storage import Storage
from lungcls.train.trainer import resumable_run, train_model


def _train_key(settings: Settings, dataset: dict[str, Any]) -> str:
    storage = Storage.from_settings(settings)
    manifest = f"{version_dir(dataset['name'], dataset['version'])}/manifest.json"
    return content_key(
        "train",
        storage.sha256(manifest),
        settings.train.model_dump(mode="json"),
        settings.model.model_dump(mode="json"),
    )


@stage_task("train-model", _train_key)
def train_candidate(settings: Settings, dataset: dict[str, Any]) -> dict[str, Any]:
    # A run killed earlier (crash, lost node, retry) is finished from its last checkpoint.
    resume = resumable_run(Storage.from_settings(settings), settings, dataset) or False
    if resume:
        get_run_logger().info("resuming unfinished training run %s", resume)
    result = train_model(settings, dataset["name"], dataset["version"], resume=resume)
    return asdict(result)


@flow(name="train", log_prints=True)
def train_flow(params: TrainParameters = TrainParameters()) -> dict[str, Any]:
    """Train a CNN on a dataset version with Ray Train and publish the best epoch as a new
    candidate model version (not champion: `evaluate_and_promote` decides that)."""
    settings = params.settings()
    storage = Storage.from_settings(settings)
    manifest = load_manifest(storage, settings.dataset.name, params.dataset_version)
    dataset = {"name": manifest["name"], "version": manifest["version"]}
    trained, cached = run_stage(train_candidate, settings, dataset, refresh=params.force)
    training_artifacts(trained)
    get_run_logger().info(
        "model %s v%d %s: best val AUC %.3f at epoch %d of %d",
        trained["model_name"],
        trained["model_version"],
        "(cached: trained by an earlier run)" if cached else "trained",
        trained["best_val_auc"],
        trained["best_epoch"] + 1,
        trained["epochs_run"],
    )
    return trained
