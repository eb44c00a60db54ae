"""Evaluation, promotion and prediction on a real (small) model and dataset version."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from lungcls.config import RaySettings, Settings
from lungcls.dataset.build import build_dataset
from lungcls.evaluate.evaluation import evaluate_model
from lungcls.evaluate.metrics import METRIC_NAMES
from lungcls.ingest.run import ingest
from lungcls.io.integrity import IntegrityError
from lungcls.io.storage import Storage
from lungcls.predict.batch import SCORE_BATCH, predict_batch, predict_source
from lungcls.registry.aliases import read_alias
from lungcls.registry.decisions import read_decisions
from lungcls.registry.promote import promote, rollback
from lungcls.registry.store import load_model, load_record, publish_model, serialise_model
from lungcls.sources.synth import SynthOptions, synth_batch
from tests.support import TEST_KEY, make_settings, train_in_process

SCANS = SynthOptions(
    scans=64, slices=20, rows=64, columns=64, pixel_spacing_mm=5.6, slice_spacing_mm=5.0, seed=32
)
SMALL = {
    "contracts": {"max_pixel_spacing_mm": 6.0},
    "preprocess": {"shape": (16, 16, 16), "spacing_mm": (2.5, 2.5, 2.5)},
    "model": {"width": 8, "depth": 2},
    "evaluation": {"bootstrap_rounds": 300},
}


def prepared(root: str | Path, tmp_path: Path, **extra: object) -> Settings:
    settings = make_settings(root, tmp_path, **{**SMALL, **extra})
    synth_batch(Storage.from_settings(settings), "b1", SCANS)
    ingest(settings, progress=False)
    build_dataset(settings, progress=False)
    return settings


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """A dataset version and a model trained on it (v1), shared by the module."""
    tmp = tmp_path_factory.mktemp("evaluate")
    settings = prepared(tmp / "root", tmp)
    assert train_in_process(settings, steps=60) == 1
    return settings


def test_report_has_every_metric_with_intervals(trained: Settings) -> None:
    storage = Storage.from_settings(trained)
    evaluation = evaluate_model(trained)
    report = evaluation.report
    assert report.folder == evaluation.folder
    for block in (report.metrics.at_half, report.metrics.at_operating_point):
        for name in METRIC_NAMES:
            assert name in block.values, name
            low, high = block.ci95[name]
            assert low is not None and high is not None and low <= high, name
        value, (low, high) = block.values["roc_auc"], block.ci95["roc_auc"]
        assert low <= value <= high
    op = report.operating_point
    assert op.chosen_on == "val" and op.val_sensitivity >= op.target_sensitivity
    assert report.metrics.at_operating_point.threshold == op.threshold
    assert report.metrics.at_operating_point.values["roc_auc"] > 0.8
    assert {g.attribute for g in report.subgroups} >= {"manufacturer", "nodule diameter"}
    html = storage.read_text(f"{evaluation.folder}/report.html")
    for plot in report.plots:
        assert storage.exists(f"{evaluation.folder}/{plot}")
        assert f'href="{plot}"' in html
    assert html.count("data:image/png;base64,") == len(report.plots) >= 5
    assert "http://" not in html and "https://" not in html and "<script" not in html
    assert "not a medical device" in storage.read_text(f"{evaluation.folder}/report.md").lower()
    again = evaluate_model(trained)  # inputs are immutable: the report is reused
    assert again.report == report


def test_evaluating_again_writes_the_next_version_and_verifies_scores(trained: Settings) -> None:
    storage = Storage.from_settings(trained)
    first = evaluate_model(trained)
    committed = {f: storage.read_bytes(f"{first.folder}/{f}") for f in first.report.files}
    assert "scores.parquet" in committed and first.report.version is not None
    second = evaluate_model(trained, force=True)
    assert second.report.version == first.report.version + 1
    assert second.folder != first.folder  # a committed evaluation never changes
    assert all(storage.read_bytes(f"{first.folder}/{f}") == b for f, b in committed.items())
    assert evaluate_model(trained).report == second.report  # the latest is reused
    scores = f"{second.folder}/scores.parquet"
    original = storage.read_bytes(scores)
    storage.write_atomic(scores, original[:-8] + b"tampered")
    try:
        with pytest.raises(IntegrityError, match=r"scores\.parquet"):
            evaluate_model(trained)
    finally:
        storage.write_atomic(scores, original)


def test_evaluate_json_prints_key_metrics(trained: Settings, tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({**trained.masked(), "pseudonym_key": TEST_KEY}))
    result = subprocess.run(
        [sys.executable, "-m", "lungcls.cli", "--config", str(config), "evaluate", "--json"],
        capture_output=True,
        text=True,
        timeout=300,
        env=os.environ,
    )
    assert result.returncode == 0, result.stderr
    key = json.loads(result.stdout)
    assert 0.0 <= key["test"]["roc_auc"]["value"] <= 1.0
    assert len(key["test"]["sensitivity"]["ci95"]) == 2
    assert key["report"]["html"].endswith("report.html")


def _publish_perturbed(settings: Settings, version: int, noise: float) -> int:
    storage = Storage.from_settings(settings)
    record = load_record(storage, settings.model.name, version)
    model = load_model(storage, record)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * noise)
    record = record.model_copy(update={"train_run": f"perturbed-v{version}"})
    files = serialise_model(model, record.tensor_shape)
    return publish_model(storage, settings.model.name, files, record)


def test_gate_rejects_worse_promotes_better_and_rolls_back(trained: Settings) -> None:
    storage = Storage.from_settings(trained)
    name = trained.model.name
    first = promote(trained, 1)
    assert (first.outcome, first.champion_after) == ("promoted", 1)

    degraded = _publish_perturbed(trained, 1, noise=0.5)
    rejected = promote(trained, degraded)
    assert rejected.outcome == "rejected" and rejected.champion_after == 1
    failed = {g.name: g for g in rejected.failed_gates}
    assert failed, "a perturbed model passed every gate"
    assert all(g.detail and (g.value is None or np.isfinite(g.value)) for g in failed.values())
    assert read_alias(storage, name, "champion").version == 1

    better = train_in_process(trained, steps=120, seed=1)
    promoted = promote(trained, better)
    assert promoted.outcome == "promoted", [g.detail for g in promoted.failed_gates]
    gate = next(g for g in promoted.gates if g.name == "non_inferiority")
    assert gate.passed and "AUC(" in gate.detail
    assert read_alias(storage, name, "champion").version == better

    back = rollback(trained)
    assert (back.outcome, back.champion_after) == ("rolled_back", 1)
    outcomes = [d.outcome for d in read_decisions(storage, name)]
    assert outcomes == ["promoted", "rejected", "promoted", "rolled_back"]


def test_two_concurrent_promotions_have_one_winner(trained: Settings, tmp_path: Path) -> None:
    storage = Storage.from_settings(trained)
    name = trained.model.name
    candidates = [train_in_process(trained, steps=100, seed=s) for s in (2, 3)]
    before = read_alias(storage, name, "champion")
    logged = len(read_decisions(storage, name))
    # Each process reads the champion, then evaluates its candidate (seconds of bootstrap),
    # then moves the alias: started together, both read the same champion.
    config = tmp_path / "c.yaml"
    racing = {**trained.masked(), "pseudonym_key": TEST_KEY}
    racing["evaluation"] = {**racing["evaluation"], "bootstrap_rounds": 3000}
    config.write_text(yaml.safe_dump(racing))
    processes = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "lungcls.cli",
                "--config",
                str(config),
                "promote",
                "--version",
                str(v),
                "--json",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for v in candidates
    ]
    decisions = [json.loads(p.communicate(timeout=300)[0]) for p in processes]
    assert [d["champion_before"] for d in decisions] == [before.version] * 2, "no overlap"
    outcomes = sorted(d["outcome"] for d in decisions)
    assert outcomes == ["lost_race", "promoted"], decisions
    winner = next(d for d in decisions if d["outcome"] == "promoted")["candidate_version"]
    after = read_alias(storage, name, "champion")
    assert after.version == winner and after.sequence == before.sequence + 1
    log = read_decisions(storage, name)[logged:]
    assert sorted(d.outcome for d in log) == ["lost_race", "promoted"]


def test_predict_matches_evaluation_and_writes_batch_results(
    trained: Settings, tmp_path: Path
) -> None:
    storage = Storage.from_settings(trained)
    # The module's tests share one root; under xdist this one may run before the promotion
    # test, so it makes sure a champion exists rather than relying on the order.
    if read_alias(storage, trained.model.name, "champion").version is None:
        assert promote(trained, 1).outcome == "promoted"
    champion = read_alias(storage, trained.model.name, "champion").version
    evaluation = evaluate_model(trained, version=champion)
    scores = evaluation.scores.set_index("sample_id")["score"]
    archive = sorted(i.path for i in storage.list_files("inbox/b1") if i.path.endswith(".zip"))[0]
    predictions = predict_source(trained, storage.url(archive), saliency_dir=str(tmp_path / "sal"))
    compared = [p for p in predictions if p.series_id in scores.index]
    for p in compared:
        assert abs(p.probability - scores[p.series_id]) < 1e-5
        assert p.center == "labels" and p.model_version == champion
        assert (tmp_path / "sal" / f"{p.series_id}.png").read_bytes()[:4] == b"\x89PNG"
    everything, where = predict_batch(trained, "b1")
    frame = pd.read_parquet(
        Path(trained.root) / where.split(trained.root, 1)[1].lstrip("/") / "predictions.parquet"
    )
    assert len(frame) == len(everything) == SCANS.scans
    in_eval = frame[frame["series_id"].isin(scores.index)]
    assert len(in_eval) > 0
    assert np.allclose(in_eval["probability"], scores[in_eval["series_id"]].to_numpy(), atol=1e-5)


def test_predict_batch_fanned_out_on_ray_equals_in_process(trained: Settings) -> None:
    """The inputs of a batch are prepared as Ray tasks on a real local Ray and scored in
    batches of up to 32; each series scores as it does in this process, in the same order."""
    import ray

    local, _ = predict_batch(trained, "b1", version=1, progress=False)
    fanned = trained.model_copy(update={"ray": RaySettings(executor="ray", num_cpus=2)})
    try:
        on_ray, _ = predict_batch(fanned, "b1", version=1, progress=False)
    finally:
        ray.shutdown()
    assert len(local) == SCANS.scans > SCORE_BATCH  # more than one forward batch
    assert [p.series_id for p in on_ray] == [p.series_id for p in local]
    assert np.allclose([p.probability for p in on_ray], [p.probability for p in local], atol=1e-5)
    assert [p.archive_id for p in on_ray] == [p.archive_id for p in local]


def test_evaluate_promote_predict_on_s3(s3_settings: Settings, tmp_path: Path) -> None:
    settings = s3_settings.model_copy(
        update={k: getattr(make_settings(tmp_path, tmp_path, **SMALL), k) for k in SMALL}
    )
    storage = Storage.from_settings(settings)
    synth_batch(storage, "b1", SCANS)
    ingest(settings, progress=False)
    build_dataset(settings, progress=False)
    version = train_in_process(settings, steps=60)
    decision = promote(settings, version)
    assert decision.outcome == "promoted", [g.detail for g in decision.failed_gates]
    evaluation = evaluate_model(settings, version="champion")
    assert storage.exists(f"{evaluation.folder}/report.html")
    assert evaluation.folder.startswith("models/lung-nodule-cnn/v1/evaluations/")
    scores = evaluation.scores.set_index("sample_id")["score"]
    archives = sorted(i.path for i in storage.list_files("inbox/b1") if i.path.endswith("gz"))
    predictions = [p for a in archives[:4] for p in predict_source(settings, storage.url(a))]
    assert all(p.archive_id.startswith("archive-") for p in predictions)
    matched = [p for p in predictions if p.series_id in scores.index]
    assert matched and all(abs(p.probability - scores[p.series_id]) < 1e-5 for p in matched)
