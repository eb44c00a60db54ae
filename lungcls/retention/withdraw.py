"""Erasure downstream of the series store: dataset versions, score tables, models.

- **Dataset versions.** A shard holding an erased sample is deleted, wherever it lives (new
  versions reuse shards stored in older version folders), and every committed version whose
  manifest names one is *withdrawn*: `datasets/<name>/v<N>/erased.json` (`Withdrawal`), after
  which `load_manifest` refuses it naming the erasure and `list_versions` leaves it out. A
  withdrawn version is never rewritten in place: its manifest still says what it was, and
  the models trained on it are listed for retraining (`affected_models`). The next version
  is built by the normal `build_dataset`, with the recipe (preprocessing, split fractions,
  batches) of the newest withdrawn version, so that it differs by the erased samples only
  (`publish_without`). Each version's `labels.parquet` (not named by a hash) loses the
  erased series' rows in place.
- **Score tables** (out-of-fold scores, fold scores, evaluation scores, predictions) lose
  their erased rows in place, and every commit record that names the file with its SHA-256
  (`model.json`, a fold's record, `report.json`, a model's folds) is given the new digest,
  so verify-on-read still passes; saliency maps of erased series are deleted.
- **Text files** that name an erased series or patient (Great Expectations results and
  Data Docs of old builds, cached Prefect results) are deleted: they are reports and caches,
  not data, and rewriting HTML is no honest option.
"""

from __future__ import annotations

import io
import json
import posixpath
from datetime import UTC, datetime
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from lungcls.config import Settings
from lungcls.dataset.manifest import (
    MANIFEST,
    WITHDRAWN,
    DatasetRef,
    Manifest,
    Withdrawal,
    version_dir,
)
from lungcls.dataset.shards import read_shard_metadata
from lungcls.errors import LungclsError
from lungcls.io.integrity import sha256_of
from lungcls.io.records import dumps
from lungcls.io.storage import Storage
from lungcls.io.versions import committed_versions
from lungcls.registry.records import ModelRecord
from lungcls.retention.erasure_log import AffectedModel, Erased
from lungcls.retention.scrub import Tally

SCORE_FOLDERS = ("models", "runs", "predictions")
TEXT_FOLDERS = ("runs", "prefect-results")
BINARY_SUFFIXES = (".parquet", ".pt", ".ts", ".png")
VERSION_LABELS = "labels.parquet"


def withdraw_datasets(
    storage: Storage, erased: Erased, erasure: int, tally: Tally
) -> list[DatasetRef]:
    """Delete every shard holding erased samples and withdraw the committed versions that
    name one (markers first: a reader meets the withdrawal, never a missing shard)."""
    withdrawn = []
    series = set(erased.series)
    for folder in storage.list_dirs("datasets"):
        holders = set()
        for info in storage.list_files(folder):
            if "/shards/" in info.path and info.path.endswith(".parquet"):
                rows = read_shard_metadata(storage, info.path).select(["series_id", "patient_id"])
                hit = [
                    r["series_id"]
                    for r in rows.to_pylist()
                    if erased.refuses(r["patient_id"], r["series_id"])
                ]
                if hit:
                    holders.add(info.path)
                    series.update(hit)
        name = posixpath.basename(folder)
        for version in committed_versions(storage, folder, MANIFEST):
            manifest = Manifest.load(storage, f"{version_dir(name, version)}/{MANIFEST}")
            removed = sum(s.path in holders for s in manifest.shards)
            marker = Withdrawal(
                erasure=erasure,
                withdrawn_at=datetime.now(UTC).isoformat(timespec="seconds"),
                shards_removed=removed,
            )
            if removed and marker.save(storage, f"{manifest.ref.folder}/{WITHDRAWN}", True):
                withdrawn.append(manifest.ref)
        for rel in sorted(holders):
            tally.remove(storage, rel)
        for info in storage.list_files(folder):
            if info.path.endswith(f"/{VERSION_LABELS}"):
                tally.label_rows_removed += _drop_rows(storage, info.path, Erased(series=series))
    return withdrawn


def _drop_rows(storage: Storage, rel: str, erased: Erased) -> int:
    """Write a Parquet table again without its erased rows (by `patient_id` and
    `series_id`, where it has them), with the codec it was written with; returns how many
    rows went."""
    parquet = pq.ParquetFile(io.BytesIO(storage.read_bytes(rel)))
    table = parquet.read()
    mask = pa.array([False] * len(table))
    for column, values in (("patient_id", erased.patients), ("series_id", erased.series)):
        if column in table.column_names and values:
            found = pc.is_in(table[column], pa.array(sorted(values), pa.string()))
            mask = pc.or_(mask, pc.fill_null(found, False))
    dropped = pc.sum(mask).as_py() or 0
    if dropped:
        metadata = parquet.metadata
        codec = metadata.row_group(0).column(0).compression if metadata.num_row_groups else "ZSTD"
        buffer = io.BytesIO()
        compression = "none" if codec == "UNCOMPRESSED" else codec.lower()
        pq.write_table(table.filter(pc.invert(mask)), buffer, compression=compression)
        storage.write_atomic(rel, buffer.getvalue())
    return dropped


def scrub_scores(storage: Storage, erased: Erased, tally: Tally) -> None:
    """Erased rows out of every score table and prediction, the records naming them given
    the new SHA-256s; saliency maps of erased series deleted."""
    digests: dict[str, str] = {}
    for folder in SCORE_FOLDERS:
        for info in storage.list_files(folder):
            name = posixpath.basename(info.path)
            if name.endswith(".parquet"):
                dropped = _drop_rows(storage, info.path, erased)
            elif folder == "predictions" and name.endswith(".csv"):
                dropped = _drop_csv_rows(storage, info.path, erased)
            else:
                if folder == "predictions" and name.split(".")[0] in erased.series:
                    tally.remove(storage, info.path)  # a saliency map: the patient's anatomy
                continue
            if dropped:
                tally.score_rows_removed += dropped
                tally.files_rewritten += 1
                digests[info.path] = sha256_of(storage.read_bytes(info.path))
    if digests:
        _update_digests(storage, digests)


def _drop_csv_rows(storage: Storage, rel: str, erased: Erased) -> int:
    frame = pd.read_csv(io.BytesIO(storage.read_bytes(rel)), dtype=str)
    if "series_id" not in frame.columns:
        return 0
    drop = frame["series_id"].isin(erased.series)
    if drop.any():
        storage.write_atomic(rel, frame[~drop].to_csv(index=False).encode())
    return int(drop.sum())


def _update_digests(storage: Storage, digests: dict[str, str]) -> None:
    """Give every commit record that names a rewritten file its new SHA-256: a record's
    `files` names files beside it; a model's folds name those of `runs/<train_run>/folds`."""
    for folder in ("models", "runs"):
        for info in storage.list_files(folder):
            if not info.path.endswith(".json"):
                continue
            raw = storage.read_bytes(info.path)
            record = json.loads(raw) if b'"files"' in raw else None
            if not isinstance(record, dict):
                continue
            here = posixpath.dirname(info.path)
            changed = _update(record.get("files"), here, digests)
            folds = (record.get("cross_validation") or {}).get("folds") or []
            for fold in folds:
                run_folder = f"runs/{record.get('train_run')}/folds"
                changed = _update(fold.get("files"), run_folder, digests) or changed
            if changed:
                storage.write_atomic(info.path, dumps(record))


def _update(files: Any, folder: str, digests: dict[str, str]) -> bool:
    if not isinstance(files, dict):
        return False
    changed = False
    for name in list(files):
        digest = digests.get(f"{folder}/{name}")
        if digest is not None and files[name] != digest:
            files[name] = digest
            changed = True
    return changed


def sweep_text(storage: Storage, erased: Erased, tally: Tally) -> None:
    """Delete validation results, Data Docs and cached results that name erased data."""
    needles = [v.encode() for v in (*erased.patients, *erased.series)]
    if not needles:
        return
    removed = 0
    for folder in TEXT_FOLDERS:
        for info in storage.list_files(folder):
            if info.path.endswith(BINARY_SUFFIXES):
                continue  # tables were handled row by row; weights and plots name nothing
            data = storage.read_bytes(info.path)
            if any(needle in data for needle in needles):
                tally.remove(storage, info.path)
                removed += 1
    if removed:
        tally.notes.append(
            f"{removed} report or cache file(s) naming erased series were deleted (validation "
            "results and Data Docs of older builds, cached Prefect results)"
        )


def affected_models(storage: Storage, datasets: list[DatasetRef]) -> list[AffectedModel]:
    """Model versions trained on any of `datasets`: their weights learnt from erased data."""
    wanted = {(d.name, d.version) for d in datasets}
    affected = []
    for folder in storage.list_dirs("models"):
        for version in committed_versions(storage, folder, "model.json"):
            record = ModelRecord.load(storage, f"{folder}/v{version}/model.json")
            if (record.dataset.name, record.dataset.version) in wanted:
                name = posixpath.basename(folder)
                affected.append(AffectedModel(name=name, version=version, dataset=record.dataset))
    return affected


def publish_without(
    settings: Settings, storage: Storage, withdrawn: list[DatasetRef], tally: Tally
) -> list[DatasetRef]:
    """Build the next version of each dataset that had a version withdrawn, with the recipe
    of its newest withdrawn version (preprocessing, split fractions, batches); the build
    itself leaves erased data out. A build that cannot be made is noted, not raised: the
    erasure is done either way."""
    from lungcls.dataset.build import build_dataset

    published = []
    for name in sorted({d.name for d in withdrawn}):
        newest = max(d.version for d in withdrawn if d.name == name)
        manifest = Manifest.load(storage, f"{version_dir(name, newest)}/{MANIFEST}")
        recipe = settings.model_copy(deep=True)
        recipe.preprocess = manifest.preprocess.config
        recipe.dataset.name = name
        recipe.dataset.batches = manifest.splits.batches
        recipe.dataset.split_fractions = tuple(manifest.splits.fractions)  # type: ignore[assignment]
        try:
            summary = build_dataset(recipe, name=name, progress=False)
        except LungclsError as error:
            tally.notes.append(
                f"dataset {name}: no version could be built without the erased data ({error}); "
                "build one with `lungcls dataset build` once that is fixed"
            )
            continue
        if summary.created:
            published.append(DatasetRef(name=name, version=summary.version))
        else:
            tally.notes.append(f"dataset {name}: v{summary.version} already lacks the erased data")
    return published
