"""What a dataset version is: the manifest (its commit record) and the build record beside it.

`datasets/<name>/v<N>/manifest.json` names every shard with its SHA-256, the row counts by
split and label, the split rule, the contracts and the preprocessing the tensors went
through, and the parent version whose shards it reuses. It is a pure function of the
inputs (no timestamps, no run ids) and is written last: a version exists once its manifest
does. `build.json` holds the facts of the run that built it (when, which run, the resolved
settings, where the validation results are). A version an erasure withdrew (`erased.json`
beside the manifest) is refused by `load_manifest` and left out of `list_versions`.

    manifest = load_manifest(storage, "lung-nodules")      # the latest version
    manifest.shards_of("train"), manifest.tensor_shape, manifest.ref
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any, ClassVar

from pydantic import ConfigDict, Field, SerializerFunctionWrapHandler, model_serializer

from lungcls.config import PreprocessSettings
from lungcls.errors import LungclsError
from lungcls.io.records import Part, Record
from lungcls.io.storage import Storage
from lungcls.io.versions import committed_versions, marker_path, missing_version

MANIFEST = "manifest.json"
BUILD_RECORD = "build.json"
WITHDRAWN = "erased.json"  # a version withdrawn by an erasure (`Withdrawal`)

# split -> label ("0", "1") -> samples: keyed by data values, so a mapping, not a record.
SplitCounts = dict[str, dict[str, int]]


class DatasetError(LungclsError):
    """A dataset version cannot be built or read; the message says why."""


class DatasetWithdrawn(DatasetError):
    """The version was withdrawn by an erasure; the message names it and what to use."""

    code = "dataset_withdrawn"


class DatasetRef(Part):
    """One dataset version by name and number: how models, runs and flows name their data."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    version: int

    def __str__(self) -> str:
        return f"{self.name} v{self.version}"

    @property
    def folder(self) -> str:
        return version_dir(self.name, self.version)

    @property
    def manifest_path(self) -> str:
        return f"{self.folder}/{MANIFEST}"


class ShardInfo(Part):
    """One Parquet shard of a version, as the manifest records it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str  # under the storage root
    split: str
    rows: int
    bytes: int
    sha256: str


class PreprocessInfo(Part):
    """The preprocessing the tensors went through; `hash` keys shard reuse and model fit."""

    hash: str
    config: PreprocessSettings


class TensorSpec(Part):
    shape: list[int]  # channels first: (C, Z, Y, X) in 3D, (C, Y, X) in 2D
    dtype: str


class SplitsInfo(Part):
    fractions: list[float]  # train, val, test shares of patients
    method: str
    assigned_patients: int  # patients whose split labels.csv assigned
    batches: list[str] | None  # the inbox batches the version was built from; None: all


class ContractSummary(Part):
    """A data contract as applied to this version: which suite, how much it checked."""

    name: str
    version: str
    sha256: str
    evaluated_expectations: int
    rows: int
    rows_rejected: int

    def line(self) -> str:
        return (
            f"contract {self.name} {self.version}: {self.evaluated_expectations} expectations, "
            f"{self.rows} rows, {self.rows_rejected} rejected"
        )

    def table_line(self) -> str:
        """A row of the Markdown table under `CONTRACT_TABLE_HEADER`."""
        return (
            f"| {self.name} | {self.version} | {self.evaluated_expectations} | {self.rows} | "
            f"{self.rows_rejected} |"
        )


CONTRACT_TABLE_HEADER = [
    "| contract | version | expectations | rows | rejected |",
    "|---|---|---|---|---|",
]


class ExcludedCounts(Part):
    """Series left out of the version, by reason."""

    unlabelled: int
    series_contract: int
    tensor_contract: int

    def text(self) -> str:
        return ", ".join(f"{k} {v}" for k, v in self.model_dump().items())


class LabelChange(Part):
    """A series whose label differs from the parent version's (both versions hold it)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    series_id: str
    before: int | None  # None: unlabelled in the parent (a label gained)
    after: int | None  # None: unlabelled now (a label lost)

    @property
    def kind(self) -> str:
        if self.before is None:
            return "gained"
        return "lost" if self.after is None else "changed"

    def line(self) -> str:
        before, after = (
            "unlabelled" if label is None else str(label) for label in (self.before, self.after)
        )
        return f"{self.series_id}: {before} -> {after} ({self.kind})"


# `dataset show` lists this many label changes; `--json` has them all.
LABEL_CHANGES_SHOWN = 50


class Manifest(Record):
    """`datasets/<name>/v<N>/manifest.json`: the commit record of a dataset version."""

    SCHEMA: ClassVar[str] = "lungcls.dataset/1"

    name: str
    version: int
    parent: int | None  # the version whose shards this one may reuse
    inputs_fingerprint: str
    preprocess: PreprocessInfo
    tensor: TensorSpec
    splits: SplitsInfo
    contracts: dict[str, ContractSummary]  # by contract name
    counts: SplitCounts
    samples: int
    excluded: ExcludedCounts
    shards: list[ShardInfo]
    # Series whose label differs from the parent's (lungcls.dataset.labelling), by series.
    label_changes: list[LabelChange] = Field(default_factory=list)

    @model_serializer(mode="wrap")
    def _label_changes_only_when_any(self, handler: SerializerFunctionWrapHandler) -> Any:
        data = handler(self)
        if not self.label_changes:  # as manifests without any were written before
            data.pop("label_changes", None)
        return data

    @property
    def ref(self) -> DatasetRef:
        return DatasetRef(name=self.name, version=self.version)

    @property
    def tensor_shape(self) -> list[int]:
        return self.tensor.shape

    def shards_of(self, split: str) -> list[ShardInfo]:
        """The shards of one split (train, val, test), in manifest order."""
        return [s for s in self.shards if s.split == split]

    @property
    def splits_present(self) -> list[str]:
        """The splits that hold samples, sorted."""
        return sorted({s.split for s in self.shards})

    @property
    def shard_bytes(self) -> int:
        return sum(s.bytes for s in self.shards)

    def listing_line(self) -> str:
        """One line of `lungcls dataset list`."""
        contracts = ", ".join(
            f"{c.name} {c.version} ({c.rows_rejected} rejected)" for c in self.contracts.values()
        )
        splits = " ".join(f"{s}={sum(c.values())}" for s, c in self.counts.items())
        return (
            f"{self.name} v{self.version}: {self.samples} samples ({splits}); parent "
            f"{self.parent or '-'}; preprocess {self.preprocess.hash}; {contracts}"
        )

    def describe_lines(self) -> list[str]:
        """What `lungcls dataset show` prints."""
        config = json.dumps(self.preprocess.config.model_dump(mode="json"))
        return [
            f"dataset {self.name} v{self.version} (parent {self.parent or '-'})",
            f"  tensor {self.tensor.shape} {self.tensor.dtype}, preprocess "
            f"{self.preprocess.hash}: {config}",
            *count_lines(self.counts),
            f"  excluded: {self.excluded.model_dump()}",
            *(f"  {c.line()}" for c in self.contracts.values()),
            f"  {len(self.shards)} shards, {self.shard_bytes / 1e6:.1f} MB",
            *self.label_change_lines(),
        ]

    def label_change_lines(self) -> list[str]:
        """What changed in the labels since the parent version (nothing when nothing did)."""
        changes = self.label_changes
        if not changes:
            return []
        kinds = Counter(c.kind for c in changes)
        counts = ", ".join(f"{kinds[k]} {k}" for k in ("changed", "gained", "lost") if kinds[k])
        lines = [f"  label changes since v{self.parent}: {len(changes)} series ({counts})"]
        lines += [f"    {c.line()}" for c in changes[:LABEL_CHANGES_SHOWN]]
        if len(changes) > LABEL_CHANGES_SHOWN:
            lines.append(f"    … {len(changes) - LABEL_CHANGES_SHOWN} more (--json lists all)")
        return lines

    def count_table(self) -> list[dict[str, str | int]]:
        """Samples by split and label, one row per split (the dataset-version artifact)."""
        return [
            {
                "split": split,
                "negative (0)": counts["0"],
                "positive (1)": counts["1"],
                "total": counts["0"] + counts["1"],
            }
            for split, counts in self.counts.items()
        ]


def count_lines(counts: SplitCounts) -> list[str]:
    """Samples by split and label, one line per split (the CLI's view of `counts`)."""
    return [
        f"  {split:<5}  negative {by_label.get('0', 0):>5}  positive {by_label.get('1', 0):>5}"
        for split, by_label in counts.items()
    ]


class BuildRecord(Record):
    """`datasets/<name>/v<N>/build.json`: facts of the run that built a version (not part of
    the manifest, so that a rebuilt version has the same manifest)."""

    SCHEMA: ClassVar[str] = "lungcls.dataset-build/1"
    LEGACY_UNTAGGED: ClassVar[bool] = True  # lungcls 0.1.0 wrote it without a tag

    run_id: str
    finished_at: str  # ISO 8601, UTC
    preprocessed: int
    reused_shards: int
    validation: dict[str, str]  # contract name -> its validation result JSON under the root
    # The resolved settings, secrets masked: a free-form snapshot, typed where it is read.
    settings: dict[str, Any]

    @property
    def data_docs(self) -> str:
        """The folder of this run's Great Expectations Data Docs, under the root."""
        return f"runs/{self.run_id}/validation/data_docs"


class Withdrawal(Record):
    """`datasets/<name>/v<N>/erased.json`: the version is withdrawn. Shards of it held
    samples of erased data (`lungcls erase`) and were deleted, so it can no longer be read:
    the one exception to "a committed version never changes" (lungcls.retention)."""

    SCHEMA: ClassVar[str] = "lungcls.dataset-withdrawn/1"

    erasure: int  # the request in the erasure log (`lungcls erase --report`)
    withdrawn_at: str  # ISO 8601, UTC
    shards_removed: int


def version_dir(name: str, version: int) -> str:
    return f"datasets/{name}/v{version}"


def list_versions(storage: Storage, name: str) -> list[int]:
    """Committed versions (those with a manifest) not withdrawn by an erasure, oldest first."""
    committed = committed_versions(storage, f"datasets/{name}", MANIFEST)
    return [v for v in committed if not storage.exists(f"{version_dir(name, v)}/{WITHDRAWN}")]


def load_manifest(storage: Storage, name: str, version: int | None = None) -> Manifest:
    """A version's manifest (`None`: the latest not withdrawn), checked against the record's
    schema; a withdrawn version is refused (`DatasetWithdrawn`)."""
    if version is None and (usable := list_versions(storage, name)):
        version = usable[-1]
    path = marker_path(storage, f"datasets/{name}", MANIFEST, version)
    if path is None:
        raise DatasetError(missing_version(f"dataset {name!r}", version, "lungcls dataset build"))
    marker = f"{path.rsplit('/', 1)[0]}/{WITHDRAWN}"
    if storage.exists(marker):
        withdrawal = Withdrawal.load(storage, marker)
        raise DatasetWithdrawn(
            f"dataset {name!r} {path.split('/')[-2]} was withdrawn by erasure "
            f"#{withdrawal.erasure} on {withdrawal.withdrawn_at}: {withdrawal.shards_removed} "
            "of its shards held erased data and were deleted. Use a later version (`lungcls "
            "dataset list`), and retrain the models trained on this one (`lungcls erase "
            "--report` lists them)"
        )
    return Manifest.load(storage, path)


def load_build_record(storage: Storage, ref: DatasetRef) -> BuildRecord:
    return BuildRecord.load(storage, f"{ref.folder}/{BUILD_RECORD}")
