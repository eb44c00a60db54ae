"""Dataset builds at once and builds killed (issue 15), as real `lungcls dataset build`
processes on a local root and on the moto S3 server: every manifest's shards exist with its
SHA-256s, every number is committed by the build that claimed it, and a build killed with
`kill -9` and run again commits the manifest of a clean build (under a number of its own)."""

from __future__ import annotations

from dataclasses import replace

from lungcls.config import Settings
from lungcls.dataset.build import build_dataset
from lungcls.dataset.manifest import MANIFEST, list_versions, load_manifest
from lungcls.ingest.run import ingest
from lungcls.io.storage import Storage
from lungcls.sources.synth import synth_batch
from tests.overlap.conftest import PIPELINE, PIPELINE_SCANS
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
    assert_datasets_verify,
    assert_no_orphans,
    assert_number_fresh,
    assert_root_verifies,
    manifest_outcome,
    version_folders,
)
from tests.support import copy_root

DATASET = "datasets/lung-nodules"


def _root(backend: Backend, name: str, template: Settings) -> tuple[Settings, Storage]:
    """A root of the backend holding the template's ingested series."""
    settings = backend.settings(name, **PIPELINE)
    storage = Storage.from_settings(settings)
    copy_root(Storage.from_settings(template), storage)
    return settings, storage


def test_builds_at_once_commit_each_version_once(
    backend: Backend, ingested_template: Settings
) -> None:
    """Each round ingests a new batch and starts two builds together: one builds the next
    version, the other waits for it and finds its inputs built."""
    settings, storage = _root(backend, "root", ingested_template)
    runner = Runner(settings, backend.scratch / "runs")
    for round_ in range(overlap_rounds()):
        with round_note(f"round {round_}"):
            more = replace(PIPELINE_SCANS, scans=4, seed=3000 + round_)
            synth_batch(storage, f"more-{round_}", more)
            ingest(settings, progress=False)
            before = list_versions(storage, "lung-nodules")
            procs = [runner.start("dataset", "build", "--json") for _ in range(2)]
            summaries = [proc.json() for proc in wait_all(procs)]
            made = [s["version"] for s in summaries if s["created"]]
            assert len(made) == 1 and made[0] not in before, summaries
            assert {s["version"] for s in summaries} == set(made)  # the other: up to date
            assert list_versions(storage, "lung-nodules") == [*before, made[0]]
            assert assert_datasets_verify(storage) == len(before) + 1

    collect_garbage(runner)
    assert assert_datasets_verify(storage) == overlap_rounds()
    assert_no_orphans(storage, settings)
    assert_root_verifies(storage)  # every committed record, whatever the stage


def test_killed_build_run_again_commits_a_clean_builds_manifest(
    backend: Backend, ingested_template: Settings
) -> None:
    """A clean build (in this process), then per round the same series on a root of its
    own: `lungcls dataset build` killed with `kill -9` at a random point (seeded) of what the
    clean build spent writing, and the build run again here: its manifest equals the clean
    one but for the version number, and the number is one nobody claimed before (a killed
    build's is never reused)."""
    clean_settings, clean_storage = _root(backend, "clean", ingested_template)
    clean = clean_run(clean_storage, lambda: build_dataset(clean_settings, progress=False))
    expected = manifest_outcome(load_manifest(clean_storage, "lung-nodules"))

    clock = KillClock(f"build-{backend.name}")
    for round_ in range(kill_rounds()):
        settings, storage = _root(backend, f"killed-{round_}", ingested_template)
        delay = clock.delay(clean)
        note = f"round {round_}: kill -9 {delay:.2f} s after the first write; {clean.describe()}"
        with round_note(note):
            runner = Runner(settings, backend.scratch / f"killed-{round_}")
            before = version_folders(storage, DATASET, MANIFEST)
            kill_while_writing(runner, command("dataset", "build"), delay)
            summary = build_dataset(settings, progress=False)
            after = version_folders(storage, DATASET, MANIFEST)
            assert_number_fresh(before, after, summary.version, summary.created)
            assert manifest_outcome(load_manifest(storage, "lung-nodules")) == expected
            assert assert_datasets_verify(storage) == 1

    # The killed build's folder goes to gc; its claim stays, so its number stays taken.
    collect_garbage_here(settings)
    assert version_folders(storage, DATASET, MANIFEST) == after
    assert manifest_outcome(load_manifest(storage, "lung-nodules")) == expected
    assert assert_datasets_verify(storage) == 1
    assert_no_orphans(storage, settings)
    assert_root_verifies(storage)  # every committed record, whatever the stage
