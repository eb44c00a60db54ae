"""Versioned datasets: validated, preprocessed, patient-split Parquet shards with a manifest.

    lungcls dataset build | list | show

A version is `datasets/<name>/v<N>/`: its number claimed first (`io.versions`), then its
shards, then `build.json` (run facts: when, which run, the resolved settings, where the
validation results are), then `manifest.json`, written last with an exclusive create and
naming every shard with its SHA-256. Only versions with a manifest exist; two builds never
write into one folder. The manifest is a pure function of the inputs and its number (no
timestamps or run ids), so a build killed at any point and rerun produces the manifest of a
clean build under the next number; the killed build's files are left for `lungcls gc`.

Incremental: the new version reuses every shard of the previous one whose samples are all
still current, and preprocesses only the rest. No new data (same inputs fingerprint) means
no new version.

Labels come from the labels table (`lungcls.ingest.label_table`), refreshed from the inbox
first: a labels.csv delivered or corrected since the last build makes a new version even
when no archive changed, and its manifest lists the series whose label changed
(`lungcls.dataset.labelling`).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

import pandas as pd

from lungcls.config import Settings
from lungcls.dataset.contracts import Contract, ContractResult, load_contract, validate
from lungcls.dataset.labelling import (
    LabelComparison,
    apply_labels,
    compare_with_parent,
    refresh_inbox_labels,
    write_version_labels,
)
from lungcls.dataset.manifest import (
    BUILD_RECORD,
    BuildRecord,
    DatasetError,
    DatasetRef,
    ExcludedCounts,
    Manifest,
    PreprocessInfo,
    ShardInfo,
    SplitCounts,
    SplitsInfo,
    TensorSpec,
    list_versions,
    load_manifest,
)
from lungcls.dataset.preprocess import config_hash, tensor_shape
from lungcls.dataset.sharding import preprocess_and_shard, reusable_shards
from lungcls.dataset.splits import SPLITS, SplitConflict, patient_splits
from lungcls.dataset.summary import BuildSummary
from lungcls.dataset.validation import (
    SeriesMetadataParameters,
    TensorParameters,
    contract_items,
    contract_summary,
    series_frame,
    shard_stats,
)
from lungcls.ingest.deid import pseudonym_key
from lungcls.ingest.label_table import batch_pseudonym, current_labels, labels_fingerprint
from lungcls.ingest.ledger import Ledger
from lungcls.io.guard import stage_lease
from lungcls.io.quarantine import QuarantineItem, write_quarantine
from lungcls.io.records import Part
from lungcls.io.runs import new_run_id
from lungcls.io.storage import Storage
from lungcls.io.versions import claim_version
from lungcls.retention.erasure_log import Erased, read_erased, without_erased

SPLIT_METHOD = "HMAC-SHA256 of the patient pseudonym, unless labels.csv assigns one"


def dataset_fingerprint(settings: Settings) -> str:
    """The inputs fingerprint the next build would have (see `_fingerprint`); cheap: it reads
    the ledger, the labels history and the contracts, never a series. Labels as last
    refreshed (by ingest, which reads every changed labels.csv, or by a build)."""
    storage = Storage.from_settings(settings)
    labels = labels_fingerprint(storage, settings.dataset.batches)
    contracts = list(_Contracts.load(settings))
    return _fingerprint(Ledger.load(storage), settings, contracts, labels, read_erased(storage))


def _fingerprint(
    ledger: Ledger, settings: Settings, contracts: list[Contract], labels: str, erased: Erased
) -> str:
    """Everything a version is a function of; equal fingerprints mean nothing to build.

    A series is a function of its archive's bytes, so the ledger's (archive SHA-256, series)
    pairs stand for its metadata and pixels without reading them: the no-new-data check
    stays cheap, and two roots holding the same archives agree. `labels` stands for the
    current labels tables by content (`labels_fingerprint`); it is left out while there are
    none, so a root ingested before them keeps its fingerprint; so is the erasure log.
    """
    batches = settings.dataset.batches
    sources = sorted(
        (e.sha256, s)
        for e in ledger.entries
        if e.status == "ingested" and (batches is None or e.batch in batches)
        for s in e.series_ids
    )
    payload = {
        "sources": sources,
        "preprocess": settings.preprocess.model_dump(mode="json"),
        "dataset": settings.dataset.model_dump(mode="json", exclude={"name"}),
        "contracts": [c.sha256 for c in contracts],
        "contract_parameters": settings.contracts.model_dump(mode="json"),
    }
    if labels:
        payload["labels"] = labels
    if erased:
        payload["erased"] = erased.fingerprint()
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class _Contracts:
    series: Contract
    tensor: Contract

    @classmethod
    def load(cls, settings: Settings) -> _Contracts:
        versions = settings.contracts
        return cls(
            load_contract("series_metadata", versions.series_metadata_version),
            load_contract("tensor", versions.tensor_version),
        )

    def __iter__(self) -> Iterator[Contract]:
        return iter((self.series, self.tensor))


@dataclass(frozen=True)
class _Build:
    """One build of a new version: where it writes, and the series files it reads."""

    settings: Settings
    storage: Storage
    ref: DatasetRef
    run_id: str
    files: dict[str, str]  # series id -> its series file
    contracts: _Contracts
    key: bytes  # the pseudonym key, which also keys the patient split

    def validate(
        self, frame: pd.DataFrame, contract: Contract, parameters: Part, scratch: str | None = None
    ) -> ContractResult:
        """Run a contract with results saved under this build's run."""
        share = self.settings.contracts.max_rejected_share
        return validate(frame, contract, parameters, self.storage, self.run_id, share, scratch)


def build_dataset(
    settings: Settings, name: str | None = None, progress: bool | None = None
) -> BuildSummary:
    """Build the next version of a dataset from the current series store, if anything changed."""
    started = time.monotonic()
    name = name or settings.dataset.name
    storage = Storage.from_settings(settings)
    run_id = new_run_id("dataset")
    # One build at a time per root: a second waits, then finds its inputs built.
    with stage_lease(storage, "dataset-build", run_id, settings.storage.lease_only):
        return _build(settings, storage, name, run_id, progress, started)


def _build(
    settings: Settings,
    storage: Storage,
    name: str,
    run_id: str,
    progress: bool | None,
    started: float,
) -> BuildSummary:
    key = pseudonym_key(settings, storage)
    # The labels table is ingest's: refreshed under ingest's lease (it is rewritten whole).
    with stage_lease(storage, "ingest", run_id, settings.storage.lease_only):
        ledger, erased = Ledger.load(storage), read_erased(storage)
        # Copies for the summary: without the labels.csv's inbox path (the records keep it).
        labels_quarantined = [
            item.redacted() for item in refresh_inbox_labels(settings, storage, key, ledger, run_id)
        ]
    contracts = _Contracts.load(settings)
    labels = labels_fingerprint(storage, settings.dataset.batches)
    fingerprint = _fingerprint(ledger, settings, list(contracts), labels, erased)
    versions = list_versions(storage, name)
    parent = load_manifest(storage, name, versions[-1]) if versions else None
    if parent is not None and parent.inputs_fingerprint == fingerprint:
        summary = BuildSummary.up_to_date(parent, time.monotonic() - started)
        summary.quarantined = labels_quarantined
        return summary
    stamped = without_erased(series_frame(storage, ledger), erased)
    if settings.dataset.batches is not None:
        # Series name their batch by its pseudonym (those ingested by lungcls 0.1 by name).
        names = settings.dataset.batches
        stamped = stamped[
            stamped["batch"].isin([*names, *(batch_pseudonym(key, n) for n in names)])
        ]
    if stamped.empty:
        where = f" of batches {settings.dataset.batches}" if settings.dataset.batches else ""
        raise DatasetError(f"the series store holds no series{where}: run `lungcls ingest` first")
    frame = apply_labels(stamped, current_labels(storage))

    ref = DatasetRef(name=name, version=claim_version(storage, f"datasets/{name}", run_id))
    files = {sid: rel for rel, ids in ledger.series_files().items() for sid in ids}
    build = _Build(settings, storage, ref, run_id, files, contracts, key)
    changes = compare_with_parent(storage, parent, stamped, frame)
    summary, manifest, record = _build_version(build, frame, parent, changes, fingerprint, progress)
    summary.quarantined = labels_quarantined + summary.quarantined
    write_version_labels(storage, ref.folder, frame)
    record.save(storage, f"{ref.folder}/{BUILD_RECORD}")
    if not manifest.save(storage, ref.manifest_path, exclusive=True):
        raise DatasetError(f"{storage.url(ref.manifest_path)} was committed by another writer")
    summary.seconds = time.monotonic() - started
    return summary


def _build_version(
    build: _Build,
    frame: pd.DataFrame,
    parent: Manifest | None,
    changes: LabelComparison,
    fingerprint: str,
    progress: bool | None,
) -> tuple[BuildSummary, Manifest, BuildRecord]:
    """Validate, split, preprocess and shard; the manifest and build record, not yet written."""
    settings, storage = build.settings, build.storage
    parameters = SeriesMetadataParameters.from_settings(settings.contracts)
    series_result = build.validate(frame, build.contracts.series, parameters)
    items = contract_items(series_result, storage, build.files)
    accepted = frame[~frame["series_id"].isin(series_result.row_failures)]
    labelled = _split_patients(accepted[accepted["label"].notna()].copy(), settings, build.key)

    samples = _make_samples(build, labelled, parent, changes.remake, progress)
    written = write_quarantine(storage, build.run_id, items + samples.refused)  # before the check
    required = _required_labels(samples.stats, settings)
    tensor_result = build.validate(
        samples.stats,
        build.contracts.tensor,
        TensorParameters.for_preprocess(settings.preprocess, required),
        scratch=settings.work_dir,
    )
    excluded = ExcludedCounts(
        unlabelled=int(accepted["label"].isna().sum()),
        series_contract=len(series_result.row_failures),
        tensor_contract=len(samples.refused),
    )
    results = (series_result, tensor_result)
    manifest = _manifest(build, parent, fingerprint, labelled, samples, excluded, results, changes)
    record = BuildRecord(
        run_id=build.run_id,
        finished_at=datetime.now(UTC).isoformat(timespec="seconds"),
        preprocessed=samples.preprocessed,
        reused_shards=samples.reused_shards,
        validation={c.contract.name: c.result_path for c in results},
        settings=settings.masked(),
    )
    summary = BuildSummary(
        name=build.ref.name,
        version=build.ref.version,
        created=True,
        manifest_path=build.ref.manifest_path,
        preprocessed=samples.preprocessed,
        reused_shards=samples.reused_shards,
        label_changes=len(manifest.label_changes),
        quarantined=written,
        counts=manifest.counts,
    )
    return summary, manifest, record


@dataclass(frozen=True)
class _Samples:
    """The samples of a new version: where they are and what the tensor contract sees."""

    shards: list[ShardInfo]
    stats: pd.DataFrame  # one row per sample of the version, reused or new
    refused: list[QuarantineItem]  # by the tensor contract, shard by shard
    preprocessed: int
    reused_shards: int


def _make_samples(
    build: _Build,
    labelled: pd.DataFrame,
    parent: Manifest | None,
    remake: set[str],
    progress: bool | None,
) -> _Samples:
    """Reuse the parent's still-current shards (none holding a series in `remake`, whose
    labels changed), preprocess and shard the rest."""
    preprocess_hash = config_hash(build.settings.preprocess)
    reused, reused_ids = reusable_shards(build.storage, parent, labelled, preprocess_hash, remake)
    todo = labelled[~labelled["series_id"].isin(reused_ids)]
    new_shards, refused, stats = preprocess_and_shard(
        build.storage,
        build.settings,
        todo,
        build.files,
        build.ref.folder,
        preprocess_hash,
        build.contracts.tensor,
        progress,
    )
    shards = reused + new_shards
    every = pd.concat([shard_stats(build.storage, shards), stats], ignore_index=True)
    every = every.drop_duplicates("sample_id").sort_values("sample_id")
    return _Samples(shards, every, refused, len(todo), len(reused))


def _split_patients(labelled: pd.DataFrame, settings: Settings, key: bytes) -> pd.DataFrame:
    """`labelled` with each series' patient-level split (assigned by labels.csv, else hashed)
    in `split`, and in `split_assigned` whether labels.csv assigned it."""
    labelled["split_assigned"] = labelled["split"].notna()
    try:
        assigned = [s if isinstance(s, str) else None for s in labelled["split"]]
        splits = patient_splits(
            zip(labelled["patient_id"], assigned, strict=True),
            key,
            settings.dataset.split_fractions,
        )
    except SplitConflict as error:
        raise DatasetError(str(error)) from error
    labelled["split"] = labelled["patient_id"].map(splits)
    return labelled


def _required_labels(all_stats: pd.DataFrame, settings: Settings) -> list[str]:
    """Every split that holds samples must hold both classes; a split may be empty on purpose
    (an external test set imported with every patient assigned to test)."""
    if not settings.dataset.require_both_classes:
        return []
    return [f"{s}:{y}" for s in SPLITS if (all_stats["split"] == s).any() for y in (0, 1)]


def _counts(all_stats: pd.DataFrame) -> SplitCounts:
    counts: SplitCounts = {s: {"0": 0, "1": 0} for s in SPLITS}
    for (split, label), n in Counter(
        zip(all_stats["split"], all_stats["label"], strict=True)
    ).items():
        counts[split][str(label)] = n
    return counts


def _manifest(
    build: _Build,
    parent: Manifest | None,
    fingerprint: str,
    labelled: pd.DataFrame,
    samples: _Samples,
    excluded: ExcludedCounts,
    results: tuple[ContractResult, ContractResult],
    changes: LabelComparison,
) -> Manifest:
    settings = build.settings
    assigned = labelled.loc[labelled["split_assigned"], "patient_id"].nunique()
    return Manifest(
        name=build.ref.name,
        version=build.ref.version,
        parent=parent.version if parent else None,
        inputs_fingerprint=fingerprint,
        preprocess=PreprocessInfo(
            hash=config_hash(settings.preprocess), config=settings.preprocess
        ),
        tensor=TensorSpec(
            shape=list(tensor_shape(settings.preprocess)), dtype=settings.dataset.tensor_dtype
        ),
        splits=SplitsInfo(
            fractions=list(settings.dataset.split_fractions),
            method=SPLIT_METHOD,
            assigned_patients=int(assigned),
            batches=settings.dataset.batches,
        ),
        contracts={r.contract.name: contract_summary(r) for r in results},
        counts=_counts(samples.stats),
        samples=len(samples.stats),
        excluded=excluded,
        shards=sorted(samples.shards, key=lambda s: (s.split, s.path)),
        label_changes=changes.changes,
    )
