"""The drift report of one batch against the training data of a dataset version.

    report = build_drift_report(tables, settings.monitoring, batch=..., reference=ref)
    report.drifted_features        # the rows whose effect and test both say drift
    write_drift_report(storage, report, drift_folder(run_id))

`DriftReport` is a record (`lungcls.drift/1`): the batch (by its pseudonym, as the series
store names it), the reference dataset version and splits, the thresholds applied, counts,
and one `FeatureDrift` row per feature. It renders itself for the terminal
(`summary_lines`), the Prefect UI (`artifacts`: a Markdown table) and as a file
(`lungcls.monitor.render`: Markdown and one self-contained HTML page).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import ClassVar

import numpy as np
import pandas as pd

from lungcls.config import MonitoringSettings
from lungcls.dataset.manifest import DatasetRef
from lungcls.io.artifacts import Artifact, number, rounded
from lungcls.io.records import Part, Record
from lungcls.io.storage import Storage
from lungcls.monitor.features import (
    ACQUISITION_FEATURES,
    EMBEDDING_FEATURE,
    IMAGE_FEATURES,
    SCORE_FEATURE,
)
from lungcls.monitor.statistics import (
    PER_PATIENT,
    FeatureDrift,
    compare_continuous,
    compare_embeddings,
    compare_tables,
    judge,
)

DRIFT_DIR = "drift"
REPORT_FILES = ("drift.json", "drift.md", "drift.html")


def drift_folder(run_id: str) -> str:
    """Where a run writes its drift report: `runs/<run>/drift`."""
    return f"runs/{run_id}/{DRIFT_DIR}"


class DriftCounts(Part):
    """How many series and samples each side had. The batch's series that the reference
    already holds are left out of it (`current_in_reference`): they are not new."""

    reference_series: int
    reference_samples: int
    current_series: int
    current_samples: int
    current_in_reference: int = 0
    current_not_preprocessed: int = 0  # series whose patch could not be made (left out)


class DriftThresholds(Part):
    """The settings the rows were judged with (`monitoring.*`)."""

    max_drift: float
    drift_alpha: float
    min_values: int

    @classmethod
    def of(cls, monitoring: MonitoringSettings) -> DriftThresholds:
        return cls(
            max_drift=monitoring.max_drift,
            drift_alpha=monitoring.drift_alpha,
            min_values=monitoring.min_values,
        )


class DriftReport(Record):
    """`runs/<run>/drift/drift.json`: how a batch differs from a model's training data."""

    SCHEMA: ClassVar[str] = "lungcls.drift/1"

    created_at: str
    batch: str  # the batch's pseudonym (`batch-…`): inbox folder names can name patients
    reference: DatasetRef
    reference_splits: list[str]
    model: str | None = None  # "name vN" whose training data is the reference, if known
    thresholds: DriftThresholds
    counts: DriftCounts
    features: list[FeatureDrift]

    @property
    def drifted_features(self) -> list[FeatureDrift]:
        return [f for f in self.features if f.drifted]

    @property
    def drifted(self) -> bool:
        return any(f.drifted for f in self.features)

    @property
    def not_estimable(self) -> list[FeatureDrift]:
        return [f for f in self.features if not f.estimable]

    def verdict(self) -> str:
        """One sentence: which features drifted, with their effect sizes, or that none did."""
        drifted = self.drifted_features
        if not drifted:
            return (
                f"no drift: no feature's effect exceeds {number(self.thresholds.max_drift, 2)} "
                f"with an adjusted p-value below {self.thresholds.drift_alpha:g}"
            )
        named = ", ".join(f"{f.name} ({f.effect_name} {number(f.effect, 2)})" for f in drifted)
        return f"drift in {len(drifted)} of {len(self.features)} features: {named}"

    def summary_lines(self) -> list[str]:
        """What the CLI prints."""
        counts = self.counts
        lines = [
            f"drift of batch {self.batch} against {self.reference} "
            f"({'+'.join(self.reference_splits)}"
            + (f", the training data of {self.model}" if self.model else "")
            + ")",
            f"  series: {counts.current_series} new in the batch, {counts.reference_series} in "
            f"the reference; samples: {counts.current_samples} and {counts.reference_samples}",
            f"  {self.verdict()}",
        ]
        lines += [f"  {f.name}: {f.detail}" for f in self.drifted_features]
        if self.not_estimable:
            names = ", ".join(f.name for f in self.not_estimable)
            lines.append(f"  not estimable (fewer than {self.thresholds.min_values}): {names}")
        return lines

    def table_rows(self) -> list[dict[str, str | int | float | None]]:
        """One row per feature (the Prefect table artifact)."""
        return [
            {
                "feature": f.name,
                "group": f.group,
                "test": f.test,
                "statistic": rounded(f.statistic),
                "p (adjusted)": rounded(f.p_adjusted),
                "effect size": f.effect_name,
                "effect": rounded(f.effect),
                "drifted": "yes" if f.drifted else "no",
                "n reference": f.reference_n,
                "n batch": f.current_n,
                "detail": f.detail,
            }
            for f in self.features
        ]

    def artifacts(self, location: str | None = None) -> list[Artifact]:
        """The report as Markdown (its tables, `location`: where the HTML page is) and the
        features as one table (not estimable: empty cells)."""
        from lungcls.monitor.render import render_markdown

        markdown = render_markdown(self)
        if location:
            markdown += f"\nFull report: `{location}`\n"
        caption = f"Drift of batch {self.batch} against {self.reference}: {self.verdict()}"
        return [
            Artifact(key="drift-report", description=caption, markdown=markdown),
            Artifact.of_table("drift-features", caption, self.table_rows(), "no feature"),
        ]


@dataclass
class DriftTables:
    """The inputs of a report: acquisition features per series, image features per sample
    (columns as in `lungcls.monitor.features`, extra columns ignored), and the counts."""

    reference_series: pd.DataFrame
    current_series: pd.DataFrame
    reference_samples: pd.DataFrame
    current_samples: pd.DataFrame
    counts: DriftCounts


@dataclass(frozen=True)
class ModelScores:
    """The model's probabilities on (reference, batch): one value per patient (the mean of
    its samples) when `per_patient`, as the tables are compared (`statistics`, module doc);
    per sample for a history row written before rows kept their patients' means."""

    reference: Sequence[float]
    batch: Sequence[float]
    per_patient: bool = True


def build_drift_report(
    tables: DriftTables,
    monitoring: MonitoringSettings,
    *,
    batch: str,
    reference: DatasetRef,
    reference_splits: Sequence[str] = ("train",),
    model: str | None = None,
    scores: ModelScores | None = None,
    embeddings: tuple[np.ndarray, np.ndarray] | None = None,
    created_at: str | None = None,
) -> DriftReport:
    """Compare a batch with the reference, feature by feature (`lungcls.monitor.statistics`).

    Args:
        tables: The features of both sides (`gather_drift_tables`, or built by hand).
        monitoring: The thresholds (`settings.monitoring`).
        batch: How the report names the batch: its pseudonym, never an inbox folder name.
        reference: The dataset version whose splits are the reference.
        reference_splits: Which of its splits.
        model: The model whose training data the reference is, for the record.
        scores: The model's probabilities on (reference, batch). Score the
            reference on data the model did not fit (out-of-fold or test scores): on its
            own training samples a model is more confident, which would read as drift.
        embeddings: Penultimate-layer embeddings (samples x dimensions) of (reference,
            batch); the same caution applies.
        created_at: ISO time of the report (default: now, UTC).
    """
    least = monitoring.min_values
    rows = compare_tables(
        tables.reference_series, tables.current_series, ACQUISITION_FEATURES, monitoring
    )
    rows += compare_tables(
        tables.reference_samples, tables.current_samples, IMAGE_FEATURES, monitoring
    )
    if scores is not None:
        row = compare_continuous(SCORE_FEATURE, "model", scores.reference, scores.batch, least)
        if scores.per_patient:
            row.detail += f"; {PER_PATIENT['continuous']}"
        rows.append(row)
    if embeddings is not None:
        rows.append(compare_embeddings(EMBEDDING_FEATURE, embeddings[0], embeddings[1], least))
    return DriftReport(
        created_at=created_at or datetime.now(UTC).isoformat(timespec="seconds"),
        batch=batch,
        reference=reference,
        reference_splits=list(reference_splits),
        model=model,
        thresholds=DriftThresholds.of(monitoring),
        counts=tables.counts,
        features=judge(rows, monitoring),
    )


def write_drift_report(storage: Storage, report: DriftReport, folder: str) -> dict[str, str]:
    """Write `drift.md`, `drift.html`, then `drift.json` (last: the commit record) under
    `folder`; returns file name -> URL."""
    from lungcls.monitor.render import render_html, render_markdown

    storage.write_atomic(f"{folder}/drift.md", render_markdown(report).encode())
    storage.write_atomic(f"{folder}/drift.html", render_html(report).encode())
    report.save(storage, f"{folder}/drift.json")
    return {name: storage.url(f"{folder}/{name}") for name in REPORT_FILES}
