"""What a build shows the data contracts, and what it makes of their verdicts.

The series metadata contract sees the series store's index (list columns flattened); the
tensor contract sees one row of statistics per sample, computed when the sample is made or
read back from a shard without decoding tensors. A refused row becomes a quarantine record
naming each failed expectation and the value it saw.
"""

from __future__ import annotations

import pandas as pd

from lungcls.config import ContractSettings, PreprocessSettings
from lungcls.dataset.contracts import ContractResult
from lungcls.dataset.manifest import ContractSummary, ShardInfo
from lungcls.dataset.preprocess import tensor_shape
from lungcls.dataset.shards import STAT_COLUMNS, Sample, read_shard_metadata
from lungcls.ingest.ledger import Ledger
from lungcls.ingest.series_store import read_series_index
from lungcls.io.quarantine import ContractViolation, QuarantineItem
from lungcls.io.records import Part
from lungcls.io.storage import Storage

STATS_COLUMNS = ["sample_id", "split", "label", "shape", "split_label", *STAT_COLUMNS]
_SOURCE_COLUMNS = ["sample_id", "split", "label", "shape", *STAT_COLUMNS]


class SeriesMetadataParameters(Part):
    """The `$PARAMETER`s of the series_metadata suite: acquisition limits from the settings."""

    max_slice_thickness_mm: float
    min_pixel_spacing_mm: float
    max_pixel_spacing_mm: float
    min_matrix: int
    max_matrix: int
    min_slices: int
    max_slices: int

    @classmethod
    def from_settings(cls, contracts: ContractSettings) -> SeriesMetadataParameters:
        return cls.model_validate(contracts.model_dump(include=set(cls.model_fields)))


class TensorParameters(Part):
    """The `$PARAMETER`s of the tensor suite: the one shape samples may have ("1x16x16x16"),
    and the split:label pairs that must be present ("train:0")."""

    expected_shapes: list[str]
    required_split_labels: list[str]

    @classmethod
    def for_preprocess(
        cls, preprocess: PreprocessSettings, required: list[str] | None = None
    ) -> TensorParameters:
        shape = "x".join(str(n) for n in tensor_shape(preprocess))
        return cls(expected_shapes=[shape], required_split_labels=required or [])


def series_frame(storage: Storage, ledger: Ledger) -> pd.DataFrame:
    """The series store's metadata with list columns flattened, as the contracts see it."""
    table = read_series_index(storage, ledger)
    frame = table.drop_columns(
        [
            "spacing_zyx_mm",
            "origin_xyz_mm",
            "orientation",
            "slice_ids",
            "shape",
            "nodule_center_xyz_mm",
        ]
    ).to_pandas()
    spacing = table["spacing_zyx_mm"].to_pylist()
    center = table["nodule_center_xyz_mm"].to_pylist()
    for axis, name in enumerate(["spacing_z_mm", "spacing_y_mm", "spacing_x_mm"]):
        frame[name] = [s[axis] for s in spacing]
    for axis, name in enumerate(["nodule_x_mm", "nodule_y_mm", "nodule_z_mm"]):
        frame[name] = [c[axis] if c else None for c in center]
    frame["label"] = frame["label"].astype("Int64")
    return frame


def contract_items(
    result: ContractResult, storage: Storage, files: dict[str, str]
) -> list[QuarantineItem]:
    """One quarantine record per rejected series, naming each failed expectation."""
    items = []
    for series_id, failures in sorted(result.row_failures.items()):
        text = "; ".join(f"{f.expectation}({f.column}) observed {f.observed}" for f in failures)
        items.append(
            QuarantineItem(
                level="series",
                code="contract_violation",
                message=f"{result.contract.name} {result.contract.version}: {text}",
                source_url=storage.url(files.get(series_id, "series")),
                series_id=series_id,
                details=ContractViolation(
                    contract=result.contract.name,
                    version=result.contract.version,
                    expectations=[f.expectation for f in failures],
                    observed={f.column: f.observed for f in failures},
                ),
            )
        )
    return items


def contract_summary(result: ContractResult) -> ContractSummary:
    """What the manifest records of a contract applied to a version."""
    return ContractSummary(
        name=result.contract.name,
        version=result.contract.version,
        sha256=result.contract.sha256,
        evaluated_expectations=result.evaluated,
        rows=result.rows,
        rows_rejected=len(result.row_failures),
    )


def stats_frame(samples: list[Sample]) -> pd.DataFrame:
    """The tensor contract's view of freshly made samples."""
    rows = [{c: getattr(s, c) for c in _SOURCE_COLUMNS} for s in samples]
    return _contract_view(pd.DataFrame(rows, columns=_SOURCE_COLUMNS))


def shard_stats(storage: Storage, shards: list[ShardInfo]) -> pd.DataFrame:
    """The tensor contract's view of stored samples (metadata columns only, no tensors)."""
    rows = [
        row
        for shard in shards
        for row in read_shard_metadata(storage, shard.path).select(_SOURCE_COLUMNS).to_pylist()
    ]
    return _contract_view(pd.DataFrame(rows, columns=_SOURCE_COLUMNS))


def _contract_view(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per sample: shape as "1x16x16x16", split and label as "train:0", statistics."""
    frame["shape"] = ["x".join(str(n) for n in shape) for shape in frame["shape"]]
    frame["split_label"] = [
        f"{split}:{label}" for split, label in zip(frame["split"], frame["label"], strict=True)
    ]
    return frame[STATS_COLUMNS]
