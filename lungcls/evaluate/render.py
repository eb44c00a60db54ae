"""The evaluation report as documents: Markdown (`report.md`, also the Prefect artifact) and
one self-contained HTML page (`report.html`).

Both formats are written from one list of sections (`_sections`) built from the typed
`EvaluationReport`, so they never disagree. A number the samples cannot support is written
"not estimable (needs N more patients with cancer)", never as a number.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from dataclasses import dataclass, field

from lungcls.dataset.manifest import ContractSummary
from lungcls.evaluate.metrics import ECE_BINS, METRIC_NAMES
from lungcls.evaluate.plots import PLOTS
from lungcls.evaluate.report import (
    BootstrapSettings,
    ClassSupport,
    CrossValidationSummary,
    EvaluationReport,
    MetricsAtThresholds,
    MetricsBlock,
    ModelCard,
    OperatingPoint,
    SubgroupRow,
)
from lungcls.io.artifacts import number

NOT_A_DEVICE = "Research software, not a medical device."
METRIC_LABELS: dict[str, str] = {
    "accuracy": "Accuracy",
    "sensitivity": "Sensitivity (recall)",
    "specificity": "Specificity",
    "ppv": "PPV (precision)",
    "npv": "NPV",
    "f1": "F1",
    "balanced_accuracy": "Balanced accuracy",
    "roc_auc": "ROC AUC",
    "pr_auc": "PR AUC (average precision)",
    "brier": "Brier score (lower is better)",
    "ece": f"ECE, {ECE_BINS} bins (lower is better)",
}
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 60rem; margin: 2rem auto;
       padding: 0 1rem; color: #1a1a1a; line-height: 1.45; }
h1 { font-size: 1.6rem; } h2 { border-bottom: 1px solid #ccc; margin-top: 2rem; }
table { border-collapse: collapse; margin: 0.8rem 0; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.6rem; text-align: left; }
th { background: #f2f2f2; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.note { background: #fff4d6; border-left: 4px solid #e0a800; padding: 0.5rem 0.8rem; }
figure { display: inline-block; margin: 0.5rem; vertical-align: top; }
figure img { max-width: 28rem; border: 1px solid #ddd; }
"""


@dataclass
class _Table:
    """A table of preformatted cells."""

    header: list[str]
    rows: list[list[str]]
    numeric_from: int = 1  # columns from here on are right-aligned in HTML


@dataclass
class _Section:
    """A titled run of paragraphs (str), tables and bullet lists (list of str)."""

    title: str
    blocks: list[str | _Table | list[str]] = field(default_factory=list)


def _with_interval(
    value: float | None,
    interval: Sequence[float | None] | None,
    not_estimable: str | None = None,
) -> str:
    """Formats as `0.912 (0.850–0.967)`. An undefined value or interval is left out, or, with
    `not_estimable` (why, from `ClassSupport.not_estimable`), said to be not estimable."""
    text = number(value)
    if value is None and not_estimable:
        return not_estimable
    if interval is None or len(interval) != 2 or "n/a" in map(number, interval):
        return f"{text}; interval {not_estimable}" if not_estimable else text
    return f"{text} ({number(interval[0])}–{number(interval[1])})"


def _reason(support: ClassSupport | None, metric: str) -> str | None:
    return support.not_estimable(metric) if support else None


def _block_title(key: str, block: MetricsBlock) -> str:
    threshold = number(block.threshold)
    if key == "at_operating_point":
        return f"operating point (threshold {threshold})"
    return f"threshold {threshold}"


def _overview(report: EvaluationReport) -> _Section:
    model = report.model
    facts = [
        f"Model: {model.name} v{model.version}",
        f"Evaluated on: {report.dataset}",
        f"Trained on: {model.trained_on}",
        f"Training run: {model.train_run}",
        f"Created: {report.created_at}",
    ]
    section = _Section("Overview", [NOT_A_DEVICE, facts])
    if report.splits:
        rows = [
            [name, str(split.samples), str(split.positives), str(split.patients)]
            for name, split in report.splits.items()
        ]
        section.blocks.append(_Table(["split", "samples", "positives", "patients"], rows))
    return section


def _operating_point(point: OperatingPoint) -> _Section:
    target, where = number(point.target_sensitivity, 2), point.chosen_on
    if point.confidence:
        how = (
            f": reaches sensitivity ≥ {target} in {point.confidence:.0%} of patient "
            f"resamples of the {where} split (the highest threshold reaching it on the "
            f"split itself: {number(point.val_threshold_at_target)})"
        )
    else:
        how = f": the highest threshold reaching sensitivity ≥ {target} on the {where} split"
    text = (
        f"Threshold {number(point.threshold)}{how}; sensitivity "
        f"{number(point.val_sensitivity)}, specificity {number(point.val_specificity)} on "
        "validation, then applied unchanged to the evaluated samples."
    )
    return _Section("Operating point", [text])


def _blocks(metrics: MetricsAtThresholds) -> dict[str, MetricsBlock]:
    return {"at_0.5": metrics.at_half, "at_operating_point": metrics.at_operating_point}


def _metrics(
    metrics: MetricsAtThresholds, bootstrap: BootstrapSettings, support: ClassSupport | None
) -> list[_Section]:
    blocks = _blocks(metrics)
    names = [n for n in METRIC_NAMES if any(n in b.values for b in blocks.values())]
    header = ["metric", "key"] + [
        f"{_block_title(k, b)}, {bootstrap.level:.0%} CI" for k, b in blocks.items()
    ]
    rows = [
        [METRIC_LABELS[name], name]
        + [
            _with_interval(b.values.get(name), b.ci95.get(name), _reason(support, name))
            for b in blocks.values()
        ]
        for name in names
    ]
    table = _Section("Metrics", [_Table(header, rows, numeric_from=2)])
    if support is not None and not support.estimable:
        table.blocks.insert(
            0,
            f"Too few patients: the evaluated samples hold {support.counts()}; intervals of "
            f"metrics measured on the short class are {support.not_estimable()}.",
        )
    table.blocks.append(
        f"Intervals: {bootstrap.unit}-level percentile bootstrap, {bootstrap.rounds} rounds, "
        f"seed {bootstrap.seed}."
    )
    confusion = _Section("Confusion matrices")
    for key, block in blocks.items():
        values = block.values
        if not {"tp", "fp", "tn", "fn"} <= set(values):
            continue
        confusion.blocks += [
            f"At {_block_title(key, block)}:",
            _Table(
                ["", "predicted negative", "predicted positive"],
                [
                    ["actual negative", str(values["tn"]), str(values["fp"])],
                    ["actual positive", str(values["fn"]), str(values["tp"])],
                ],
            ),
        ]
    return [table, confusion] if confusion.blocks else [table]


def _cross_validation(cv: CrossValidationSummary, spread_limit: float | None) -> _Section:
    header = ["fold", "patients", "positives", "negatives", "ROC AUC", "best epoch"]
    rows = [
        [str(c) for c in (f.fold, f.patients, f.positives, f.negatives)]
        + [number(f.roc_auc), str(f.best_epoch)]
        for f in cv.folds
    ]
    spread = number(cv.spread) if cv.spread is not None else f"not estimable: {cv.why_no_spread()}"
    summary = (
        f"Spread of the fold ROC AUCs (max − min): {spread}. Pooled out-of-fold ROC AUC "
        f"(patient bootstrap 95 % CI): {_with_interval(cv.oof_roc_auc, cv.oof_roc_auc_ci95)}."
    )
    section = _Section(
        "Cross-validation",
        [
            "Patient-grouped folds over train and validation, each fold's model scored on "
            "patients it never saw; n/a: a fold without both classes.",
            _Table(header, rows),
            summary,
        ],
    )
    section.blocks += filter(None, [cv.disagreement(spread_limit)])
    return section


def _subgroups(rows: list[SubgroupRow]) -> _Section:
    header = ["attribute", "value", "n", "positives", "sensitivity", "specificity", "ROC AUC"]
    cells = [
        [
            r.attribute,
            r.value,
            str(r.n),
            str(r.positives),
            number(r.sensitivity),
            number(r.specificity),
            number(r.roc_auc),
        ]
        for r in rows
    ]
    return _Section(
        "Subgroups",
        [
            "Subgroups are small: their estimates carry wide uncertainty (no intervals shown), "
            "so read differences between them as prompts for investigation, not findings.",
            _Table(header, cells, numeric_from=2),
        ],
    )


def _contracts(contracts: dict[str, ContractSummary]) -> _Section:
    rows = [
        [name, entry.version, str(entry.rows), str(entry.rows_rejected)]
        for name, entry in contracts.items()
    ]
    return _Section(
        "Data contracts",
        [
            "Contracts the evaluated dataset version was checked against.",
            _Table(["contract", "version", "rows", "rows rejected"], rows),
        ],
    )


def _model_card(card: ModelCard) -> _Section:
    section = _Section("Model card")
    for key in type(card).model_fields:
        label, value = key.replace("_", " ").capitalize(), getattr(card, key)
        if isinstance(value, list):
            section.blocks += [f"{label}:", [str(item) for item in value]]
        else:
            section.blocks.append(f"{label}: {value}")
    return section


def _title(report: EvaluationReport) -> str:
    model = report.model
    return f"Evaluation of {model.name} v{model.version} on {report.dataset}"


def _sections(report: EvaluationReport, fold_spread_limit: float | None) -> list[_Section]:
    sections = [_overview(report), _operating_point(report.operating_point)]
    sections += _metrics(report.metrics, report.bootstrap, report.class_support)
    if report.cross_validation is not None:
        sections.append(_cross_validation(report.cross_validation, fold_spread_limit))
    if report.subgroups:
        sections.append(_subgroups(report.subgroups))
    if report.contracts:
        sections.append(_contracts(report.contracts))
    sections.append(_model_card(report.model_card))
    return sections


# --- Markdown --------------------------------------------------------------------------------


def _markdown_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _markdown_block(block: str | _Table | list[str]) -> str:
    if isinstance(block, _Table):
        lines = [
            "| " + " | ".join(map(_markdown_cell, block.header)) + " |",
            "| "
            + " | ".join(
                "---:" if i >= block.numeric_from else "---" for i in range(len(block.header))
            )
            + " |",
        ]
        lines += ["| " + " | ".join(map(_markdown_cell, row)) + " |" for row in block.rows]
        return "\n".join(lines)
    if isinstance(block, list):
        return "\n".join(f"- {item}" for item in block)
    if block == NOT_A_DEVICE:
        return f"> **{block}**"
    return block


def render_markdown(report: EvaluationReport, fold_spread_limit: float | None = None) -> str:
    """The evaluation report as Markdown, linking the plots written beside it.

    Args:
        report: The evaluation report.
        fold_spread_limit: Spread of the folds' ROC AUCs above which the report says they
            disagree (`promotion.max_fold_spread`; None: `DEFAULT_FOLD_SPREAD_LIMIT`).

    Returns:
        Markdown text ending in a newline.
    """
    parts = [f"# {_title(report)}"]
    for section in _sections(report, fold_spread_limit):
        parts.append(f"## {section.title}")
        parts += [_markdown_block(block) for block in section.blocks]
    parts.append("## Plots")
    parts.append("\n".join(f"- [{caption}]({name})" for name, caption in PLOTS.items()))
    return "\n\n".join(parts) + "\n"


# --- HTML ------------------------------------------------------------------------------------


def _html_block(block: str | _Table | list[str]) -> str:
    escape = html.escape
    if isinstance(block, _Table):
        head = "".join(f"<th>{escape(cell)}</th>" for cell in block.header)
        body = "".join(
            "<tr>"
            + "".join(
                f'<td class="num">{escape(cell)}</td>'
                if i >= block.numeric_from
                else f"<td>{escape(cell)}</td>"
                for i, cell in enumerate(row)
            )
            + "</tr>"
            for row in block.rows
        )
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    if isinstance(block, list):
        return "<ul>" + "".join(f"<li>{escape(item)}</li>" for item in block) + "</ul>"
    if block == NOT_A_DEVICE:
        return f'<p class="note"><strong>{escape(block)}</strong></p>'
    return f"<p>{escape(block)}</p>"


def _figure(name: str, png: bytes) -> str:
    if not png.startswith(_PNG_SIGNATURE):
        raise ValueError(f"image {name!r} is not a PNG")
    caption = html.escape(PLOTS.get(name, name))
    href = html.escape(name, quote=True)
    data = base64.b64encode(png).decode("ascii")
    return (
        f'<figure><a href="{href}"><img src="data:image/png;base64,{data}" alt="{caption}">'
        f'</a><figcaption>{caption} (<a href="{href}">{html.escape(name)}</a>)</figcaption>'
        f"</figure>"
    )


def render_html(
    report: EvaluationReport, images: dict[str, bytes], fold_spread_limit: float | None = None
) -> str:
    """The evaluation report as one self-contained HTML page.

    Styles are inline and every image is embedded as a data URI, so the page shows everything
    offline; each image also links to its PNG file written beside report.html. A Content
    Security Policy forbids loading anything else.

    Args:
        report: The evaluation report.
        images: File name -> PNG bytes, e.g. from `render_plots`.
        fold_spread_limit: As for `render_markdown`.

    Returns:
        The HTML document.
    """
    title = html.escape(_title(report))
    body = [f"<h1>{title}</h1>"]
    for section in _sections(report, fold_spread_limit):
        body.append(f"<h2>{html.escape(section.title)}</h2>")
        body += [_html_block(block) for block in section.blocks]
    if images:
        body.append("<h2>Plots</h2>")
        body += [_figure(name, png) for name, png in images.items()]
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta http-equiv="Content-Security-Policy" '
        "content=\"default-src 'none'; img-src data:; style-src 'unsafe-inline'\">\n"
        f"<title>{title}</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n"
        + "\n".join(body)
        + "\n</body>\n</html>\n"
    )
