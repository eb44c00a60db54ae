"""Flow `retrain`: the whole pipeline, doing only what new data calls for.

ingest -> monitor -> build_dataset -> train -> evaluate_and_promote, each a subflow; monitor
scores the new batches with the champion and measures their drift before they join a
dataset version. What needs doing (train this dataset version? gate this candidate?) is
decided by `lungcls.pipeline`; with `force` everything runs. Whatever an earlier run
finished comes back from the cache.
"""

from __future__ import annotations

from prefect import flow, get_run_logger

from flows.build_dataset import build_dataset_flow
from flows.common import publish
from flows.evaluate_and_promote import evaluate_and_promote_flow
from flows.ingest import ingest_flow
from flows.monitor import monitor_flow
from flows.train import train_flow
from lungcls.flow_parameters import RetrainParameters
from lungcls.pipeline import RetrainSummary, candidate_for, decision_for


@flow(name="retrain", log_prints=True)
def retrain(params: RetrainParameters = RetrainParameters()) -> RetrainSummary:
    """Ingest new scan batches, build the next dataset version, train a candidate on it,
    evaluate it and promote it if it passes the gates. Skips what has nothing new."""
    settings = params.settings()
    ingested = ingest_flow(params.for_ingest())
    monitor_flow(params.for_monitor(ingested.run_id))
    built = build_dataset_flow(params.where())

    candidate = None if params.force else candidate_for(settings, built.ref)
    trained = candidate is None
    if candidate is None:
        candidate = train_flow(params.for_train(built.version)).model_version
    decision = None if params.force else decision_for(settings, candidate)
    gated = decision is None
    if decision is None:
        decision = evaluate_and_promote_flow(params.for_evaluate(candidate))

    summary = RetrainSummary.collect(settings, ingested, built, trained, decision, gated)
    publish(summary.artifacts())
    get_run_logger().info(" ".join(summary.outcome_lines()))
    return summary
