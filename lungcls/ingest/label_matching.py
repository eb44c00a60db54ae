"""Labels rows that name no ingested series: quarantined (`labels_unmatched`) so that the
operator sees a typo'd or missing patient, study or series ID instead of a silent gap."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection

from lungcls.ingest.label_table import CurrentLabels
from lungcls.ingest.ledger import Ledger
from lungcls.ingest.series_store import read_series_index
from lungcls.io.quarantine import QuarantineItem, write_quarantine
from lungcls.io.storage import Storage


def unmatched_labels(
    storage: Storage,
    ledger: Ledger,
    labels: CurrentLabels,
    run_id: str,
    batches: Collection[str],
) -> list[QuarantineItem]:
    """Quarantine the rows of the current labels of `batches` that name no ingested series
    of their batch (`labels_unmatched`).

    Called for the batches whose labels or series changed in a run, so that an unchanged
    file is not reported again every run; a batch with no series yet (labels delivered
    before their archives) is left until its archives are ingested.
    """
    if not batches:
        return []  # a rerun on an unchanged inbox reads no series file
    index = read_series_index(storage, ledger, batches).select(
        ["batch", "series_id", "study_id", "patient_id"]
    )
    known: dict[str, set[str]] = defaultdict(set)
    for row in index.to_pylist():
        bid = labels.batch_id(row["batch"])
        if bid is not None:
            known[bid].update((row["series_id"], row["study_id"], row["patient_id"]))
    items = []
    for bid in sorted({b for b in map(labels.batch_id, batches) if b in known}):
        version = labels.versions[bid]
        items += [
            QuarantineItem(
                level="labels",
                code="labels_unmatched",
                # No batch name here: copies of the message leave the operator's view.
                message=f"row names a {label.level} that no ingested series of its batch has",
                source_url=storage.url(version.source),
                row=label.row,
            )
            for label in labels.tables[bid].labels
            if label.key not in known[bid]
        ]
    return write_quarantine(storage, run_id, items)
