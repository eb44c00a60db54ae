"""Flow `evaluate_and_promote`: candidate -> report on the test split -> gate -> champion."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

from prefect import flow, get_run_logger

from flows.artifacts import evaluation_artifacts, promotion_artifacts
from flows.common import content_key, run_stage, stage_task
from flows.parameters import EvaluateParameters
from lungcls.config import Settings
from lungcls.evaluate.evaluation import evaluate_model, resolve_version
from lungcls.io.storage import Storage
from lungcls.registry.promote import promote
from lungcls.registry.store import model_dir


def _evaluation_key(settings: Settings, version: int, force: bool) -> str:
    storage = Storage.from_settings(settings)
    record = storage.sha256(f"{model_dir(settings.model.name, version)}/model.json")
    return content_key("evaluate", record, settings.evaluation.model_dump(mode="json"))


@stage_task("evaluate-model", _evaluation_key)
def evaluate(settings: Settings, version: int, force: bool) -> dict[str, Any]:
    evaluation = evaluate_model(settings, version=version, force=force)
    # The report itself stays in storage; the result carries its location and key numbers.
    report = json.loads(json.dumps(evaluation.report, default=str))
    return {"folder": evaluation.folder, "metrics": report["metrics"], "model": report["model"]}


@stage_task("gate-and-promote")
def gate(settings: Settings, version: int) -> dict[str, Any]:
    return json.loads(json.dumps(asdict(promote(settings, version)), default=str))


@flow(name="evaluate_and_promote", log_prints=True)
def evaluate_and_promote_flow(params: EvaluateParameters = EvaluateParameters()) -> dict[str, Any]:
    """Evaluate a model version on its dataset's test split (metrics with CIs, operating
    point, plots, report) and promote it to champion if every gate passes."""
    settings = params.settings()
    storage = Storage.from_settings(settings)
    ref = None if params.model_version == "latest" else params.model_version
    version = resolve_version(storage, settings.model.name, ref)["version"]
    evaluation, _ = run_stage(evaluate, settings, version, params.force, refresh=params.force)
    evaluation_artifacts(evaluation, storage)
    decision, _ = run_stage(gate, settings, version)
    promotion_artifacts(decision)
    failed = [g["name"] for g in decision["gates"] if not g["passed"]]
    get_run_logger().info(
        "model %s v%d: %s%s; champion is v%s; report at %s",
        decision["model"],
        version,
        decision["outcome"],
        f" (failed gates: {', '.join(failed)})" if failed else "",
        decision["champion_after"],
        storage.url(f"{evaluation['folder']}/report.html"),
    )
    return {"evaluation": evaluation, "decision": decision}
