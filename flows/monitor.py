"""Flow `monitor`: the champion on the batches an ingest run brought in, and their drift,
before they join a dataset version. Alerts warn and emit `lungcls.monitoring.alert` (for
Prefect automations); they never fail the run."""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.events import emit_event

from flows.common import publish, run_stage, stage_task
from lungcls.config import Settings
from lungcls.flow_parameters import MonitorParameters
from lungcls.io.storage import Storage
from lungcls.monitor.run import MonitoringSummary, monitor_ingested


@stage_task("monitor-batches")
def monitor_batches(settings: Settings, ingest_run: str) -> MonitoringSummary:
    return monitor_ingested(settings, ingest_run)


@flow(name="monitor", log_prints=True)
def monitor_flow(params: MonitorParameters) -> MonitoringSummary:
    """Score the new batches with the champion (one history row each) and measure their
    drift from its training data; publish the rows, the history plot and the drift tables."""
    settings = params.settings()
    summary, _ = run_stage(monitor_batches, settings, params.ingest_run)
    publish(summary.artifacts(Storage.from_settings(settings)))
    logger = get_run_logger()
    for line in summary.summary_lines():
        logger.info(line)
    if summary.alerts:
        logger.warning("monitoring alert: %s", "; ".join(summary.alerts))
        emit_event(
            event="lungcls.monitoring.alert",
            resource={"prefect.resource.id": f"lungcls.model.{summary.model}"},
            payload={"run_id": summary.run_id, "alerts": summary.alerts},
        )
    return summary
