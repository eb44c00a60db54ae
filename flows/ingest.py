"""Flow `ingest`: new or changed archives in the inbox -> series store (one task)."""

from __future__ import annotations

from prefect import flow, get_run_logger

from flows.common import publish, run_stage, stage_task
from lungcls.config import Settings
from lungcls.flow_parameters import IngestParameters
from lungcls.ingest.run import ingest
from lungcls.ingest.summary import IngestSummary
from lungcls.io.storage import Storage
from lungcls.pipeline import ingest_key


@stage_task("ingest-archives", ingest_key)
def ingest_archives(
    settings: Settings, batch: str | None, retry_rejected: bool = False
) -> IngestSummary:
    return ingest(settings, batch, progress=False, retry_rejected=retry_rejected)


@flow(name="ingest", log_prints=True)
def ingest_flow(params: IngestParameters = IngestParameters()) -> IngestSummary:
    """Ingest every new or changed DICOM archive under the inbox; quarantine what is bad."""
    settings = params.settings()
    retry = params.retry_rejected  # a retry re-reads an unchanged inbox: never cached
    summary, cached = run_stage(ingest_archives, settings, params.batch, retry, refresh=retry)
    summary = summary.as_cached() if cached else summary  # cached: the inbox is unchanged
    publish(summary.artifacts(Storage.from_settings(settings)))
    get_run_logger().info(summary.summary_lines()[0])
    return summary
