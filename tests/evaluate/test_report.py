"""Tests for lungcls.evaluate.plots and .render: real PNGs, Markdown and self-contained HTML,
and the key-metric rows the CLI and the Prefect artifacts share."""

from __future__ import annotations

import base64
import copy
import re

import numpy as np
import pytest

from lungcls.evaluate.metrics import METRIC_NAMES
from lungcls.evaluate.plots import PLOTS, render_plots
from lungcls.evaluate.render import NOT_A_DEVICE, render_html, render_markdown
from lungcls.evaluate.report import EvaluationReport

PNG_SIGNATURE = b"\x89PNG"


@pytest.fixture(scope="module")
def predictions() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    labels = np.repeat(rng.integers(0, 2, 40), 2)
    scores = np.clip(0.4 * labels + 0.6 * rng.random(labels.size), 0.0, 1.0)
    groups = np.repeat(np.array([f"pseudo-{i:03d}" for i in range(40)]), 2)
    return labels, scores, groups


@pytest.fixture(scope="module")
def images(predictions: tuple[np.ndarray, np.ndarray, np.ndarray]) -> dict[str, bytes]:
    return render_plots(*predictions, threshold=0.45, rounds=100, seed=0)


def metric_block(threshold: float, shift: float) -> dict[str, object]:
    values = {name: 0.8 + shift for name in METRIC_NAMES}
    values.update(roc_auc=0.912, tp=7, fp=1, tn=7, fn=1)
    ci95 = {name: [0.7 + shift, 0.9 + shift] for name in METRIC_NAMES}
    ci95["roc_auc"] = [0.85, 0.967]
    return {"threshold": threshold, "values": values, "ci95": ci95}


REPORT_JSON = {
    "schema": "lungcls.evaluation/1",
    "created_at": "2026-11-26T20:00:00+00:00",
    "model": {
        "name": "lung-nodule-cnn",
        "version": 3,
        "train_run": "train-20261126",
        "trained_on": {"name": "lung-nodules", "version": 1},
    },
    "dataset": {"name": "lung-nodules", "version": 1},
    "splits": {
        "val": {"samples": 12, "positives": 6, "patients": 10},
        "test": {"samples": 16, "positives": 8, "patients": 13},
    },
    "calibration": {"method": "platt", "fitted_on": "val", "slope": 1.2, "intercept": -0.1},
    "operating_point": {
        "target_sensitivity": 0.95,
        "threshold": 0.31,
        "chosen_on": "val",
        "confidence": 0.0,
        "val_threshold_at_target": 0.31,
        "val_sensitivity": 1.0,
        "val_specificity": 0.83,
    },
    "metrics": {"at_0.5": metric_block(0.5, 0.0), "at_operating_point": metric_block(0.31, 0.05)},
    "subgroups": [
        {
            "attribute": "manufacturer",
            "value": "SIEMENS",
            "n": 4,
            "positives": 2,
            "sensitivity": 1.0,
            "specificity": 0.5,
            "roc_auc": 1.0,
        },
        {
            "attribute": "manufacturer",
            "value": "unknown",
            "n": 1,
            "positives": 0,
            "sensitivity": float("nan"),
            "specificity": 1.0,
            "roc_auc": float("nan"),
        },
    ],
    "bootstrap": {"rounds": 1000, "seed": 0, "unit": "patient", "level": 0.95},
    "contracts": {
        "ct-series": {
            "name": "ct-series",
            "version": "2",
            "sha256": "0" * 64,
            "evaluated_expectations": 12,
            "rows": 30,
            "rows_rejected": 1,
        }
    },
    "model_card": {
        "intended_use": "Research on lung nodule malignancy classification.",
        "not_intended_for": "Diagnosis or any clinical decision.",
        "limitations": ["Few test patients.", "One scanner vendor dominates."],
        "ethical_considerations": "Errors could <b>mislead</b> readers.",
        "data": "Pseudonymous CT series.",
    },
    "plots": sorted(PLOTS),
}
REPORT = EvaluationReport.from_json(REPORT_JSON, "the test report")


def test_render_plots_returns_every_png(images: dict[str, bytes]) -> None:
    assert (
        set(images)
        == set(PLOTS)
        == {
            "roc.png",
            "pr.png",
            "reliability.png",
            "scores.png",
            "confusion.png",
        }
    )
    for name, png in images.items():
        assert png.startswith(PNG_SIGNATURE), name
        assert len(png) > 5_000, name  # a drawn figure, not an empty canvas


def test_render_plots_is_deterministic(
    predictions: tuple[np.ndarray, np.ndarray, np.ndarray], images: dict[str, bytes]
) -> None:
    assert render_plots(*predictions, threshold=0.45, rounds=100, seed=0) == images


def test_markdown_content() -> None:
    markdown = render_markdown(REPORT)
    assert markdown.startswith("# ")
    title = markdown.splitlines()[0]
    assert "lung-nodule-cnn v3" in title and "lung-nodules v1" in title
    assert NOT_A_DEVICE in markdown
    assert "0.912 (0.850–0.967)" in markdown
    for name in METRIC_NAMES:
        assert f"| {name} |" in markdown, name
    assert "threshold 0.310" in markdown and "threshold 0.500" in markdown
    assert "sensitivity ≥ 0.95 on the val split" in markdown
    assert "| actual positive | 1 | 7 |" in markdown  # fn, tp
    assert "wide uncertainty" in markdown
    assert "| manufacturer | unknown | 1 | 0 | n/a | 1.000 | n/a |" in markdown
    for name in PLOTS:
        assert f"]({name})" in markdown
    assert "- One scanner vendor dominates." in markdown
    assert "Intended use: Research on lung nodule" in markdown
    assert "| ct-series | 2 | 30 | 1 |" in markdown


def test_markdown_leaves_out_empty_parts_and_says_n_a() -> None:
    report = copy.deepcopy(REPORT_JSON)
    report["subgroups"], report["contracts"] = [], {}
    report["metrics"]["at_0.5"]["values"]["ppv"] = float("nan")
    report["metrics"]["at_0.5"]["ci95"]["ppv"] = [None, None]
    markdown = render_markdown(EvaluationReport.from_json(report))
    assert "Subgroups" not in markdown and "Data contracts" not in markdown
    assert "| PPV (precision) | ppv | n/a |" in markdown


def test_markdown_escapes_table_pipes() -> None:
    report = copy.deepcopy(REPORT_JSON)
    report["subgroups"][0]["value"] = "GE|MEDICAL"
    assert "GE\\|MEDICAL" in render_markdown(EvaluationReport.from_json(report))


def test_key_metrics_rows_are_rounded_with_intervals_and_counts() -> None:
    rows = {row["metric"]: row for row in REPORT.key_metrics_rows()}
    assert list(rows)[: len(METRIC_NAMES)] == list(METRIC_NAMES)
    assert rows["roc_auc"] == {
        "metric": "roc_auc",
        "value": 0.912,
        "95% CI low": 0.85,
        "95% CI high": 0.967,
    }
    assert rows["tp"] == {"metric": "tp", "value": 7, "95% CI low": None, "95% CI high": None}
    assert "threshold 0.310, chosen on val" in REPORT.key_metrics_caption()
    assert REPORT.headline().startswith("model lung-nodule-cnn v3 on lung-nodules v1 test;")


def test_html_is_self_contained(images: dict[str, bytes]) -> None:
    page = render_html(REPORT, images)
    assert page.startswith("<!DOCTYPE html>")
    for name, png in images.items():
        assert f"data:image/png;base64,{base64.b64encode(png).decode()}" in page, name
        assert f'href="{name}"' in page, name
    lowered = page.lower()
    assert "http://" not in lowered and "https://" not in lowered
    assert "<script" not in lowered
    assert not re.search(r"<link\b", lowered)


def test_html_content_and_escaping(images: dict[str, bytes]) -> None:
    page = render_html(REPORT, images)
    body = page[page.index("<body>") :]
    assert body.index(NOT_A_DEVICE) < body.index("<h2>Metrics</h2>")
    assert "0.912 (0.850–0.967)" in page
    for name in METRIC_NAMES:
        assert f"<td>{name}</td>" in page, name
    assert "&lt;b&gt;mislead&lt;/b&gt;" in page
    assert "<b>mislead</b>" not in page


def test_html_rejects_non_png(images: dict[str, bytes]) -> None:
    with pytest.raises(ValueError):
        render_html(REPORT, {**images, "roc.png": b"GIF89a"})
