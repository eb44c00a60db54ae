"""Every new labelled batch as an external test of the champion, before it joins training.

    row = evaluate_batch(settings, "later-001")   # one row of monitoring/<model>/batches/
    row.alerts                                    # e.g. the batch's AUC below min_batch_auc

The champion (alias `champion` of `model.name`) scores the batch's new series: those the
ledger records as ingested from `inbox/<batch>/`, less erased ones and less any series of
its dataset version's train and val splits (what it trained and chose its epoch on). Each
series is preprocessed as the drift report does (`monitor.gather.batch_patches`: the
version's own preprocessing, centred on the labelled nodule, else on the lung), scored,
and calibrated and thresholded as in the champion's evaluation on its own dataset: nothing
is fitted on the batch, as `lungcls evaluate --dataset` does for an external dataset. The
metrics are the evaluation's (`_metrics_at`: point estimates from scikit-learn, patient-
bootstrap intervals); a metric whose classes have fewer patients than
`evaluation.min_patients_per_class` is not estimable, with the patients missing, never a
number. Scored series without a label count in the score distribution only.

The row is committed once per batch and champion version (`batch_evaluation`); evaluating
again returns it. The history's plot and table are rewritten after each new row.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import pandas as pd
import torch

from lungcls.config import Settings
from lungcls.dataset.labelling import apply_labels, nodule_center
from lungcls.dataset.manifest import Manifest, load_manifest
from lungcls.evaluate.calibration import calibrate
from lungcls.evaluate.evaluation import _metrics_at, _seen_series, evaluate_model
from lungcls.evaluate.metrics import METRIC_CLASSES
from lungcls.evaluate.report import Calibration, ClassSupport, EvaluationReport, MetricsBlock
from lungcls.evaluate.store import latest_report, load_scores
from lungcls.ingest.deid import pseudonym_key
from lungcls.ingest.label_table import batch_pseudonym, current_labels
from lungcls.ingest.ledger import Ledger
from lungcls.io.runs import new_run_id
from lungcls.io.storage import Storage
from lungcls.monitor.batch_evaluation import (
    BatchCounts,
    BatchEvaluation,
    BatchMetric,
    MonitoringError,
    commit_batch_evaluation,
    find_batch_evaluation,
)
from lungcls.monitor.gather import batch_patches, ingested_batch
from lungcls.monitor.report import ModelScores
from lungcls.registry.records import ModelRecord
from lungcls.registry.store import load_model, load_record

log = logging.getLogger(__name__)

SCORING_BATCH = 32  # patches per forward pass
NO_LABELS = "not estimable (no labelled sample)"


def champion_record(storage: Storage, name: str) -> ModelRecord:
    """The model version the alias `champion` of `name` points at."""
    from lungcls.registry.aliases import read_alias
    from lungcls.registry.promote import CHAMPION

    state = read_alias(storage, name, CHAMPION)
    if state.version is None:
        raise MonitoringError(
            f"model {name!r} has no champion yet, so no model is in service to evaluate a "
            "batch with: promote a model first (`lungcls promote`)"
        )
    return load_record(storage, name, state.version)


def champion_evaluation(settings: Settings, record: ModelRecord) -> EvaluationReport:
    """The model's evaluation on its own dataset (its calibration and operating point);
    made now when a champion was set without one."""
    storage = Storage.from_settings(settings)
    report = latest_report(storage, record, record.dataset)
    return report or evaluate_model(settings, record.name, record.version).report


def forward_in_chunks(
    network: Callable[[torch.Tensor], torch.Tensor], patches: Iterable[np.ndarray]
) -> Iterator[torch.Tensor]:
    """`network` on the patches, `SCORING_BATCH` at a time and without gradients (a few
    patches in memory): one output tensor per chunk, in order."""
    chunk: list[np.ndarray] = []
    for patch in patches:
        chunk.append(patch)
        if len(chunk) == SCORING_BATCH:
            yield _forward(network, chunk)
            chunk = []
    if chunk:
        yield _forward(network, chunk)


def _forward(
    network: Callable[[torch.Tensor], torch.Tensor], chunk: list[np.ndarray]
) -> torch.Tensor:
    with torch.no_grad():
        return network(torch.from_numpy(np.stack(chunk).astype(np.float32)))


def _raw_scores(model: torch.nn.Module, patches: Iterable[tuple[str, np.ndarray]]) -> pd.Series:
    """The network's probability of each patch, by series id, a few patches in memory."""
    ids: list[str] = []

    def tensors() -> Iterator[np.ndarray]:
        for series_id, patch in patches:
            ids.append(series_id)
            yield patch

    scores = [
        float(s)
        for logits in forward_in_chunks(model, tensors())
        for s in torch.sigmoid(logits).reshape(-1)
    ]
    return pd.Series(scores, index=ids, dtype=float)


@dataclass
class UnseenSeries:
    """A batch's series as the champion meets them: those the ledger records as ingested
    from the batch (erased ones aside), which of them it trained or chose its epoch on, and
    the others with their labels; and what cutting their patches needs."""

    in_batch: set[str]
    seen: set[str]
    labelled: pd.DataFrame  # the unseen series, labels applied (none: no row)
    ledger: Ledger
    manifest: Manifest  # the champion's dataset version (its preprocessing)

    def centers(self) -> dict[str, tuple[float, float, float] | None]:
        """Series id -> where its patch is cut (the labelled nodule, else None: the lung)."""
        return {row.series_id: nodule_center(row) for row in self.labelled.itertuples(index=False)}


def unseen_series(storage: Storage, record: ModelRecord, batch: str) -> UnseenSeries:
    """The series of inbox batch `batch` that `record` did not see (see `UnseenSeries`).

    Raises:
        MonitoringError: The batch has no ingested series.
    """
    ledger, frame, in_batch = ingested_batch(storage, batch, MonitoringError)
    seen = _seen_series(storage, record.dataset)
    unseen = frame[frame["series_id"].isin(in_batch - seen)]
    labelled = apply_labels(unseen, current_labels(storage)) if len(unseen) else unseen
    manifest = load_manifest(storage, record.dataset.name, record.dataset.version)
    return UnseenSeries(in_batch, seen & in_batch, labelled, ledger, manifest)


def score_batch(
    settings: Settings, record: ModelRecord, batch: str, calibration: Calibration
) -> tuple[pd.DataFrame, BatchCounts]:
    """The batch's unseen series scored by `record`: one row per scored series (series_id,
    patient_id, label (nullable), raw_score, score calibrated), and the counts.

    Raises:
        MonitoringError: The batch has no ingested series, none the model did not see, or
            none whose patch could be made.
    """
    storage = Storage.from_settings(settings)
    series = unseen_series(storage, record, batch)
    in_batch, seen, labelled = series.in_batch, series.seen, series.labelled
    if labelled.empty:
        raise MonitoringError(
            f"every series of batch {batch!r} is in the training or validation data of "
            f"{record.name} v{record.version}: nothing it has not seen to evaluate it on"
        )
    failed: list[str] = []
    patches = batch_patches(storage, series.ledger, series.centers(), series.manifest, failed)
    raw = _raw_scores(load_model(storage, record), patches)
    if failed:
        log.warning("monitor: %d series of the batch could not be preprocessed", len(failed))
    if raw.empty:
        raise MonitoringError(
            f"none of the {len(labelled)} unseen series of batch {batch!r} could be "
            f"preprocessed ({', '.join(sorted(set(failed)))}): nothing to score"
        )
    scored = labelled.set_index("series_id").loc[raw.index]
    frame = pd.DataFrame(
        {
            "series_id": raw.index,
            "patient_id": scored["patient_id"].to_numpy(),
            "label": pd.array(scored["label"].to_numpy(), dtype="Int64"),
            "raw_score": raw.to_numpy(),
            "score": calibrate(raw.to_numpy(), calibration),
        }
    )
    known = frame[frame["label"].notna()]
    counts = BatchCounts(
        series_in_batch=len(in_batch),
        excluded_seen=len(seen),
        not_preprocessed=len(failed),
        samples=len(frame),
        unlabelled=len(frame) - len(known),
        patients=int(frame["patient_id"].nunique()),
        positives=int((known["label"] == 1).sum()),
        negatives=int((known["label"] == 0).sum()),
    )
    return frame, counts


def _metric(block: MetricsBlock, support: ClassSupport, name: str) -> BatchMetric:
    """A metric of the evaluation's block, or not estimable when its classes are short of
    patients (as the evaluation report words it: the patients missing, no number)."""
    value = block.values.get(name)
    if support.shortfall(METRIC_CLASSES[name]) is not None or value is None:
        return BatchMetric(not_estimable=support.not_estimable(name))
    low, high = block.ci95.get(name, (None, None))
    return BatchMetric(value=float(value), ci95=(low, high))


def batch_metrics(
    frame: pd.DataFrame, threshold: float, settings: Settings
) -> tuple[dict[str, BatchMetric], ClassSupport | None]:
    """ROC AUC, sensitivity, specificity and ECE of the labelled rows of `frame` at
    `threshold`, each with its patient-bootstrap 95 % CI, and the patients per class."""
    names = ("roc_auc", "sensitivity", "specificity", "ece")
    known = frame[frame["label"].notna()]
    if known.empty:
        return {name: BatchMetric(not_estimable=NO_LABELS) for name in names}, None
    scored = pd.DataFrame(
        {
            "label": known["label"].astype(int).to_numpy(),
            "score": known["score"].to_numpy(),
            "patient_id": known["patient_id"].to_numpy(),
        }
    )
    e = settings.evaluation
    block = _metrics_at(scored, threshold, e)
    support = ClassSupport.of(
        scored["label"].to_numpy(), scored["patient_id"].to_numpy(), e.min_patients_per_class
    )
    return {name: _metric(block, support, name) for name in names}, support


def evaluate_batch(settings: Settings, batch: str) -> BatchEvaluation:
    """The champion on inbox batch `batch` (its folder name), as one history row.

    Returns the committed row; when the batch was evaluated by this champion version
    before, that row, without scoring again. Writes `monitoring/<model>/batches/…` and
    rewrites `history.md` and `history.png` beside it.

    Raises:
        MonitoringError: No champion yet, or the batch has nothing unseen to score.
    """
    from lungcls.monitor.history import write_history

    storage = Storage.from_settings(settings)
    record = champion_record(storage, settings.model.name)
    pseudonym = batch_pseudonym(pseudonym_key(settings, storage), batch)
    existing = find_batch_evaluation(storage, record.name, pseudonym, record.version)
    if existing is not None:
        return existing
    reference = champion_evaluation(settings, record)
    threshold = reference.operating_point.threshold
    frame, counts = score_batch(settings, record, batch, reference.calibration)
    metrics, support = batch_metrics(frame, threshold, settings)
    limit = settings.monitoring.min_batch_auc
    auc = metrics["roc_auc"].value
    alerts = []
    if auc is not None and auc < limit:
        alerts.append(f"ROC AUC {auc:.3f} below monitoring.min_batch_auc {limit:.2f}")
    order = np.lexsort((frame["label"].fillna(-1).to_numpy(dtype=int), frame["score"].to_numpy()))
    row = BatchEvaluation(
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        batch=pseudonym,
        model=record.name,
        model_version=record.version,
        trained_on=record.dataset,
        counts=counts,
        class_support=support,
        threshold=threshold,
        calibration_from=f"{reference.operating_point.chosen_on} of {reference.dataset}",
        **metrics,
        internal_test_auc=reference.metrics.at_operating_point.values.get("roc_auc"),
        min_batch_auc=limit,
        alerts=alerts,
        scores=[float(s) for s in frame["score"].to_numpy()[order]],
        labels=[None if pd.isna(v) else int(v) for v in frame["label"].to_numpy()[order]],
        patient_scores=_patient_means(frame),
    )
    committed = commit_batch_evaluation(storage, row, new_run_id("monitor"))
    write_history(storage, record.name)
    return committed


def drift_scores(settings: Settings, row: BatchEvaluation) -> ModelScores:
    """The champion's calibrated scores for `drift_report(..., scores=...)`: on its own test
    split (data it did not fit) and on the batch, one mean per patient (per sample for a
    row written before rows kept their patients' means)."""
    storage = Storage.from_settings(settings)
    record = load_record(storage, row.model, row.model_version)
    report = latest_report(storage, record, record.dataset)
    if report is None:
        raise MonitoringError(f"{record} has no evaluation on {record.dataset} to compare with")
    scores = load_scores(storage, report)
    test = scores[scores["split"] == "test"]
    if not row.patient_scores:
        return ModelScores([float(s) for s in test["score"]], list(row.scores), per_patient=False)
    return ModelScores(_patient_means(test), list(row.patient_scores))


def _patient_means(scored: pd.DataFrame) -> list[float]:
    """Each patient's mean score, ascending (no patient named)."""
    return sorted(float(s) for s in scored.groupby("patient_id")["score"].mean())
