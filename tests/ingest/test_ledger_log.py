"""The ingest ledger as an append-only log: two ingests at once keep every row (real
`lungcls ingest` processes, on a local root and on the moto S3 server), a checkpoint never
changes what loading gives, and a ledger written before the log still loads."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lungcls.config import Settings
from lungcls.ingest.deid import pseudonym
from lungcls.ingest.ledger import (
    CHECKPOINT_DIR,
    COMPACT_EVERY,
    LEGACY_PATH,
    LOG_DIR,
    Ledger,
    LedgerEntry,
    compacted_segments,
)
from lungcls.ingest.series_store import read_series_index
from lungcls.io.records import RecordError
from lungcls.io.storage import Storage
from lungcls.sources.synth import SynthOptions, SynthScan, synth_batch
from tests.support import OLD_ROOT, TEST_KEY

KEY = TEST_KEY.encode()


def tiny(seed: int) -> SynthOptions:
    """A few small scans; each batch its own seed, so that no two batches share a series."""
    return SynthOptions(
        scans=3,
        slices=8,
        rows=24,
        columns=24,
        pixel_spacing_mm=12.0,
        slice_spacing_mm=8.0,
        seed=seed,
    )


def entry(archive: str, sha: str, run_id: str, series: list[str] | None = None) -> LedgerEntry:
    return LedgerEntry(
        archive=archive,
        batch=archive.split("/")[1],
        kind="zip",
        size=1,
        version_tag=f"tag-{sha}",
        sha256=sha,
        status="ingested",
        reason_code="",
        series_file="",
        series_ids=series or [],
        run_id=run_id,
    )


# -- two real ingests at once ---------------------------------------------------------------


def ingest_at_once(settings: Settings, batches: list[str], tmp_path: Path) -> list[dict]:
    """Start one `lungcls ingest --batch B --json` process per batch together; their summaries."""
    env = {**os.environ, "LUNGCLS_PSEUDONYM_KEY": TEST_KEY, "LUNGCLS_WORK_DIR": str(tmp_path)}
    if settings.s3_endpoint_url:
        env["LUNGCLS_S3_ENDPOINT_URL"] = settings.s3_endpoint_url
    command = [sys.executable, "-m", "lungcls.cli", "--root", settings.root]
    command += ["--executor", "local", "ingest", "--json"]
    processes = [
        subprocess.Popen(
            [*command, "--batch", batch],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for batch in batches
    ]
    outputs = [process.communicate(timeout=600) for process in processes]
    for process, (_, stderr) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, stderr[-3000:]
    return [json.loads(stdout) for stdout, _ in outputs]


def log_rows(storage: Storage) -> dict[int, list[dict]]:
    """Seq -> the rows of that segment, as stored."""
    segments = {}
    for info in storage.list_files(LOG_DIR):
        name = info.path.rsplit("/", 1)[-1]
        if not name.startswith("."):
            with storage.open(info.path, "rb") as f:
                segments[int(name.removesuffix(".parquet"))] = pq.read_table(f).to_pylist()
    return segments


def assert_whole(storage: Storage, delivered: dict[str, list[SynthScan]], runs: list[dict]) -> None:
    """Every delivered archive current in the ledger, each series owned by one current row
    and stored once; segments numbered 1..n, each written whole by one run."""
    ledger = Ledger.load(storage)
    for scans in delivered.values():
        for archive in {s.archive for s in scans}:
            current = ledger.current(archive)
            assert current is not None and current.status == "ingested", archive
    expected = {pseudonym(KEY, "series", s.scan.series_uid) for v in delivered.values() for s in v}
    owned = Counter(
        series_id for e in ledger.entries if e.status == "ingested" for series_id in e.series_ids
    )
    assert set(owned) == expected and set(owned.values()) == {1}
    stored = [row["series_id"] for row in read_series_index(storage).to_pylist()]
    assert sorted(stored) == sorted(expected)

    segments = log_rows(storage)
    assert sorted(segments) == list(range(1, len(segments) + 1))  # no seq lost or shared
    for seq, rows in segments.items():
        assert {row["seq"] for row in rows} == {seq}
        assert len({row["run_id"] for row in rows}) == 1  # one writer per segment
    appended = Counter(row["run_id"] for rows in segments.values() for row in rows)
    for run in runs:  # nothing a run appended was overwritten by the other
        assert appended[run["run_id"]] == run["archives_ingested"] + run["archives_rejected"]
    per_archive = Counter(row["archive"] for rows in segments.values() for row in rows)
    assert set(per_archive.values()) == {1}  # each archive version recorded once


def test_two_ingests_of_different_batches_at_once_keep_both(
    settings: Settings, storage: Storage, tmp_path: Path
) -> None:
    delivered: dict[str, list[SynthScan]] = {}
    for round_ in range(3):
        batches = [f"r{round_}-a", f"r{round_}-b"]
        for index, batch in enumerate(batches):
            delivered[batch] = synth_batch(storage, batch, tiny(seed=100 + 2 * round_ + index))
        runs = ingest_at_once(settings, batches, tmp_path)
        assert [r["archives_rejected"] for r in runs] == [0, 0]
        assert_whole(storage, delivered, runs)


def test_two_ingests_at_once_on_s3_keep_both(s3_settings: Settings, tmp_path: Path) -> None:
    """Real processes here too: they reach the moto server through the environment."""
    storage = Storage.from_settings(s3_settings)
    delivered = {b: synth_batch(storage, b, tiny(seed=200 + i)) for i, b in enumerate("xy")}
    runs = ingest_at_once(s3_settings, ["x", "y"], tmp_path)
    assert_whole(storage, delivered, runs)


def test_two_ingests_of_the_same_batch_at_once_record_each_archive_once(
    settings: Settings, storage: Storage, tmp_path: Path
) -> None:
    delivered = {"same": synth_batch(storage, "same", tiny(seed=300))}
    runs = ingest_at_once(settings, ["same", "same"], tmp_path)
    segments = log_rows(storage)
    appended = Counter(row["run_id"] for rows in segments.values() for row in rows)
    # Whichever run recorded an archive first keeps it; the other's rows are left out.
    assert sum(appended.values()) == len({s.archive for s in delivered["same"]})
    assert set(appended) <= {r["run_id"] for r in runs}
    ledger = Ledger.load(storage)
    owned = Counter(s for e in ledger.entries if e.status == "ingested" for s in e.series_ids)
    assert len(owned) == 3 and set(owned.values()) == {1}


# -- the log in one process, two ledgers ------------------------------------------------------


def test_a_writer_that_loses_the_race_for_a_seq_takes_the_next(storage: Storage) -> None:
    first, second = Ledger.load(storage), Ledger.load(storage)
    first.record(entry("inbox/b/a.zip", "1", "run-a", ["s-a"]))
    second.record(entry("inbox/b/b.zip", "2", "run-b", ["s-b"]))
    assert first.save(storage) == [] and second.save(storage) == []  # second: seq 1 taken
    assert {seq: [r["run_id"] for r in rows] for seq, rows in log_rows(storage).items()} == {
        1: ["run-a"],
        2: ["run-b"],
    }
    loaded = Ledger.load(storage)
    assert [e.archive for e in loaded.entries] == ["inbox/b/a.zip", "inbox/b/b.zip"]
    assert second.entries == loaded.entries  # the writer read what it lost the race to


def test_the_same_archive_version_recorded_meanwhile_counts_once(storage: Storage) -> None:
    first, second = Ledger.load(storage), Ledger.load(storage)
    first.record(entry("inbox/b/a.zip", "1", "run-a", ["s-a"]))
    first.save(storage)
    second.refresh(storage)
    assert second.recorded_meanwhile("inbox/b/a.zip", "1", "run-b") is not None
    assert second.recorded_meanwhile("inbox/b/a.zip", "other bytes", "run-b") is None
    assert first.recorded_meanwhile("inbox/b/a.zip", "1", "run-a") is None  # its own row
    # A group holding that archive and another is left out whole (the other: next run).
    duplicate = entry("inbox/b/a.zip", "1", "run-b", ["s-a"])
    second.record(duplicate, entry("inbox/b/c.zip", "3", "run-b", ["s-c"]))
    second.record(entry("inbox/b/d.zip", "4", "run-b", ["s-d"]))
    dropped = second.save(storage)
    assert [e.archive for e in dropped] == ["inbox/b/a.zip", "inbox/b/c.zip"]
    loaded = Ledger.load(storage)
    assert [(e.archive, e.run_id) for e in loaded.entries] == [
        ("inbox/b/a.zip", "run-a"),
        ("inbox/b/d.zip", "run-b"),
    ]
    assert loaded.entries == second.entries


def test_new_versions_and_retags_fold_in_log_order(storage: Storage) -> None:
    ledger = Ledger.load(storage)
    ledger.record(entry("inbox/b/a.zip", "1", "run-a", ["s-1"]))
    ledger.save(storage)
    ledger.retag("inbox/b/a.zip", "touched")
    ledger.save(storage)
    other = Ledger.load(storage)
    assert other.current("inbox/b/a.zip").version_tag == "touched"
    assert len(other.entries) == 1
    # A new version appended by another run, then a retag made for the old bytes: the
    # retag does not apply to the new version.
    other.record(entry("inbox/b/a.zip", "2", "run-b", ["s-2"]))
    ledger.retag("inbox/b/a.zip", "stale")
    other.save(storage)
    ledger.save(storage)
    loaded = Ledger.load(storage)
    assert [(e.sha256, e.status, e.version_tag) for e in loaded.entries] == [
        ("1", "superseded", "touched"),
        ("2", "ingested", "tag-2"),
    ]
    assert loaded.owners() == {"s-2": loaded.current("inbox/b/a.zip")}
    assert [r["row_kind"] for rows in log_rows(storage).values() for r in rows] == [
        "entry",
        "retag",
        "entry",
        "retag",
    ]


def test_checkpoints_change_nothing_loading_gives(storage: Storage, tmp_path: Path) -> None:
    writer = Ledger.load(storage)
    readers: dict[int, Ledger] = {}  # loaded at some step, refreshed after gc
    for step in range(2 * COMPACT_EVERY):
        # New archives, new versions, and retags (of the archive recorded a step before).
        if step % 5 == 4:
            writer.retag(f"inbox/b/{(step - 1) % 7}.zip", f"touched-{step}")
        else:
            archive = f"inbox/b/{step % 7}.zip"
            writer.record(entry(archive, str(step), f"run-{step}", [f"s-{step}"]))
        writer.save(storage)  # segment step + 1
        if step % 12 == 0 or (step + 1) % COMPACT_EVERY in (0, 1, COMPACT_EVERY - 1):
            assert Ledger.load(storage).entries == writer.entries
        if step in (10, 60):
            readers[step] = Ledger.load(storage)
    checkpoints = storage.list_files(CHECKPOINT_DIR)
    assert [c.path.rsplit("/", 1)[-1] for c in checkpoints] == [
        f"{COMPACT_EVERY:012d}.parquet",
        f"{2 * COMPACT_EVERY:012d}.parquet",
    ]
    # The log alone, without its checkpoints, loads the same.
    bare = tmp_path / "bare"
    shutil.copytree(Path(storage.path(LOG_DIR)), bare / LOG_DIR)
    assert Ledger.load(Storage(str(bare))).entries == writer.entries
    # Garbage collection may remove what the latest checkpoint holds: loading is the same,
    # and a ledger read before that catches up through the checkpoint, whether no segment
    # is left at all or later ones are.
    compacted = compacted_segments(storage)
    assert len(compacted) == 2 * COMPACT_EVERY
    for rel in compacted:
        storage.remove(rel)
    assert storage.list_files(LOG_DIR) == [] and compacted_segments(storage) == []
    assert Ledger.load(storage).entries == writer.entries
    assert readers[10].entries != writer.entries
    readers[10].refresh(storage)
    assert readers[10].entries == writer.entries
    writer.record(entry("inbox/b/late.zip", "late", "run-late"))
    writer.save(storage)
    readers[60].refresh(storage)
    assert readers[60].entries == writer.entries == Ledger.load(storage).entries


def test_a_ledger_written_before_the_log_loads_and_grows(tmp_path: Path) -> None:
    root = tmp_path / "root"
    shutil.copytree(OLD_ROOT / "ledger", root / "ledger")
    storage = Storage(str(root))
    legacy = storage.read_bytes(LEGACY_PATH)
    old = Ledger.load(storage)
    assert len(old.entries) == 28 and {e.status for e in old.entries} == {"ingested"}
    target = old.entries[0]
    old.record(entry(target.archive, "new bytes", "run-new", ["s-new"]))
    old.save(storage)
    for step in range(COMPACT_EVERY):  # up to the first checkpoint
        old.record(entry(f"inbox/later/{step}.zip", str(step), "run-later"))
        old.save(storage)
    assert storage.exists(f"{CHECKPOINT_DIR}/{COMPACT_EVERY:012d}.parquet")
    assert storage.read_bytes(LEGACY_PATH) == legacy  # never written again
    loaded = Ledger.load(storage)
    assert loaded.entries == old.entries and len(loaded.entries) == 28 + 1 + COMPACT_EVERY
    assert loaded.entries[0].status == "superseded"
    assert loaded.current(target.archive).sha256 == "new bytes"
    assert "s-new" in loaded.owners() and set(target.series_ids).isdisjoint(loaded.owners())


def test_a_segment_with_an_unknown_column_is_refused_by_name(storage: Storage) -> None:
    ledger = Ledger.load(storage)
    ledger.record(entry("inbox/b/a.zip", "1", "run-a"))
    ledger.save(storage)
    rel = f"{LOG_DIR}/{1:012d}.parquet"
    with storage.open(rel, "rb") as f:
        table = pq.read_table(f)
    with storage.open(rel, "wb") as f:
        pq.write_table(table.append_column("owner", pa.array(["x"])), f)
    with pytest.raises(RecordError, match=r"log/000000000001\.parquet: not a ledger .*'owner'"):
        Ledger.load(storage)


def test_a_segment_another_process_appended_on_s3_is_seen(s3_settings: Settings) -> None:
    """s3fs caches listings per process: the log must be listed afresh each time."""
    storage = Storage.from_settings(s3_settings)
    storage.write_atomic("ledger/pseudonym-key.json", b"{}")
    mine = Ledger.load(storage)
    assert [i.path for i in storage.list_files("ledger")] == ["ledger/pseudonym-key.json"]
    append = (
        "import sys; from lungcls.io.storage import Storage; "
        "from tests.ingest.test_ledger_log import Ledger, entry; "
        "storage = Storage(sys.argv[1], sys.argv[2]); ledger = Ledger.load(storage); "
        "ledger.record(entry('inbox/b/theirs.zip', '1', 'run-theirs')); ledger.save(storage)"
    )
    command = [sys.executable, "-c", append, s3_settings.root, str(s3_settings.s3_endpoint_url)]
    subprocess.run(command, check=True, timeout=300)
    mine.refresh(storage)
    assert mine.current("inbox/b/theirs.zip") is not None
    mine.record(entry("inbox/b/mine.zip", "2", "run-mine"))
    assert mine.save(storage) == []
    assert sorted(log_rows(storage)) == [1, 2]
