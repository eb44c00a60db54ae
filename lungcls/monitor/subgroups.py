"""Scanner makers that new batches brought in: what a candidate's test split must cover
before it replaces the champion, when `promotion.require_drifted_subgroups` is set.

A monitored batch whose drift report found the `manufacturer` feature drifted and named
makers the champion's training data never had tells the gate that the candidate must show
test metrics on those makers' scans (a subgroup row of its evaluation report with both
classes), not only on the scans it was used to. Makers, not kernels or slice thickness: the
evaluation report's subgroup table is by manufacturer (and thickness and diameter bands).
"""

from __future__ import annotations

from lungcls.io.storage import Storage
from lungcls.monitor.batch_evaluation import monitoring_dir
from lungcls.monitor.report import DriftReport

MANUFACTURER = "manufacturer"


def drift_reports(storage: Storage, model: str) -> list[DriftReport]:
    """Every committed drift report of batches monitored for `model`: the retrain flow's
    (named by the monitoring summaries) and `lungcls drift`'s."""
    from lungcls.monitor.run import MonitoringSummary  # run imports the registry: late

    folders = set()
    for info in storage.list_files(f"{monitoring_dir(model)}/ingests"):
        summary = MonitoringSummary.from_json(storage.read_bytes(info.path), info.path)
        folders |= {b.drift for b in summary.batches if b.drift}
    paths = [f"{folder}/drift.json" for folder in sorted(folders)]
    paths += [
        info.path
        for info in storage.list_files(f"{monitoring_dir(model)}/drift")
        if info.path.endswith("/drift.json")
    ]
    return [DriftReport.from_json(storage.read_bytes(p), p) for p in paths if storage.exists(p)]


def new_manufacturers(storage: Storage, model: str) -> list[str]:
    """Makers that a monitored batch brought in new, in a drifted `manufacturer` feature."""
    return sorted(
        {
            maker
            for report in drift_reports(storage, model)
            for feature in report.drifted_features
            if feature.name == MANUFACTURER
            for maker in feature.new_categories
        }
    )
