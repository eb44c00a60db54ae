"""A network's scores on stored samples: one row per sample with what the metrics group by.

Evaluation scores a split with it, and cross-validation the patients a fold held out; the
rows carry the sample's patient, split and subgroup attributes, never its tensor.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd
import torch

from lungcls.dataset.shards import Sample

SCORE_COLUMNS = [
    "sample_id",
    "series_id",
    "patient_id",
    "split",
    "label",
    "score",
    "manufacturer",
    "slice_thickness_mm",
    "nodule_diameter_mm",
]
BATCH = 32


def score_samples(model: torch.nn.Module, samples: Iterable[Sample]) -> pd.DataFrame:
    """Raw network probabilities of `samples`, in sample-id order (`model` in eval mode)."""
    rows: list[dict[str, object]] = []
    batch: list[np.ndarray] = []

    def flush() -> None:
        if batch:
            with torch.no_grad():
                logits = model(torch.from_numpy(np.stack(batch)))
            for row, score in zip(rows[-len(batch) :], torch.sigmoid(logits).tolist(), strict=True):
                row["score"] = float(score)
            batch.clear()

    for sample in samples:
        batch.append(sample.array().astype(np.float32))
        rows.append({c: getattr(sample, c) for c in SCORE_COLUMNS if c != "score"})
        if len(batch) == BATCH:
            flush()
    flush()
    frame = pd.DataFrame(rows, columns=SCORE_COLUMNS)
    return frame.sort_values("sample_id").reset_index(drop=True)
