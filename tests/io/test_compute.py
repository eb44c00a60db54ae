"""`ensure_ray` starts a local Ray again when its raylet missed Ray's startup window.

The fault itself (Ray's fixed 30 s for a raylet to register, missed on a loaded machine)
cannot be produced on demand, so `ray.init` is replaced here by a stand-in that raises
Ray's own message; nothing else is faked, and no Ray is started.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import ray

from lungcls.io.compute import RAY_START_ATTEMPTS, ensure_ray
from tests.support import make_settings

RAY_MESSAGE = (
    "The current node timed out during startup. This could happen because some of the "
    "raylet failed to startup or the GCS has become overloaded."
)


def _init_failing(times: int, message: str, calls: list[dict]):
    def init(**options):
        calls.append(options)
        if len(calls) <= times:
            raise Exception(message)  # what Ray raises: a bare Exception

    return init


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    return make_settings(tmp_path, tmp_path, ray={"executor": "ray", "num_cpus": 1})


def test_a_raylet_that_missed_the_window_is_started_again(
    settings, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[dict] = []
    monkeypatch.setattr(ray, "init", _init_failing(RAY_START_ATTEMPTS - 1, RAY_MESSAGE, calls))
    ensure_ray(settings)
    assert len(calls) == RAY_START_ATTEMPTS and calls[0] == calls[-1]
    assert "starting it again" in caplog.text


def test_it_gives_up_after_the_last_attempt_and_other_errors_are_not_retried(
    settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[dict] = []
    monkeypatch.setattr(ray, "init", _init_failing(RAY_START_ATTEMPTS, RAY_MESSAGE, calls))
    with pytest.raises(Exception, match="timed out during startup"):
        ensure_ray(settings)
    assert len(calls) == RAY_START_ATTEMPTS
    other: list[dict] = []
    monkeypatch.setattr(ray, "init", _init_failing(1, "port 6379 is in use", other))
    with pytest.raises(Exception, match="in use"):
        ensure_ray(settings)
    assert len(other) == 1
