"""Flow `train`: a dataset version -> a candidate model version, with Ray Train."""

from __future__ import annotations

from prefect import flow, get_run_logger

from flows.common import publish, run_stage, stage_task
from lungcls.config import Settings
from lungcls.dataset.manifest import DatasetRef, load_manifest
from lungcls.flow_parameters import TrainParameters
from lungcls.io.storage import Storage
from lungcls.pipeline import train_key, train_or_resume
from lungcls.train.runs import TrainResult


@stage_task("train-model", train_key)
def train_candidate(settings: Settings, dataset: DatasetRef) -> TrainResult:
    return train_or_resume(settings, dataset)


@flow(name="train", log_prints=True)
def train_flow(params: TrainParameters = TrainParameters()) -> TrainResult:
    """Train a CNN on a dataset version with Ray Train and publish the best epoch as a new
    candidate model version (not champion: `evaluate_and_promote` decides that)."""
    settings = params.settings()
    storage = Storage.from_settings(settings)
    dataset = load_manifest(storage, settings.dataset.name, params.dataset_version).ref
    trained, cached = run_stage(train_candidate, settings, dataset, refresh=params.force)
    publish(trained.artifacts())
    get_run_logger().info("%s%s", trained.headline(), " (cached)" if cached else "")
    return trained
