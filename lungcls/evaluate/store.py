"""Where evaluations live, and their commit point.

    models/<name>/v<N>/evaluations/<dataset>-v<D>/v<K>/   plots, scores.parquet, report.md,
                                                         report.html, report.json (last)

Each evaluation of a model version on a dataset version claims its own number `K` first
(`io.versions`), like datasets and models, and commits `report.json` last naming every file
with its SHA-256; `load_scores` verifies. Evaluating again (`--force`) writes `v<K+1>`:
a committed evaluation never changes, and two evaluations running at once never write into
one folder. lungcls 0.1 wrote its one evaluation straight into `<dataset>-v<D>/`: still read.
"""

from __future__ import annotations

import pandas as pd

from lungcls.errors import LungclsError
from lungcls.evaluate.render import render_html, render_markdown
from lungcls.evaluate.report import REPORT, EvaluationReport, NamedVersion, evaluation_dir
from lungcls.io.integrity import checked_bytes, sha256_of
from lungcls.io.runs import new_run_id
from lungcls.io.storage import Storage
from lungcls.io.tables import frame_bytes, frame_of
from lungcls.io.versions import claim_version, marker_path

SCORES = "scores.parquet"


class EvaluationCommitError(LungclsError):
    """Another writer committed the evaluation folder this run claimed (a store that does
    not honour exclusive create)."""


def latest_report(
    storage: Storage, model: NamedVersion, dataset: NamedVersion
) -> EvaluationReport | None:
    """The newest committed evaluation of `model` on `dataset`, or None when there is none."""
    base = evaluation_dir(model, dataset)
    path = marker_path(storage, base, REPORT, None)
    if path is None and storage.exists(f"{base}/{REPORT}"):
        path = f"{base}/{REPORT}"  # the one evaluation of a lungcls 0.1 root
    return EvaluationReport.load(storage, path) if path else None


def load_scores(storage: Storage, report: EvaluationReport) -> pd.DataFrame:
    """An evaluation's per-sample scores, verified against the SHA-256 its report names."""
    path = f"{report.folder}/{SCORES}"
    return frame_of(checked_bytes(storage, path, report.files.get(SCORES)))


def write_evaluation(
    storage: Storage,
    report: EvaluationReport,
    plots: dict[str, bytes],
    scores: pd.DataFrame,
    spread: float | None,
) -> None:
    """Claim the evaluation's number, write plots, scores and documents, and commit
    report.json last naming each file's SHA-256 (`spread`: the gate's fold-spread limit,
    against which the documents word disagreement). An evaluation run again (`--force`)
    becomes the next number; a committed one never changes."""
    base = evaluation_dir(report.model, report.dataset)
    report.version = claim_version(storage, base, new_run_id("evaluate"))
    files = dict(plots)
    files[SCORES] = frame_bytes(scores)
    files["report.md"] = render_markdown(report, spread).encode()
    files["report.html"] = render_html(report, plots, spread).encode()
    for file_name, data in files.items():
        storage.write_atomic(f"{report.folder}/{file_name}", data)
    report.files = {file_name: sha256_of(data) for file_name, data in files.items()}
    if not report.save(storage, f"{report.folder}/{REPORT}", exclusive=True):
        raise EvaluationCommitError(f"{storage.url(report.folder)} was committed by another writer")
