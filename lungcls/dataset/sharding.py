"""The samples of a new version: shards reused from the parent, the rest preprocessed.

A parent shard is reused whole when every sample in it is still current: same archive
(`archive_id`, the keyed pseudonym of its bytes), same label, same split, same preprocessing.
Everything else is preprocessed in parallel (one Ray task per series), checked against the
tensor contract shard by shard, and written as new shards; memory holds one shard's samples
at a time.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import asdict

import pandas as pd
from tqdm import tqdm

from lungcls.config import PreprocessSettings, Settings
from lungcls.dataset.contracts import Contract, validate
from lungcls.dataset.labelling import nodule_center
from lungcls.dataset.manifest import Manifest, ShardInfo
from lungcls.dataset.preprocess import preprocess_series, tensor_shape
from lungcls.dataset.shards import Sample, SampleSource, read_shard_metadata, write_shard
from lungcls.dataset.splits import SPLITS
from lungcls.dataset.validation import (
    STATS_COLUMNS,
    TensorParameters,
    contract_items,
    stats_frame,
)
from lungcls.ingest.series_store import load_series
from lungcls.io.compute import map_unordered
from lungcls.io.quarantine import QuarantineItem
from lungcls.io.storage import Storage


def sample_sources(frame: pd.DataFrame) -> list[SampleSource]:
    """The rows of a labelled, split series frame as the samples they become."""
    return [
        SampleSource(
            series_id=row.series_id,
            patient_id=row.patient_id,
            split=row.split,
            label=int(row.label),
            batch=row.batch,
            archive_id=row.archive_id if isinstance(row.archive_id, str) else None,
            manufacturer=row.manufacturer if isinstance(row.manufacturer, str) else None,
            slice_thickness_mm=row.slice_thickness_mm,
            nodule_diameter_mm=row.nodule_diameter_mm,
        )
        for row in frame.itertuples(index=False)
    ]


def preprocess_one(
    storage: Storage,
    series_file: str,
    source: SampleSource,
    nodule_center_xyz_mm: tuple[float, float, float] | None,
    config: PreprocessSettings,
    preprocess_hash: str,
    dtype: str,
) -> Sample:
    """Load one series and preprocess it: the unit of parallel work (a Ray task). The crop
    centres on `nodule_center_xyz_mm`, the nodule of the version's labels (None: found in
    the lungs), not on what the series record holds."""
    series = load_series(storage, series_file, source.series_id)
    series.nodule_center_xyz_mm = nodule_center_xyz_mm
    tensor = preprocess_series(series, series.volume, config)
    return Sample.from_tensor(
        tensor, dtype, sample_id=source.series_id, preprocess_hash=preprocess_hash, **asdict(source)
    )


def reusable_shards(
    storage: Storage,
    parent: Manifest | None,
    labelled: pd.DataFrame,
    preprocess_hash: str,
    remake: Collection[str] = (),
) -> tuple[list[ShardInfo], set[str]]:
    """Parent shards whose every sample is still current, unchanged, in the same split, and
    none of it in `remake` (series whose nodule changed in the labels: another crop)."""
    if parent is None or parent.preprocess.hash != preprocess_hash:
        return [], set()
    current = {
        row.series_id: (
            row.archive_id if isinstance(row.archive_id, str) else None,  # null: a 0.1 series
            int(row.label),
            row.split,
        )
        for row in labelled.itertuples()
    }
    shards, ids = [], set()
    for shard in parent.shards:
        table = read_shard_metadata(storage, shard.path).to_pylist()
        if all(
            current.get(r["series_id"]) == (r["archive_id"], r["label"], r["split"])
            and r["series_id"] not in remake
            for r in table
        ):
            shards.append(shard)
            ids.update(r["series_id"] for r in table)
    return shards, ids


def samples_per_shard(settings: Settings) -> int:
    """How many samples fill `dataset.shard_target_mb` before compression."""
    sample_bytes = 2 if settings.dataset.tensor_dtype == "float16" else 4
    for n in tensor_shape(settings.preprocess):
        sample_bytes *= n
    return max(1, int(settings.dataset.shard_target_mb * 1024 * 1024 // sample_bytes))


def preprocess_and_shard(
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
    per_shard = samples_per_shard(settings)
    parameters = TensorParameters.for_preprocess(settings.preprocess)
    shards: list[ShardInfo] = []
    items: list[QuarantineItem] = []
    stats: list[dict[str, object]] = []
    bar = tqdm(
        total=len(todo),
        desc="preprocess",
        unit="series",
        disable=None if progress is None else not progress,
    )
    centers = {row.series_id: nodule_center(row) for row in todo.itertuples(index=False)}
    for split in SPLITS:
        sources = sample_sources(todo[todo["split"] == split].sort_values("series_id"))
        for number, start in enumerate(range(0, len(sources), per_shard)):
            jobs = [
                (
                    storage,
                    files[s.series_id],
                    s,
                    centers[s.series_id],
                    settings.preprocess,
                    preprocess_hash,
                    dtype,
                )
                for s in sources[start : start + per_shard]
            ]
            samples = []
            for sample in map_unordered(preprocess_one, jobs, settings):
                samples.append(sample)
                bar.update(1)
            checked = validate(stats_frame(samples), contract, parameters)
            items += contract_items(checked, storage, files)
            kept = [s for s in samples if s.sample_id not in checked.row_failures]
            if kept:
                rel = f"{folder}/shards/{split}-{number:05d}.parquet"
                shards.append(write_shard(storage, rel, kept, settings.dataset.compression))
                stats += stats_frame(kept).to_dict("records")
    bar.close()
    return shards, items, pd.DataFrame(stats, columns=STATS_COLUMNS)
