"""Flow `build_dataset`: series store -> contracts -> preprocessing -> a dataset version."""

from __future__ import annotations

from prefect import flow, get_run_logger

from flows.common import publish, run_stage, stage_task
from lungcls.config import Settings
from lungcls.dataset.build import build_dataset
from lungcls.dataset.summary import BuildSummary
from lungcls.flow_parameters import RunParameters
from lungcls.io.storage import Storage
from lungcls.pipeline import dataset_key


@stage_task("build-dataset-version", dataset_key)
def build_version(settings: Settings) -> BuildSummary:
    return build_dataset(settings, progress=False)


@flow(name="build_dataset", log_prints=True)
def build_dataset_flow(params: RunParameters = RunParameters()) -> BuildSummary:
    """Validate the series store against the data contracts and build the next dataset
    version (shards + manifest) if any series or setting changed."""
    settings = params.settings()
    built, cached = run_stage(build_version, settings)
    built = built.as_cached() if cached else built  # cached: built earlier from these inputs
    publish(built.artifacts(Storage.from_settings(settings)))
    get_run_logger().info(built.summary_lines()[0])
    return built
