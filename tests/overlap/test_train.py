"""Trainings at once and publishing killed (issue 15), on a local root and on the moto S3
server: every committed model version's files match its record, no number is used twice,
and a publish killed with `kill -9` and run again gives the weights of a clean run."""

from __future__ import annotations

from lungcls.config import Settings
from lungcls.io.storage import Storage
from lungcls.registry.store import RECORD, list_model_versions, load_record
from tests.overlap.conftest import PIPELINE
from tests.overlap.harness import (
    STRESS,
    Backend,
    KillClock,
    Proc,
    Runner,
    clean_run,
    collect_garbage,
    collect_garbage_here,
    command,
    kill_rounds,
    kill_while_writing,
    overlap_rounds,
    python,
    round_note,
    wait_all,
)
from tests.overlap.invariants import (
    assert_models_verify,
    assert_no_orphans,
    assert_number_fresh,
    assert_root_verifies,
    model_weights,
    version_folders,
)
from tests.support import copy_root, train_in_process

MODEL = "lung-nodule-cnn"
MODELS = f"models/{MODEL}"
# Trains without Ray and publishes through the library's `publish_model` (claim, files,
# model.json last, under the train-publish lease), as its own process.
PUBLISH = (
    "import sys; from lungcls.config import load_settings; "
    "from tests.support import train_in_process; "
    "print(train_in_process(load_settings(sys.argv[1]), steps=3))"
)
# What the tests start (and the publish kill test kills): a real `lungcls train` under
# `make stress`.
LAUNCH = command("train", "--json") if STRESS else python("publish", PUBLISH)


def _root(backend: Backend, name: str, template: Settings) -> tuple[Settings, Storage]:
    """A root of the backend holding the template's dataset version."""
    settings = backend.settings(name, **PIPELINE)
    storage = Storage.from_settings(settings)
    copy_root(Storage.from_settings(template), storage)
    return settings, storage


def test_trainings_at_once_publish_a_version_each(
    backend: Backend, dataset_template: Settings
) -> None:
    """Each round starts two trainings together: each publishes a version of its own, and
    both have the same weights. In the regular suite they train without Ray and publish
    through the library's `publish_model` (claim, files, `model.json` last, under the
    publish lease); with LUNGCLS_STRESS=1 (`make stress`) they are real `lungcls train` runs
    (Ray Train, one worker, one seed), which take a minute a round on 2 cores."""
    settings, storage = _root(backend, "root", dataset_template)
    runner = Runner(settings, backend.scratch / "runs")
    for round_ in range(overlap_rounds()):
        with round_note(f"round {round_}"):
            before = list_model_versions(storage, MODEL)
            published = [_published(proc) for proc in wait_all([LAUNCH(runner), LAUNCH(runner)])]
            versions = sorted(version for version, _ in published)
            assert versions == [len(before) + 1, len(before) + 2], published
            for version, run_id in published:
                assert run_id is None or load_record(storage, MODEL, version).train_run == run_id
            assert assert_models_verify(storage) == len(before) + 2
            first, second = (model_weights(storage, MODEL, v) for v in versions)
            assert first == second

    collect_garbage(runner)
    assert assert_models_verify(storage) == 2 * overlap_rounds()
    assert_no_orphans(storage, settings)
    assert_root_verifies(storage)  # every committed record, whatever the stage


def test_killed_publish_run_again_gives_a_clean_runs_weights(
    backend: Backend, dataset_template: Settings
) -> None:
    """`kill -9` at a random point (seeded) of what a clean run spent writing, then the same
    run again: the weights equal the clean run's, under a number nobody claimed before.

    In the regular suite the killed process trains without Ray and publishes through the
    library's `publish_model` (`tests.support.train_in_process`, deterministic), and the
    clean run and the rerun run in this process; with LUNGCLS_STRESS=1 (`make stress`) all
    three are real `lungcls train` runs (Ray Train, one worker, one seed)."""
    clean_settings, clean_storage = _root(backend, "clean", dataset_template)
    clean_runner = Runner(clean_settings, backend.scratch / "clean")
    clean = clean_run(clean_storage, lambda: _rerun(clean_runner, clean_settings))
    expected = model_weights(clean_storage, MODEL, 1)

    clock = KillClock(f"publish-{backend.name}")
    for round_ in range(kill_rounds()):
        settings, storage = _root(backend, f"killed-{round_}", dataset_template)
        delay = clock.delay(clean)
        note = f"round {round_}: kill -9 {delay:.2f} s after the first write; {clean.describe()}"
        with round_note(note):
            runner = Runner(settings, backend.scratch / f"killed-{round_}")
            before = version_folders(storage, MODELS, RECORD)
            kill_while_writing(runner, LAUNCH, delay)
            version = _rerun(runner, settings)
            after = version_folders(storage, MODELS, RECORD)
            assert_number_fresh(before, after, version, created=True)
            assert model_weights(storage, MODEL, version) == expected
            assert assert_models_verify(storage) in (1, 2)  # 2: the kill came after the commit

    collect_garbage_here(settings)
    assert version_folders(storage, MODELS, RECORD) == after
    assert model_weights(storage, MODEL, version) == expected
    assert_models_verify(storage)
    assert_no_orphans(storage, settings)
    assert_root_verifies(storage)  # every committed record, whatever the stage


def _published(proc: Proc) -> tuple[int, str | None]:
    """The version a finished training published, and its Ray Train run (None without Ray)."""
    if STRESS:
        result = proc.json()
        return int(result["model_version"]), str(result["run_id"])  # type: ignore[call-overload]
    return int(proc.stdout().strip().splitlines()[-1]), None


def _rerun(runner: Runner, settings: Settings) -> int:
    """A clean run or a rerun to its end; the version it published."""
    if STRESS:
        return int(runner.run("train", "--json").json()["model_version"])
    return train_in_process(settings, steps=3)
