"""Settings: defaults, YAML file, environment overrides, masking, key rules."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from lungcls.config import ConfigError, Settings, load_settings
from lungcls.ingest.deid import LOCAL_KEY_PATH, pseudonym_key
from lungcls.io.storage import Storage


def test_defaults_are_embedded(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    settings = load_settings()
    assert settings.root == str(tmp_path / "lungcls-data")  # resolved where it was read
    assert settings.ray.executor == "ray"
    assert settings.pseudonym_key is None


def test_yaml_then_env_then_overrides(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = tmp_path / "lungcls.yaml"
    config.write_text("root: /from/yaml\ningest:\n  limits:\n    max_members: 7\n")
    settings = load_settings(config)
    assert (settings.root, settings.ingest.limits.max_members) == ("/from/yaml", 7)
    monkeypatch.setenv("LUNGCLS_INGEST__LIMITS__MAX_MEMBERS", "9")
    monkeypatch.setenv("LUNGCLS_ROOT", "s3://bucket/prefix")
    settings = load_settings(config)
    assert (settings.root, settings.ingest.limits.max_members) == ("s3://bucket/prefix", 9)
    assert load_settings(config, root="/explicit").root == "/explicit"


def test_unknown_setting_is_an_error(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("roots: /typo\n")
    with pytest.raises(ValueError, match="roots"):
        load_settings(config)


def test_missing_config_file_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LUNGCLS_CONFIG", "/no/such/file.yaml")
    with pytest.raises(ConfigError, match=re.escape("/no/such/file.yaml")):
        load_settings()


def test_secret_is_masked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LUNGCLS_PSEUDONYM_KEY", "a-very-secret-key-value")
    settings = Settings()
    assert "a-very-secret-key-value" not in settings.to_yaml()
    assert "a-very-secret-key-value" not in repr(settings)
    assert settings.masked()["pseudonym_key"] == "**********"


def test_s3_root_requires_a_key(s3_settings: Settings) -> None:
    keyless = s3_settings.model_copy(update={"pseudonym_key": None})
    with pytest.raises(ConfigError, match="LUNGCLS_PSEUDONYM_KEY"):
        pseudonym_key(keyless, Storage.from_settings(keyless))


def test_local_root_generates_a_stable_key(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = Settings(root=str(tmp_path))
    storage = Storage.from_settings(settings)
    first = pseudonym_key(settings, storage)
    assert "LUNGCLS_PSEUDONYM_KEY" in caplog.text
    assert storage.exists(LOCAL_KEY_PATH)
    assert pseudonym_key(settings, storage) == first
    assert len(first) >= 32
