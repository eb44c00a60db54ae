"""Versioned datasets: validated, preprocessed, patient-split Parquet shards with a manifest.

    lungcls dataset build | list | show

A version is `datasets/<name>/v<N>/`: shards first, then `build.json` (run facts: when,
which run, the resolved settings, where the validation results are), then `manifest.json`,
written last with an exclusive create. Only versions with a manifest exist. The manifest is
a pure function of the inputs (no timestamps or run ids), so a build killed at any point
and rerun produces the same manifest as a clean build.

Incremental: the new version reuses every shard of the previous one whose samples are all
still current, and preprocesses only the rest. No new data (same inputs fingerprint) means
no new version.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pandas as pd
from tqdm import tqdm

from lungcls.config import PreprocessSettings, Settings
from lungcls.dataset.contracts import Contract, ContractResult, load_contract, validate
from lungcls.dataset.preprocess import config_hash, preprocess_series, tensor_shape
from lungcls.dataset.shards import STAT_COLUMNS, Sample, ShardInfo, read_shard_metadata, write_shard
from lungcls.dataset.splits import SPLITS, SplitConflict, patient_splits
from lungcls.errors import LungclsError
from lungcls.ingest.deid import pseudonym_key
from lungcls.ingest.ledger import Ledger
from lungcls.ingest.series_store import load_series, read_series_index, volume_from_row
from lungcls.io.compute import map_unordered
from lungcls.io.quarantine import QuarantineItem, write_quarantine
from lungcls.io.runs import new_run_id
from lungcls.io.storage import Storage
from lungcls.io.versions import committed_versions, read_marker

MANIFEST_SCHEMA = "lungcls.dataset/1"


class DatasetError(LungclsError):
    """A dataset version cannot be built or read; the message says why."""


@dataclass
class BuildResult:
    name: str
    version: int
    created: bool
    manifest_path: str
    preprocessed: int = 0
    reused_shards: int = 0
    quarantined: list[dict[str, Any]] = field(default_factory=list)
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    seconds: float = 0.0


def version_dir(name: str, version: int) -> str:
    return f"datasets/{name}/v{version}"


def list_versions(storage: Storage, name: str) -> list[int]:
    """Committed versions (those with a manifest), oldest first."""
    return committed_versions(storage, f"datasets/{name}", "manifest.json")


def load_manifest(storage: Storage, name: str, version: int | None = None) -> dict[str, Any]:
    """A version's manifest (`None`: the latest)."""
    manifest = read_marker(storage, f"datasets/{name}", "manifest.json", version)
    if manifest is None:
        if version is None:
            raise DatasetError(f"dataset {name!r} has no version yet: run `lungcls dataset build`")
        raise DatasetError(f"dataset {name!r} has no version {version}")
    return manifest


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


def dataset_fingerprint(settings: Settings) -> str:
    """The inputs fingerprint the next build would have (see `_fingerprint`); cheap: it reads
    the ledger and the contracts, never a series."""
    storage = Storage.from_settings(settings)
    contracts = [
        load_contract("series_metadata", settings.contracts.series_metadata_version),
        load_contract("tensor", settings.contracts.tensor_version),
    ]
    return _fingerprint(Ledger.load(storage), settings, contracts)


def _fingerprint(ledger: Ledger, settings: Settings, contracts: list[Contract]) -> str:
    """Everything a version is a function of; equal fingerprints mean nothing to build.

    A series is a function of its archive's bytes, so the ledger's (archive SHA-256, series)
    pairs stand for its metadata and pixels without reading them: the no-new-data check
    stays cheap, and two roots holding the same archives agree.
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
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _series_parameters(settings: Settings) -> dict[str, Any]:
    c = settings.contracts
    return {
        "max_slice_thickness_mm": c.max_slice_thickness_mm,
        "min_pixel_spacing_mm": c.min_pixel_spacing_mm,
        "max_pixel_spacing_mm": c.max_pixel_spacing_mm,
        "min_matrix": c.min_matrix,
        "max_matrix": c.max_matrix,
        "min_slices": c.min_slices,
        "max_slices": c.max_slices,
    }


def _tensor_parameters(settings: Settings, required: list[str]) -> dict[str, Any]:
    shape = "x".join(str(n) for n in tensor_shape(settings.preprocess))
    return {"expected_shapes": [shape], "required_split_labels": required}


def preprocess_one(
    storage: Storage,
    series_file: str,
    meta: dict[str, Any],
    config: PreprocessSettings,
    preprocess_hash: str,
    dtype: str,
) -> Sample:
    """Load one series and preprocess it: the unit of parallel work (a Ray task)."""
    row = load_series(storage, series_file, meta["series_id"])
    tensor = preprocess_series(row, volume_from_row(row), config)
    return Sample.from_tensor(
        tensor,
        dtype,
        sample_id=meta["series_id"],
        series_id=meta["series_id"],
        patient_id=meta["patient_id"],
        split=meta["split"],
        label=int(meta["label"]),
        batch=meta["batch"],
        archive_sha256=meta["archive_sha256"],
        manufacturer=meta["manufacturer"] if isinstance(meta["manufacturer"], str) else None,
        slice_thickness_mm=meta["slice_thickness_mm"],
        nodule_diameter_mm=meta["nodule_diameter_mm"],
        preprocess_hash=preprocess_hash,
    )


def _contract_items(
    result: ContractResult, storage: Storage, files: dict[str, str]
) -> list[QuarantineItem]:
    """One quarantine record per rejected series, naming each failed expectation."""
    items = []
    for series_id, failures in sorted(result.row_failures.items()):
        text = "; ".join(f"{f.expectation}({f.column}) observed {f.observed}" for f in failures)
        items.append(
            QuarantineItem(
                "series",
                "contract_violation",
                f"{result.contract.name} {result.contract.version}: {text}",
                storage.url(files.get(series_id, "series")),
                series_id=series_id,
                details={
                    "contract": result.contract.name,
                    "version": result.contract.version,
                    "expectations": [f.expectation for f in failures],
                    "observed": {f.column: f.observed for f in failures},
                },
            )
        )
    return items


def build_dataset(
    settings: Settings, name: str | None = None, progress: bool | None = None
) -> BuildResult:
    """Build the next version of a dataset from the current series store, if anything changed."""
    started = time.monotonic()
    name = name or settings.dataset.name
    storage = Storage.from_settings(settings)
    key = pseudonym_key(settings, storage)
    ledger = Ledger.load(storage)
    series_contract = load_contract("series_metadata", settings.contracts.series_metadata_version)
    tensor_contract = load_contract("tensor", settings.contracts.tensor_version)
    fingerprint = _fingerprint(ledger, settings, [series_contract, tensor_contract])

    versions = list_versions(storage, name)
    parent = load_manifest(storage, name, versions[-1]) if versions else None
    if parent is not None and parent["inputs_fingerprint"] == fingerprint:
        return BuildResult(
            name,
            parent["version"],
            False,
            f"{version_dir(name, parent['version'])}/manifest.json",
            counts=parent["counts"],
            seconds=time.monotonic() - started,
        )
    frame = series_frame(storage, ledger)
    if settings.dataset.batches is not None:
        frame = frame[frame["batch"].isin(settings.dataset.batches)]
    if frame.empty:
        where = f" of batches {settings.dataset.batches}" if settings.dataset.batches else ""
        raise DatasetError(f"the series store holds no series{where}: run `lungcls ingest` first")

    version = (versions[-1] if versions else 0) + 1
    folder = version_dir(name, version)
    storage.remove(folder)  # leftovers of a build killed before its manifest: never trusted
    run_id = new_run_id("dataset")
    result = BuildResult(name, version, True, f"{folder}/manifest.json")

    series_result = validate(
        frame,
        series_contract,
        _series_parameters(settings),
        storage,
        run_id,
        settings.contracts.max_rejected_share,
    )
    files = {sid: rel for rel, ids in ledger.series_files().items() for sid in ids}
    items = _contract_items(series_result, storage, files)
    accepted = frame[~frame["series_id"].isin(series_result.row_failures)]
    labelled = accepted[accepted["label"].notna()].copy()
    labelled["split_assigned"] = labelled["split"].notna()
    fractions = settings.dataset.split_fractions
    try:
        assigned = [s if isinstance(s, str) else None for s in labelled["split"]]
        splits = patient_splits(zip(labelled["patient_id"], assigned, strict=True), key, fractions)
    except SplitConflict as error:
        raise DatasetError(str(error)) from error
    labelled["split"] = labelled["patient_id"].map(splits)

    preprocess_hash = config_hash(settings.preprocess)
    shards, reused_ids = _reusable_shards(storage, parent, labelled, preprocess_hash)
    result.reused_shards = len(shards)
    todo = labelled[~labelled["series_id"].isin(reused_ids)]
    new_shards, tensor_items, stats = _preprocess_and_shard(
        storage, settings, todo, files, folder, preprocess_hash, tensor_contract, progress
    )
    shards += new_shards
    result.preprocessed = len(todo)
    items += tensor_items

    # All samples of the version, reused and new, against the whole tensor contract.
    all_stats = pd.concat([_shard_stats(storage, shards), stats], ignore_index=True)
    all_stats = all_stats.drop_duplicates("sample_id").sort_values("sample_id")
    # Every split that holds samples must hold both classes; a split may be empty on purpose
    # (an external test set imported with every patient assigned to test).
    required = [f"{s}:{y}" for s in SPLITS if (all_stats["split"] == s).any() for y in (0, 1)]
    write_quarantine(storage, run_id, items)  # before the check that may stop the build
    tensor_result = validate(
        all_stats,
        tensor_contract,
        _tensor_parameters(settings, required if settings.dataset.require_both_classes else []),
        storage,
        run_id,
        settings.contracts.max_rejected_share,
        settings.work_dir,
    )
    result.quarantined = [i.summary() for i in items]

    counts: dict[str, dict[str, int]] = {s: {"0": 0, "1": 0} for s in SPLITS}
    for (split, label), n in Counter(
        zip(all_stats["split"], all_stats["label"], strict=True)
    ).items():
        counts[split][str(label)] = n
    result.counts = counts
    manifest = {
        "schema": MANIFEST_SCHEMA,
        "name": name,
        "version": version,
        "parent": parent["version"] if parent else None,
        "inputs_fingerprint": fingerprint,
        "preprocess": {
            "hash": preprocess_hash,
            "config": settings.preprocess.model_dump(mode="json"),
        },
        "tensor": {
            "shape": list(tensor_shape(settings.preprocess)),
            "dtype": settings.dataset.tensor_dtype,
        },
        "splits": {
            "fractions": list(fractions),
            "method": "HMAC-SHA256 of the patient pseudonym, unless labels.csv assigns one",
            "assigned_patients": int(
                labelled.loc[labelled["split_assigned"], "patient_id"].nunique()
            ),
            "batches": settings.dataset.batches,
        },
        "contracts": {
            c.contract.name: {
                **c.contract.describe(),
                "evaluated_expectations": c.evaluated,
                "rows": c.rows,
                "rows_rejected": len(c.row_failures),
            }
            for c in (series_result, tensor_result)
        },
        "counts": counts,
        "samples": len(all_stats),
        "excluded": {
            "unlabelled": int(accepted["label"].isna().sum()),
            "series_contract": len(series_result.row_failures),
            "tensor_contract": len(tensor_items),
        },
        "shards": [vars(s) for s in sorted(shards, key=lambda s: (s.split, s.path))],
    }
    build = {
        "run_id": run_id,
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "preprocessed": result.preprocessed,
        "reused_shards": result.reused_shards,
        "validation": {c.contract.name: c.result_path for c in (series_result, tensor_result)},
        "settings": settings.masked(),
    }
    storage.write_atomic(f"{folder}/build.json", json.dumps(build, indent=2).encode())
    if not storage.create(result.manifest_path, json.dumps(manifest, indent=2).encode()):
        raise DatasetError(f"{result.manifest_path} was written by another build meanwhile")
    result.seconds = time.monotonic() - started
    return result


def _reusable_shards(
    storage: Storage,
    parent: dict[str, Any] | None,
    labelled: pd.DataFrame,
    preprocess_hash: str,
) -> tuple[list[ShardInfo], set[str]]:
    """Parent shards whose every sample is still current, unchanged, in the same split."""
    if parent is None or parent["preprocess"]["hash"] != preprocess_hash:
        return [], set()
    current = {
        row.series_id: (row.archive_sha256, int(row.label), row.split)
        for row in labelled.itertuples()
    }
    shards, ids = [], set()
    for entry in parent["shards"]:
        table = read_shard_metadata(storage, entry["path"]).to_pylist()
        if all(
            current.get(r["series_id"]) == (r["archive_sha256"], r["label"], r["split"])
            for r in table
        ):
            shards.append(ShardInfo(**entry))
            ids.update(r["series_id"] for r in table)
    return shards, ids


def _preprocess_and_shard(
    storage: Storage,
    settings: Settings,
    todo: pd.DataFrame,
    files: dict[str, str],
    folder: str,
    preprocess_hash: str,
    contract: Contract,
    progress: bool | None,
) -> tuple[list[ShardInfo], list[QuarantineItem], pd.DataFrame]:
    """Preprocess `todo` in parallel, shard by shard (memory: one shard), checking each."""
    dtype = settings.dataset.tensor_dtype
    sample_bytes = 2 if dtype == "float16" else 4
    for n in tensor_shape(settings.preprocess):
        sample_bytes *= n
    per_shard = max(1, int(settings.dataset.shard_target_mb * 1024 * 1024 // sample_bytes))
    shards: list[ShardInfo] = []
    items: list[QuarantineItem] = []
    stats: list[dict[str, Any]] = []
    bar = tqdm(
        total=len(todo),
        desc="preprocess",
        unit="series",
        disable=None if progress is None else not progress,
    )
    for split in SPLITS:
        rows = todo[todo["split"] == split].sort_values("series_id").to_dict("records")
        for number, start in enumerate(range(0, len(rows), per_shard)):
            chunk = rows[start : start + per_shard]
            jobs = [
                (storage, files[r["series_id"]], r, settings.preprocess, preprocess_hash, dtype)
                for r in chunk
            ]
            samples = []
            for sample in map_unordered(preprocess_one, jobs, settings):
                samples.append(sample)
                bar.update(1)
            frame = _stats_frame(samples)
            checked = validate(frame, contract, _tensor_parameters(settings, []))
            items += _contract_items(checked, storage, files)
            kept = [s for s in samples if s.sample_id not in checked.row_failures]
            if kept:
                rel = f"{folder}/shards/{split}-{number:05d}.parquet"
                shards.append(write_shard(storage, rel, kept, settings.dataset.compression))
                stats += _stats_frame(kept).to_dict("records")
    bar.close()
    return shards, items, pd.DataFrame(stats, columns=_STATS_FRAME_COLUMNS)


_STATS_FRAME_COLUMNS = ["sample_id", "split", "label", "shape", "split_label", *STAT_COLUMNS]


def _stats_row(row: dict[str, Any]) -> dict[str, Any]:
    """What the tensor contract sees of one sample (a Sample's row or a shard row)."""
    return {
        "sample_id": row["sample_id"],
        "split": row["split"],
        "label": row["label"],
        "shape": "x".join(str(n) for n in row["shape"]),
        "split_label": f"{row['split']}:{row['label']}",
        **{c: row[c] for c in STAT_COLUMNS},
    }


def _stats_frame(samples: list[Sample]) -> pd.DataFrame:
    return pd.DataFrame([_stats_row(s.to_row()) for s in samples], columns=_STATS_FRAME_COLUMNS)


def _shard_stats(storage: Storage, shards: list[ShardInfo]) -> pd.DataFrame:
    rows = [_stats_row(r) for s in shards for r in read_shard_metadata(storage, s.path).to_pylist()]
    return pd.DataFrame(rows, columns=_STATS_FRAME_COLUMNS)
