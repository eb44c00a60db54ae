"""Render a finished evaluation: PNG plots, a Markdown report and a self-contained HTML page.

Both text formats are written from one list of sections (`_sections`), so they never disagree.
Plots use matplotlib's object-oriented `Figure`, which renders with Agg and never registers
with pyplot: no global backend switch, and nothing is left open once the bytes are taken.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from matplotlib.figure import Figure
from sklearn.metrics import precision_recall_curve

from lungcls.evaluate.metrics import (
    ECE_BINS,
    METRIC_NAMES,
    binary_metrics,
    calibration_bins,
    roc_band,
)

NOT_A_DEVICE = "Research software, not a medical device."
PLOTS: dict[str, str] = {
    "roc.png": "ROC curve with bootstrap band",
    "pr.png": "Precision-recall curve",
    "reliability.png": "Reliability diagram",
    "scores.png": "Score distributions by class",
    "confusion.png": "Confusion matrix at the threshold",
}
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


# --- plots -----------------------------------------------------------------------------------


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    # No Software/date metadata, so equal inputs give byte-identical files.
    figure.savefig(buffer, format="png", dpi=100, metadata={"Software": None})
    return buffer.getvalue()


def _roc_plot(
    labels: np.ndarray,
    scores: np.ndarray,
    groups: Sequence[str],
    threshold: float,
    at: dict,
    rounds: int,
    seed: int,
) -> bytes:
    grid, tpr, lower, upper = roc_band(labels, scores, groups, rounds, seed)
    figure = Figure(figsize=(5, 5), layout="constrained")
    axes = figure.subplots()
    axes.fill_between(grid, lower, upper, alpha=0.25, label="95 % patient bootstrap band")
    axes.plot(grid, tpr, label=f"ROC (AUC {at['roc_auc']:.3f})")
    axes.plot([0, 1], [0, 1], linestyle="--", color="grey", label="chance")
    marker = f"at threshold {threshold:.3f}"
    axes.plot(1 - at["specificity"], at["sensitivity"], "o", color="black", label=marker)
    axes.set(
        xlabel="False positive rate (1 − specificity)",
        ylabel="Sensitivity",
        title="ROC curve",
        xlim=(0, 1),
        ylim=(0, 1.01),
    )
    axes.legend(loc="lower right")
    return _png(figure)


def _pr_plot(labels: np.ndarray, scores: np.ndarray, threshold: float, at: dict) -> bytes:
    precision, recall, _ = precision_recall_curve(labels, scores)
    figure = Figure(figsize=(5, 5), layout="constrained")
    axes = figure.subplots()
    axes.step(recall, precision, where="post", label=f"PR (AUC {at['pr_auc']:.3f})")
    axes.axhline(labels.mean(), linestyle="--", color="grey", label="prevalence")
    marker = f"at threshold {threshold:.3f}"
    axes.plot(at["sensitivity"], at["ppv"], "o", color="black", label=marker)
    axes.set(
        xlabel="Recall (sensitivity)",
        ylabel="Precision (PPV)",
        title="Precision-recall curve",
        xlim=(0, 1),
        ylim=(0, 1.01),
    )
    axes.legend(loc="lower left")
    return _png(figure)


def _reliability_plot(labels: np.ndarray, scores: np.ndarray, at: dict) -> bytes:
    mean_score, fraction_positive, count = calibration_bins(labels, scores)
    figure = Figure(figsize=(5, 6.5), layout="constrained")
    top, bottom = figure.subplots(2, 1, height_ratios=[3, 1])
    top.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect calibration")
    top.plot(mean_score, fraction_positive, "o-", label=f"model (ECE {at['ece']:.3f})")
    top.set(
        xlabel="Mean predicted probability in bin",
        ylabel="Fraction positive",
        title="Reliability diagram",
        xlim=(0, 1),
        ylim=(0, 1.02),
    )
    top.legend(loc="upper left")
    edges = np.linspace(0, 1, ECE_BINS + 1)
    bars = bottom.bar(edges[:-1], count, width=1 / ECE_BINS, align="edge", edgecolor="white")
    bottom.bar_label(bars, fontsize=8)
    bottom.margins(y=0.3)  # room for the count labels above the bars
    bottom.set(xlabel="Predicted probability (bins)", ylabel="Samples", xlim=(0, 1))
    return _png(figure)


def _score_plot(labels: np.ndarray, scores: np.ndarray, threshold: float) -> bytes:
    figure = Figure(figsize=(6, 4), layout="constrained")
    axes = figure.subplots()
    edges = np.linspace(0, 1, 21)
    axes.hist(scores[labels == 0], bins=edges, alpha=0.6, label="negative (benign)")
    axes.hist(scores[labels == 1], bins=edges, alpha=0.6, label="positive (malignant)")
    axes.axvline(threshold, color="black", linestyle="--", label=f"threshold {threshold:.3f}")
    axes.set(
        xlabel="Predicted probability of malignancy",
        ylabel="Samples",
        title="Scores by true class",
        xlim=(0, 1),
    )
    axes.legend()
    return _png(figure)


def _confusion_plot(at: dict, threshold: float) -> bytes:
    matrix = np.array([[at["tn"], at["fp"]], [at["fn"], at["tp"]]])
    figure = Figure(figsize=(4.5, 4), layout="constrained")
    axes = figure.subplots()
    axes.imshow(matrix, cmap="Blues")
    for (row, column), value in np.ndenumerate(matrix):
        # Dark cells need light text to stay readable.
        light = value > matrix.max() / 2
        axes.text(
            column,
            row,
            str(value),
            ha="center",
            va="center",
            fontsize=14,
            color="white" if light else "black",
        )
    axes.set(
        xticks=[0, 1],
        yticks=[0, 1],
        xticklabels=["negative", "positive"],
        yticklabels=["negative", "positive"],
        xlabel="Predicted",
        ylabel="Actual",
        title=f"Confusion matrix at threshold {threshold:.3f}",
    )
    return _png(figure)


def render_plots(
    labels: np.ndarray,
    scores: np.ndarray,
    groups: Sequence[str],
    threshold: float,
    rounds: int,
    seed: int,
) -> dict[str, bytes]:
    """PNG plots of one split's predictions, keyed by file name (the keys of `PLOTS`).

    Args:
        labels: True classes, 0 or 1; both must be present.
        scores: Predicted probabilities of class 1.
        groups: Patient pseudonym of each sample, used only for resampling, never drawn.
        threshold: The operating threshold marked on the plots.
        rounds: Bootstrap rounds for the ROC band.
        seed: Seed of the bootstrap.

    Returns:
        File name -> PNG bytes; equal inputs give equal bytes.
    """
    y = np.asarray(labels).astype(int)
    s = np.asarray(scores, dtype=float)
    at = binary_metrics(y, s, threshold)
    return {
        "roc.png": _roc_plot(y, s, groups, threshold, at, rounds, seed),
        "pr.png": _pr_plot(y, s, threshold, at),
        "reliability.png": _reliability_plot(y, s, at),
        "scores.png": _score_plot(y, s, threshold),
        "confusion.png": _confusion_plot(at, threshold),
    }


# --- document model shared by Markdown and HTML ----------------------------------------------


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


def _number(value: float | None, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.{digits}f}"


def _with_interval(value: float | None, interval: Sequence[float | None] | None) -> str:
    """Formats as `0.912 (0.850–0.967)`; the interval is left out when absent or undefined."""
    text = _number(value)
    if interval is None or len(interval) != 2 or "n/a" in map(_number, interval):
        return text
    return f"{text} ({_number(interval[0])}–{_number(interval[1])})"


def _versioned(entry: dict | None) -> str:
    if not entry:
        return "unknown"
    return f"{entry.get('name', 'unknown')} v{entry.get('version', '?')}"


def _block_title(key: str, block: dict) -> str:
    threshold = _number(block.get("threshold"))
    if key == "at_operating_point":
        return f"operating point (threshold {threshold})"
    return f"threshold {threshold}"


def _overview(report: dict) -> _Section:
    model = report.get("model", {})
    facts = [f"Model: {_versioned(model)}", f"Evaluated on: {_versioned(report.get('dataset'))}"]
    if "trained_on" in model:
        facts.append(f"Trained on: {_versioned(model['trained_on'])}")
    if "train_run" in model:
        facts.append(f"Training run: {model['train_run']}")
    if "created_at" in report:
        facts.append(f"Created: {report['created_at']}")
    section = _Section("Overview", [NOT_A_DEVICE, facts])
    splits = report.get("splits")
    if splits:
        section.blocks.append(
            _Table(
                ["split", "samples", "positives", "patients"],
                [
                    [
                        name,
                        *(str(split.get(k, "n/a")) for k in ("samples", "positives", "patients")),
                    ]
                    for name, split in splits.items()
                ],
            )
        )
    return section


def _operating_point(point: dict) -> _Section:
    text = f"Threshold {_number(point.get('threshold'))}"
    if "target_sensitivity" in point:
        target, where = _number(point["target_sensitivity"], 2), point.get("chosen_on", "?")
        if point.get("confidence"):
            how = (
                f": reaches sensitivity ≥ {target} in {point['confidence']:.0%} of patient "
                f"resamples of the {where} split (the highest threshold reaching it on the "
                f"split itself: {_number(point.get('val_threshold_at_target'))})"
            )
        else:
            how = f": the highest threshold reaching sensitivity ≥ {target} on the {where} split"
        text += (
            f"{how}; sensitivity {_number(point.get('val_sensitivity'))}, specificity "
            f"{_number(point.get('val_specificity'))} on validation, then applied unchanged "
            "to the evaluated samples."
        )
    return _Section("Operating point", [text])


def _metrics(blocks: dict, bootstrap: dict | None) -> list[_Section]:
    level = (bootstrap or {}).get("level", 0.95)
    names = [n for n in METRIC_NAMES if any(n in b.get("values", {}) for b in blocks.values())]
    header = ["metric", "key"] + [
        f"{_block_title(k, b)}, {level:.0%} CI" for k, b in blocks.items()
    ]
    rows = [
        [METRIC_LABELS[name], name]
        + [
            _with_interval(b.get("values", {}).get(name), b.get("ci95", {}).get(name))
            for b in blocks.values()
        ]
        for name in names
    ]
    metrics = _Section("Metrics", [_Table(header, rows, numeric_from=2)])
    if bootstrap:
        metrics.blocks.append(
            f"Intervals: {bootstrap.get('unit', 'patient')}-level percentile bootstrap, "
            f"{bootstrap.get('rounds', '?')} rounds, seed {bootstrap.get('seed', '?')}."
        )
    confusion = _Section("Confusion matrices")
    for key, block in blocks.items():
        values = block.get("values", {})
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
    return [metrics, confusion] if confusion.blocks else [metrics]


def _subgroups(rows: list[dict]) -> _Section:
    return _Section(
        "Subgroups",
        [
            "Subgroups are small: their estimates carry wide uncertainty (no intervals shown), "
            "so read differences between them as prompts for investigation, not findings.",
            _Table(
                ["attribute", "value", "n", "positives", "sensitivity", "specificity", "ROC AUC"],
                [
                    [
                        str(r.get("attribute")),
                        str(r.get("value")),
                        str(r.get("n")),
                        str(r.get("positives")),
                        _number(r.get("sensitivity")),
                        _number(r.get("specificity")),
                        _number(r.get("roc_auc")),
                    ]
                    for r in rows
                ],
                numeric_from=2,
            ),
        ],
    )


def _contracts(contracts: dict) -> _Section:
    return _Section(
        "Data contracts",
        [
            "Contracts the evaluated dataset version was checked against.",
            _Table(
                ["contract", "version", "rows", "rows rejected"],
                [
                    [
                        name,
                        *(str(entry.get(k, "n/a")) for k in ("version", "rows", "rows_rejected")),
                    ]
                    for name, entry in contracts.items()
                ],
            ),
        ],
    )


def _model_card(card: dict) -> _Section:
    section = _Section("Model card")
    for key, value in card.items():
        label = key.replace("_", " ").capitalize()
        if isinstance(value, list):
            section.blocks += [f"{label}:", [str(item) for item in value]]
        else:
            section.blocks.append(f"{label}: {value}")
    return section


def _title(report: dict) -> str:
    return f"Evaluation of {_versioned(report.get('model'))} on {_versioned(report.get('dataset'))}"


def _sections(report: dict) -> list[_Section]:
    sections = [_overview(report)]
    if report.get("operating_point"):
        sections.append(_operating_point(report["operating_point"]))
    if report.get("metrics"):
        sections += _metrics(report["metrics"], report.get("bootstrap"))
    if report.get("subgroups"):
        sections.append(_subgroups(report["subgroups"]))
    if report.get("contracts"):
        sections.append(_contracts(report["contracts"]))
    if report.get("model_card"):
        sections.append(_model_card(report["model_card"]))
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


def render_markdown(report: dict) -> str:
    """The evaluation report as Markdown, linking the plots written beside it.

    Args:
        report: The evaluation dict (schema `lungcls.evaluation/1`); optional parts may be
            missing.

    Returns:
        Markdown text ending in a newline.
    """
    parts = [f"# {_title(report)}"]
    for section in _sections(report):
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


def render_html(report: dict, images: dict[str, bytes]) -> str:
    """The evaluation report as one self-contained HTML page.

    Styles are inline and every image is embedded as a data URI, so the page shows everything
    offline; each image also links to its PNG file written beside report.html. A Content
    Security Policy forbids loading anything else.

    Args:
        report: The evaluation dict (schema `lungcls.evaluation/1`); optional parts may be
            missing.
        images: File name -> PNG bytes, e.g. from `render_plots`.

    Returns:
        The HTML document.
    """
    title = html.escape(_title(report))
    body = [f"<h1>{title}</h1>"]
    for section in _sections(report):
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
