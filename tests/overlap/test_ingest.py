"""Ingests at once and ingests killed (issue 15), as real `lungcls ingest` processes on a
local root and on the moto S3 server: every delivered archive ends up in the ledger, each
series once, and a run killed with `kill -9` and run again gives what a clean run gives."""

from __future__ import annotations

from lungcls.ingest.deid import pseudonym
from lungcls.ingest.run import ingest
from lungcls.io.storage import Storage
from lungcls.sources.synth import SynthOptions, synth_batch
from tests.overlap.harness import (
    Backend,
    KillClock,
    Runner,
    clean_run,
    collect_garbage,
    collect_garbage_here,
    command,
    kill_rounds,
    kill_while_writing,
    overlap_rounds,
    round_note,
    wait_all,
)
from tests.overlap.invariants import (
    assert_ledger_whole,
    assert_no_orphans,
    assert_root_verifies,
    ingest_outcome,
)
from tests.support import TEST_KEY


def tiny(seed: int, scans: int = 3) -> SynthOptions:
    """A few small scans; each batch its own seed, so that no two batches share a series."""
    return SynthOptions(
        scans=scans,
        slices=8,
        rows=24,
        columns=24,
        pixel_spacing_mm=12.0,
        slice_spacing_mm=8.0,
        seed=seed,
    )


def deliver(storage: Storage, batch: str, options: SynthOptions) -> tuple[set[str], set[str]]:
    """Write a synthetic batch; its archives and the pseudonyms of its series."""
    scans = synth_batch(storage, batch, options)
    series = {pseudonym(TEST_KEY.encode(), "series", s.scan.series_uid) for s in scans}
    return {s.archive for s in scans}, series


def test_ingests_at_once_record_every_archive_and_each_series_once(backend: Backend) -> None:
    """Each round delivers two batches and starts three ingests together: two of one batch,
    one of the other. Whichever ingest of the batch comes first ingests it; the other
    finds it done."""
    settings = backend.settings("root")
    storage = Storage.from_settings(settings)
    runner = Runner(settings, backend.scratch / "runs")
    archives: set[str] = set()
    series: set[str] = set()
    for round_ in range(overlap_rounds()):
        with round_note(f"round {round_}"):
            batches = [f"r{round_}-a", f"r{round_}-b"]
            new: set[str] = set()
            for index, batch in enumerate(batches):
                delivered, made = deliver(storage, batch, tiny(seed=1000 + 2 * round_ + index))
                new |= delivered
                series |= made
            archives |= new
            procs = [runner.start("ingest", "--batch", b, "--json") for b in batches[:1] * 2]
            procs.append(runner.start("ingest", "--batch", batches[1], "--json"))
            summaries = [proc.json() for proc in wait_all(procs)]
            assert sum(s["archives_ingested"] for s in summaries) == len(new)  # each once
            assert [s["archives_rejected"] for s in summaries] == [0, 0, 0]
            assert_ledger_whole(storage, archives, series)

    collect_garbage(runner)
    assert_ledger_whole(storage, archives, series)
    assert_no_orphans(storage, settings)
    assert_root_verifies(storage)  # every committed record, whatever the stage


def test_killed_ingest_run_again_gives_what_a_clean_run_gives(backend: Backend) -> None:
    """A clean ingest (in this process), then per round the same batch on a root of its own:
    `lungcls ingest` killed with `kill -9` at a random point (seeded) of what the clean run
    spent writing, and the ingest run again here: the ledger's rows and the series they own
    equal the clean run's."""
    options = tiny(seed=2000, scans=16)
    clean_settings = backend.settings("clean")
    clean_storage = Storage.from_settings(clean_settings)
    archives, series = deliver(clean_storage, "b", options)
    clean = clean_run(clean_storage, lambda: ingest(clean_settings, progress=False))
    expected = ingest_outcome(clean_storage)
    assert sorted(expected["series"]) == sorted(series)

    clock = KillClock(f"ingest-{backend.name}")
    for round_ in range(kill_rounds()):
        settings = backend.settings(f"killed-{round_}")
        storage = Storage.from_settings(settings)
        deliver(storage, "b", options)  # the same seed: byte-identical archives
        delay = clock.delay(clean)
        note = f"round {round_}: kill -9 {delay:.2f} s after the first write; {clean.describe()}"
        with round_note(note):
            runner = Runner(settings, backend.scratch / f"killed-{round_}")
            kill_while_writing(runner, command("ingest"), delay)
            ingest(settings, progress=False)
            assert_ledger_whole(storage, archives, series)
            assert ingest_outcome(storage) == expected

    # What the killed runs left (series files no row names, staged slices) is garbage.
    collect_garbage_here(settings)
    assert_ledger_whole(storage, archives, series)
    assert ingest_outcome(storage) == expected
    assert_no_orphans(storage, settings)
    assert_root_verifies(storage)  # every committed record, whatever the stage
