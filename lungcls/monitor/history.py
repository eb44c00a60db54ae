"""The history of a model's batch evaluations as a table and a plot, derived from the rows.

    write_history(storage, "lung-nodule-cnn")   # monitoring/<model>/history.md, history.png
    history_artifacts(storage, "lung-nodule-cnn")   # the same for the Prefect UI

The rows (`monitoring/<model>/batches/*.json`) are immutable; these files are views of
them, rewritten whole after each new row, so a lost or stale view is remade by writing it
again. The renderers return text and bytes; only `write_history` writes.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from lungcls.evaluate.render import NOT_A_DEVICE, _markdown_block, _Table
from lungcls.io.artifacts import Artifact
from lungcls.io.storage import Storage
from lungcls.monitor.batch_evaluation import BatchEvaluation, monitoring_dir, read_batch_history

HISTORY_FILES = ("history.md", "history.png")
_SHORT = 14  # characters of a batch pseudonym on the plot's axis ("batch-" + 8 hex)


def history_rows(rows: Sequence[BatchEvaluation]) -> list[dict[str, str | int | None]]:
    """One table row per batch evaluation, oldest first."""
    return [row.table_row() for row in rows]


def history_lines(rows: Sequence[BatchEvaluation]) -> list[str]:
    """The history as an aligned text table (what `lungcls monitor` prints)."""
    if not rows:
        return ["no batch evaluated yet"]
    table = history_rows(rows)
    header = list(table[0])
    cells = [header, *([str(r[c]) for c in header] for r in table)]
    widths = [max(len(line[i]) for line in cells) for i in range(len(header))]
    return [
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in cells
    ]


def render_history_markdown(model: str, rows: Sequence[BatchEvaluation]) -> str:
    """`history.md`: what the rows mean, then one row per batch evaluation."""
    parts = [f"# The champion of {model} on each new batch", NOT_A_DEVICE]
    parts.append(
        "Each row is an external test: the model in service scored a batch's new series "
        "before they joined training, with its own calibration and operating point "
        "(nothing fitted on the batch) and without the series it trained or validated on. "
        "Intervals: 95 % patient bootstrap. A metric whose classes have too few patients "
        "says what is missing instead of a number. An alert is raised when the ROC AUC "
        "point estimate is below monitoring.min_batch_auc."
    )
    if not rows:
        parts.append("No batch evaluated yet.")
        return "\n\n".join(parts) + "\n"
    table = history_rows(rows)
    header = list(table[0])
    body = [[str(r[c]) for c in header] for r in table]
    parts.append(_markdown_block(_Table(header, body, numeric_from=len(header))))
    reference = [
        f"v{r.model_version}: internal test ROC AUC "
        + ("n/a" if r.internal_test_auc is None else f"{r.internal_test_auc:.3f}")
        for r in _first_of_each_version(rows)
    ]
    parts += ["The champions' own test split, for reference:", _markdown_block(reference)]
    return "\n\n".join(parts) + "\n"


def _first_of_each_version(rows: Sequence[BatchEvaluation]) -> list[BatchEvaluation]:
    seen: dict[int, BatchEvaluation] = {}
    for row in rows:
        seen.setdefault(row.model_version, row)
    return list(seen.values())


def _segments(rows: Sequence[BatchEvaluation]) -> list[tuple[int, int]]:
    """(first, last) index of each run of rows scored by one champion version."""
    starts = [
        i for i in range(len(rows)) if i == 0 or rows[i].model_version != rows[i - 1].model_version
    ]
    return [
        (s, (starts[k + 1] if k + 1 < len(starts) else len(rows)) - 1) for k, s in enumerate(starts)
    ]


def render_history_plot(model: str, rows: Sequence[BatchEvaluation]) -> bytes:
    """`history.png`: the ROC AUC on each batch with its 95 % CI, the champion's internal
    test AUC as a reference line per champion version (a dotted line where it changed), and
    the alert line (`monitoring.min_batch_auc`). Equal rows give equal bytes."""
    figure = Figure(figsize=(max(8.0, 0.7 * len(rows) + 5.0), 4.5), layout="constrained")
    axes = figure.subplots()
    axes.set(ylim=(0.0, 1.1), ylabel="ROC AUC", title=f"{model}: the champion on each new batch")
    if not rows:
        axes.text(0.5, 0.5, "no batch evaluated yet", ha="center", transform=axes.transAxes)
        axes.set(xticks=[])
        return _png(figure)
    x = np.arange(len(rows))
    shown = [i for i, r in enumerate(rows) if r.roc_auc.value is not None]
    values = np.array([rows[i].roc_auc.value for i in shown], dtype=float)
    low = np.array([_or(rows[i].roc_auc.ci95[0], v) for i, v in zip(shown, values, strict=True)])
    high = np.array([_or(rows[i].roc_auc.ci95[1], v) for i, v in zip(shown, values, strict=True)])
    if shown:
        axes.errorbar(
            shown,
            values,
            yerr=[values - low, high - values],
            fmt="o",
            capsize=4,
            color="C0",
            label="ROC AUC on the batch (95 % CI)",
        )
    alerted = [i for i in shown if rows[i].alerts]
    if alerted:
        axes.plot(
            alerted,
            [rows[i].roc_auc.value for i in alerted],
            "o",
            color="C3",
            markersize=9,
            fillstyle="none",
            label="alert",
        )
    missing = [i for i, r in enumerate(rows) if r.roc_auc.value is None]
    if missing:
        axes.plot(missing, [0.03] * len(missing), "x", color="grey", label="not estimable")
    _draw_champion_references(axes, rows)
    axes.axhline(
        rows[-1].min_batch_auc,
        color="C3",
        linestyle=":",
        linewidth=1,
        label=f"alert below {rows[-1].min_batch_auc:.2f}",
    )
    axes.set_xticks(
        x, [f"{r.seq}\n{r.batch[:_SHORT]}\n{r.created_at[:10]}" for r in rows], fontsize=7
    )
    axes.set(xlim=(-0.6, len(rows) - 0.4), xlabel="batch (oldest first)")
    axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    return _png(figure)


def _draw_champion_references(axes: Axes, rows: Sequence[BatchEvaluation]) -> None:
    """Per champion version: its internal test AUC as a dashed line over its batches, a
    dotted line where the champion changed, and its version above them."""
    labelled = False
    for first, last in _segments(rows):
        reference = rows[first].internal_test_auc
        if reference is not None:
            axes.hlines(
                reference,
                first - 0.4,
                last + 0.4,
                colors="C2",
                linestyles="--",
                label=None if labelled else "champion's internal test AUC (its own test split)",
            )
            labelled = True
        if first > 0:
            axes.axvline(first - 0.5, color="grey", linestyle=":")
        axes.text(first - 0.45, 1.05, f"champion v{rows[first].model_version}", color="grey")


def _or(value: float | None, default: float) -> float:
    return default if value is None else value


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    # No Software/date metadata, so equal rows give byte-identical files.
    figure.savefig(buffer, format="png", dpi=100, metadata={"Software": None})
    return buffer.getvalue()


def write_history(storage: Storage, model: str) -> dict[str, str]:
    """Rewrite `history.md` and `history.png` from the committed rows; file -> URL."""
    rows = read_batch_history(storage, model)
    folder = monitoring_dir(model)
    storage.write_atomic(f"{folder}/history.png", render_history_plot(model, rows))
    storage.write_atomic(f"{folder}/history.md", render_history_markdown(model, rows).encode())
    return {name: storage.url(f"{folder}/{name}") for name in HISTORY_FILES}


def history_artifacts(storage: Storage, model: str) -> list[Artifact]:
    """The history for the Prefect UI: Markdown with the plot inline (a data URI: the UI
    cannot reach the storage root) and the table."""
    rows = read_batch_history(storage, model)
    plot = base64.b64encode(render_history_plot(model, rows)).decode()
    location = storage.url(f"{monitoring_dir(model)}/history.md")
    markdown = (
        render_history_markdown(model, rows)
        + f"\n![ROC AUC per batch](data:image/png;base64,{plot})\n\nFiles: `{location}`\n"
    )
    caption = f"The champion of {model} on {len(rows)} new batch(es)"
    alerts = [r for r in rows if r.alerts]
    if alerts:
        caption += f"; latest alert on batch {alerts[-1].batch}: {'; '.join(alerts[-1].alerts)}"
    return [
        Artifact(key="batch-history", description=caption, markdown=markdown),
        Artifact.of_table("batch-history-table", caption, history_rows(rows), "no batch yet"),
    ]
