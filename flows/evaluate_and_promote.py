"""Flow `evaluate_and_promote`: candidate -> report on the test split -> gate -> champion."""

from __future__ import annotations

from prefect import flow, get_run_logger

from flows.common import publish, run_stage, stage_task
from lungcls.config import Settings
from lungcls.evaluate.evaluation import evaluate_model, resolve_version
from lungcls.evaluate.report import EvaluationReport
from lungcls.flow_parameters import EvaluateParameters
from lungcls.io.storage import Storage
from lungcls.pipeline import evaluation_key
from lungcls.registry.decisions import Decision
from lungcls.registry.promote import promote


# `force` refreshes the cache instead of being part of the key.
@stage_task("evaluate-model", lambda settings, version, force: evaluation_key(settings, version))
def evaluate(settings: Settings, version: int, force: bool) -> EvaluationReport:
    return evaluate_model(settings, version=version, force=force).report


@stage_task("gate-and-promote")
def gate(settings: Settings, version: int) -> Decision:
    return promote(settings, version)


@flow(name="evaluate_and_promote", log_prints=True)
def evaluate_and_promote_flow(params: EvaluateParameters = EvaluateParameters()) -> Decision:
    """Evaluate a model version on its dataset's test split (metrics with CIs, operating
    point, plots, report) and promote it to champion if every gate passes."""
    settings = params.settings()
    storage = Storage.from_settings(settings)
    version = resolve_version(storage, settings.model.name, params.model_ref).version
    report, _ = run_stage(evaluate, settings, version, params.force, refresh=params.force)
    publish(report.artifacts(storage))
    decision, _ = run_stage(gate, settings, version)
    publish(decision.artifacts())
    report_url = storage.url(f"{report.folder}/report.html")
    get_run_logger().info("%s; report at %s", decision.headline(), report_url)
    return decision
