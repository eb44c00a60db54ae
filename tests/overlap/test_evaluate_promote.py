"""Evaluations and promotions killed (issue 15), as real `lungcls evaluate` and `lungcls
promote` processes on a local root and on the moto S3 server: run again after `kill -9`,
they give a clean run's metrics, champion and decision, and every committed record
verifies."""

from __future__ import annotations

import signal
from pathlib import Path

from lungcls.config import Settings
from lungcls.evaluate.evaluation import evaluate_model
from lungcls.evaluate.report import REPORT, evaluation_dir
from lungcls.evaluate.store import latest_report
from lungcls.io.storage import Storage
from lungcls.registry.aliases import AliasState, read_alias
from lungcls.registry.decisions import read_decisions
from lungcls.registry.promote import CHAMPION, promote, rollback
from lungcls.registry.store import load_record
from tests.overlap.conftest import PIPELINE
from tests.overlap.harness import (
    Backend,
    KillClock,
    Runner,
    clean_run,
    collect_garbage_here,
    command,
    kill_rounds,
    kill_while_writing,
    round_note,
)
from tests.overlap.invariants import (
    assert_aliases_whole,
    assert_evaluations_verify,
    assert_models_verify,
    assert_no_orphans,
    assert_number_fresh,
    assert_root_verifies,
    evaluation_outcome,
    promotion_outcome,
    version_folders,
)
from tests.support import copy_root, make_settings

MODEL = "lung-nodule-cnn"
# `lungcls promote` or `lungcls rollback`, killed right after it moved the champion, before
# it logged its decision.
KILLED_BEFORE_LOGGING = (
    "import os, signal, sys; import lungcls.registry.promote as promotion; "
    "from lungcls.cli import main; "
    "promotion._logged = lambda storage, decision: os.kill(os.getpid(), signal.SIGKILL); "
    "main(['--config', sys.argv[1], '{command}'])"
)


def _root(backend: Backend, name: str, template: Settings) -> tuple[Settings, Storage]:
    settings = backend.settings(name, **PIPELINE)
    storage = Storage.from_settings(settings)
    copy_root(Storage.from_settings(template), storage)
    return settings, storage


def test_killed_evaluation_run_again_gives_a_clean_ones_metrics(
    backend: Backend, model_template: Settings
) -> None:
    """A clean evaluation (in this process), then per round `lungcls evaluate --force`
    killed with `kill -9` at a random point (seeded) of what the clean one spent writing, and
    the evaluation run again here: the same numbers, under an evaluation number nobody
    claimed before."""
    settings, storage = _root(backend, "root", model_template)
    runner = Runner(settings, backend.scratch / "runs")
    clean = clean_run(storage, lambda: evaluate_model(settings))
    record = load_record(storage, MODEL, 1)
    folder = evaluation_dir(record, record.dataset)
    expected = evaluation_outcome(latest_report(storage, record, record.dataset))

    clock = KillClock(f"evaluate-{backend.name}")
    for round_ in range(kill_rounds()):
        delay = clock.delay(clean)
        note = f"round {round_}: kill -9 {delay:.2f} s after the first write; {clean.describe()}"
        with round_note(note):
            before = version_folders(storage, folder, REPORT)
            kill_while_writing(runner, command("evaluate", "--force"), delay)
            rerun = evaluate_model(settings, force=True).report
            after = version_folders(storage, folder, REPORT)
            assert rerun.version is not None
            assert_number_fresh(before, after, rerun.version, created=True)
            assert evaluation_outcome(rerun) == expected
            latest = latest_report(storage, record, record.dataset)
            assert latest is not None and latest.version == rerun.version
            assert assert_evaluations_verify(storage) == sum(after.values())

    collect_garbage_here(settings)
    assert version_folders(storage, folder, REPORT) == after  # claims stay
    assert assert_evaluations_verify(storage) == sum(after.values())
    assert_no_orphans(storage, settings)
    assert_root_verifies(storage)  # every committed record, whatever the stage


def test_killed_promotion_run_again_gives_a_clean_ones_champion(
    backend: Backend, promotion_template: Settings
) -> None:
    """Champion v1 and candidate v2 (not evaluated yet): a clean promotion (in this process)
    evaluates v2, gates it against v1 and moves the champion to v2. `lungcls promote` killed
    with `kill -9` at a random point (seeded) of what the clean one spent writing, and run
    again here, ends with the same champion and the same last decision; the alias's
    pointers follow each other and name committed versions."""
    clean_settings, clean_storage = _root(backend, "clean", promotion_template)
    clean = clean_run(clean_storage, lambda: promote(clean_settings))
    expected = promotion_outcome(clean_storage, MODEL)
    assert expected == {"champion": 2, "last_outcome": "promoted", "last_candidate": 2}

    clock = KillClock(f"promote-{backend.name}")
    for round_ in range(kill_rounds()):
        settings, storage = _root(backend, f"killed-{round_}", promotion_template)
        delay = clock.delay(clean)
        note = f"round {round_}: kill -9 {delay:.2f} s after the first write; {clean.describe()}"
        with round_note(note):
            runner = Runner(settings, backend.scratch / f"killed-{round_}")
            kill_while_writing(runner, command("promote"), delay)
            promote(settings)
            assert promotion_outcome(storage, MODEL) == expected
            assert_aliases_whole(storage, MODEL)
            assert assert_models_verify(storage) == 2
            assert assert_evaluations_verify(storage) >= 2

    collect_garbage_here(settings)
    assert promotion_outcome(storage, MODEL) == expected
    assert_models_verify(storage)
    assert_evaluations_verify(storage)
    assert_no_orphans(storage, settings)
    assert_root_verifies(storage)  # every committed record, whatever the stage


def test_a_promotion_killed_between_moving_and_logging_is_logged_by_its_rerun(
    tmp_path: Path, promotion_template: Settings
) -> None:
    """The one point of a promotion that random kills hardly ever hit: the champion moved,
    its decision not logged yet. The rerun logs that move's decision, under the id the
    pointer names, against the champion it replaced, with every gate (local root only:
    nothing here depends on the store)."""
    settings = make_settings(tmp_path / "root", tmp_path, **PIPELINE)
    storage = Storage.from_settings(settings)
    copy_root(Storage.from_settings(promotion_template), storage)
    killed = Runner(settings, tmp_path / "runs").start_python(
        "promote", KILLED_BEFORE_LOGGING.format(command="promote")
    )
    assert killed.popen.wait() == -signal.SIGKILL
    moved = read_alias(storage, MODEL, CHAMPION)
    assert (moved.previous_version, moved.version) == (1, 2)
    assert moved.decision not in {d.id for d in read_decisions(storage, MODEL)}

    decision = promote(settings)
    assert decision.id == moved.decision and decision.outcome == "promoted"
    assert (decision.champion_before, decision.champion_after) == (1, 2)
    assert "non_inferiority" in {gate.name for gate in decision.gates}
    assert read_alias(storage, MODEL, CHAMPION) == moved  # nothing moved again
    assert_aliases_whole(storage, MODEL)
    assert promote(settings).champion_before == 2  # logged now: an ordinary rerun again


def test_a_rollback_killed_between_moving_and_logging_is_logged_and_not_repeated(
    tmp_path: Path, promotion_template: Settings
) -> None:
    """Champion v2 after v1. `lungcls rollback` killed after it moved the champion back to
    v1, before logging: its rerun logs that rollback under the pointer's id and does not roll
    back a second time. A second killed rollback (back to v2) is logged by the promotion
    that follows it, before that promotion decides (local root only)."""
    settings = make_settings(tmp_path / "root", tmp_path, **PIPELINE)
    storage = Storage.from_settings(settings)
    copy_root(Storage.from_settings(promotion_template), storage)
    assert promote(settings).champion_after == 2
    runner = Runner(settings, tmp_path / "runs")

    def killed_rollback() -> AliasState:
        code = KILLED_BEFORE_LOGGING.format(command="rollback")
        assert runner.start_python("rollback", code).popen.wait() == -signal.SIGKILL
        moved = read_alias(storage, MODEL, CHAMPION)
        assert moved.action == "rollback"
        assert moved.decision not in {d.id for d in read_decisions(storage, MODEL)}
        return moved

    moved = killed_rollback()
    assert (moved.previous_version, moved.version) == (2, 1)
    decision = rollback(settings)
    assert (decision.id, decision.outcome) == (moved.decision, "rolled_back")
    assert (decision.champion_before, decision.champion_after) == (2, 1)
    assert read_alias(storage, MODEL, CHAMPION) == moved  # not rolled back twice
    assert_aliases_whole(storage, MODEL)

    moved = killed_rollback()
    assert (moved.previous_version, moved.version) == (1, 2)
    promoted = promote(settings)  # v2, the champion already
    assert (promoted.outcome, promoted.champion_before, promoted.champion_after) == (
        "promoted",
        2,
        2,
    )
    last_two = read_decisions(storage, MODEL)[-2:]
    assert [(d.id, d.action) for d in last_two] == [
        (moved.decision, "rollback"),
        (promoted.id, "promote"),
    ]
    assert_aliases_whole(storage, MODEL)
