"""The drift report as documents: Markdown (`drift.md`, also the Prefect artifact) and one
self-contained HTML page (`drift.html`).

Both are written from one list of sections, with the section model, block renderers and
style of the evaluation report (`lungcls.evaluate.render`), so the two reports look alike
and the formats never disagree. A feature too thin to compare says "not estimable" with its
counts, never a number.
"""

from __future__ import annotations

import html

from lungcls.evaluate.render import (
    _STYLE,
    NOT_A_DEVICE,
    _html_block,
    _markdown_block,
    _Section,
    _Table,
)
from lungcls.io.artifacts import number
from lungcls.monitor.report import DriftReport
from lungcls.monitor.statistics import TESTS

_GROUP_TITLES = {
    "acquisition": "Acquisition (DICOM metadata, per series)",
    "image": "Image statistics (the model's input, per sample)",
    "model": "Model (scores and embeddings, per sample)",
}
_HEADER = ["feature", "test", "statistic", "p (adj.)", "effect", "drifted", "n ref / batch"]


def _title(report: DriftReport) -> str:
    return f"Drift of batch {report.batch} against {report.reference}"


def _overview(report: DriftReport) -> _Section:
    counts, limits = report.counts, report.thresholds
    reference = f"{report.reference} ({', '.join(report.reference_splits)})"
    if report.model:
        reference += f", the training data of {report.model}"
    facts = [
        f"Batch: {report.batch} (its pseudonym)",
        f"Reference: {reference}",
        f"Series: {counts.current_series} new in the batch, {counts.reference_series} in the "
        f"reference; samples: {counts.current_samples} and {counts.reference_samples}",
        f"Created: {report.created_at}",
    ]
    if counts.current_in_reference:
        facts.append(
            f"Left out: {counts.current_in_reference} series of the batch already in the reference"
        )
    if counts.current_not_preprocessed:
        facts.append(
            f"Left out of the image statistics: {counts.current_not_preprocessed} series "
            "whose patch could not be made"
        )
    rule = (
        f"A feature counts as drifted when its effect size exceeds "
        f"{number(limits.max_drift, 2)} (monitoring.max_drift) and its test's p-value, "
        f"Benjamini–Hochberg adjusted over the features, is below {limits.drift_alpha:g} "
        f"(monitoring.drift_alpha). A feature with fewer than {limits.min_values} values on "
        "a side is not estimable."
    )
    return _Section("Overview", [NOT_A_DEVICE, facts, report.verdict() + ".", rule])


def _methods() -> _Section:
    items = [f"{kind}: {test}; effect {effect}" for kind, (test, effect) in TESTS.items()]
    return _Section(
        "Tests and effect sizes",
        [
            items,
            "PSI: population stability index of the category shares (floored at 1e-4). "
            "Wasserstein distance divided by the reference's standard deviation (at least 1 % "
            "of its mean magnitude). Domain classifier: out-of-fold ROC AUC of a logistic "
            "regression telling reference from batch; 2·(AUC − 0.5) is 0 when it cannot.",
        ],
    )


def _feature_rows(report: DriftReport, group: str) -> list[list[str]]:
    rows = []
    for f in report.features:
        if f.group != group:
            continue
        effect = f"{f.effect_name} {number(f.effect)}" if f.estimable else "not estimable"
        rows.append(
            [
                f.name,
                f.test,
                number(f.statistic),
                number(f.p_adjusted, 4),
                effect,
                "DRIFT" if f.drifted else "no",
                f"{f.reference_n} / {f.current_n}",
            ]
        )
    return rows


def _sections(report: DriftReport) -> list[_Section]:
    sections = [_overview(report)]
    for group, title in _GROUP_TITLES.items():
        rows = _feature_rows(report, group)
        if not rows:
            continue
        details = [f"{f.name}: {f.detail}" for f in report.features if f.group == group]
        sections.append(_Section(title, [_Table(_HEADER, rows, numeric_from=2), details]))
    sections.append(_methods())
    return sections


def render_markdown(report: DriftReport) -> str:
    """The drift report as Markdown, ending in a newline."""
    parts = [f"# {_title(report)}"]
    for section in _sections(report):
        parts.append(f"## {section.title}")
        parts += [_markdown_block(block) for block in section.blocks]
    return "\n\n".join(parts) + "\n"


def render_html(report: DriftReport) -> str:
    """The drift report as one self-contained HTML page (inline style; a Content Security
    Policy forbids loading anything)."""
    title = html.escape(_title(report))
    body = [f"<h1>{title}</h1>"]
    for section in _sections(report):
        body.append(f"<h2>{html.escape(section.title)}</h2>")
        body += [_html_block(block) for block in section.blocks]
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta http-equiv="Content-Security-Policy" '
        "content=\"default-src 'none'; style-src 'unsafe-inline'\">\n"
        f"<title>{title}</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n"
        + "\n".join(body)
        + "\n</body>\n</html>\n"
    )
