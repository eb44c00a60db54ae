"""Pseudonym keys: one key per root (its fingerprint in the ledger), the public demo key only
on a demo root, a generated key file readable by its owner only."""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path

import pytest
from pydantic import SecretStr

from lungcls.cli import main
from lungcls.config import Settings
from lungcls.dataset.build import build_dataset
from lungcls.ingest.deid import (
    KEY_FINGERPRINT_PATH,
    LOCAL_KEY_PATH,
    KeyRefused,
    key_fingerprint,
    pseudonym_key,
)
from lungcls.ingest.ledger import LOG_DIR
from lungcls.ingest.run import ingest
from lungcls.io.storage import Storage
from lungcls.sources.demo import (
    DEMO_BATCH,
    DEMO_MARKER,
    DEMO_PSEUDONYM_KEY,
    ensure_demo_batch,
)
from lungcls.sources.synth import SynthOptions, synth_batch
from tests.support import TEST_KEY

OTHER_KEY = "another-pseudonym-key-9876543210"
TINY = SynthOptions(
    scans=4, slices=8, rows=32, columns=32, pixel_spacing_mm=9.0, slice_spacing_mm=8.0, seed=3
)


def with_key(settings: Settings, key: str | None) -> Settings:
    secret = SecretStr(key) if key is not None else None
    return settings.model_copy(update={"pseudonym_key": secret})


def test_the_first_use_records_the_fingerprint_and_another_key_is_refused(
    settings: Settings, storage: Storage
) -> None:
    key = pseudonym_key(settings, storage)
    assert key == TEST_KEY.encode()
    recorded = json.loads(storage.read_bytes(KEY_FINGERPRINT_PATH))
    assert recorded["schema"] == "lungcls.pseudonym-key/1"
    assert recorded["fingerprint"] == key_fingerprint(key) and len(recorded["fingerprint"]) == 16
    assert recorded["key_source"] == "LUNGCLS_PSEUDONYM_KEY"
    assert TEST_KEY not in storage.read_text(KEY_FINGERPRINT_PATH)
    before = storage.read_bytes(KEY_FINGERPRINT_PATH)
    assert pseudonym_key(settings, storage) == key  # the same key again: fine, not rewritten
    assert storage.read_bytes(KEY_FINGERPRINT_PATH) == before

    with pytest.raises(KeyRefused) as refused:
        pseudonym_key(with_key(settings, OTHER_KEY), storage)
    assert refused.value.code == "pseudonym_key_mismatch"
    message = str(refused.value)
    assert recorded["fingerprint"] in message and key_fingerprint(OTHER_KEY.encode()) in message
    assert "LUNGCLS_PSEUDONYM_KEY" in message and "new root" in message
    assert TEST_KEY not in message and OTHER_KEY not in message
    # A root's own generated key is another key too.
    with pytest.raises(KeyRefused, match="pseudonym_key_mismatch"):
        pseudonym_key(with_key(settings, None), storage)
    assert storage.read_bytes(KEY_FINGERPRINT_PATH) == before


def test_every_stage_refuses_another_key_before_writing(
    settings: Settings, storage: Storage
) -> None:
    synth_batch(storage, "b1", TINY)
    ingest(settings, progress=False)
    ledger = storage.list_files(LOG_DIR)
    other = with_key(settings, OTHER_KEY)
    synth_batch(storage, "b2", TINY)
    with pytest.raises(KeyRefused, match="pseudonym_key_mismatch"):
        ingest(other, progress=False)
    with pytest.raises(KeyRefused, match="pseudonym_key_mismatch"):
        build_dataset(other, progress=False)
    assert storage.list_files(LOG_DIR) == ledger  # nothing ingested under the other key
    assert not storage.exists("datasets")


def test_the_cli_names_the_code_and_what_to_do(
    settings: Settings,
    storage: Storage,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    pseudonym_key(settings, storage)
    monkeypatch.setenv("LUNGCLS_PSEUDONYM_KEY", OTHER_KEY)
    monkeypatch.setenv("LUNGCLS_WORK_DIR", settings.work_dir)
    assert main(["--root", settings.root, "--executor", "local", "ingest"]) == 2
    error = capsys.readouterr().err
    assert "configuration error: pseudonym_key_mismatch:" in error
    assert OTHER_KEY not in error


def test_a_generated_key_file_is_readable_by_its_owner_only(tmp_path: Path) -> None:
    settings = Settings(root=str(tmp_path / "root"), work_dir=str(tmp_path / "work"))
    storage = Storage.from_settings(settings)
    old_umask = os.umask(0o022)  # the usual default: files come out world-readable
    try:
        key = pseudonym_key(settings, storage)
    finally:
        os.umask(old_umask)
    path = Path(storage.path(LOCAL_KEY_PATH))
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700
    assert path.read_bytes().strip() == key and len(key) == 64
    assert [p.name for p in path.parent.iterdir()] == ["pseudonym.key"]  # no temp file left
    recorded = json.loads(storage.read_bytes(KEY_FINGERPRINT_PATH))
    assert recorded["key_source"] == f"the root's key file {LOCAL_KEY_PATH}"
    # A key file an older lungcls left readable by others is tightened on its next use.
    path.chmod(0o644)
    assert pseudonym_key(settings, storage) == key
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_the_demo_key_runs_on_a_root_holding_only_the_demo_batch(
    tmp_path: Path, settings: Settings, storage: Storage
) -> None:
    demo = with_key(settings, DEMO_PSEUDONYM_KEY)
    ensure_demo_batch(demo, TINY)
    assert storage.exists(f"inbox/{DEMO_BATCH}/{DEMO_MARKER}")
    assert pseudonym_key(demo, storage) == DEMO_PSEUDONYM_KEY.encode()
    assert json.loads(storage.read_bytes(KEY_FINGERPRINT_PATH))["key_source"] == (
        "the public demo key"
    )
    summary = ingest(demo, progress=False)
    assert summary.series_ingested == TINY.scans  # the marker file is not an archive

    # Anything else on the root, and the demo key is refused, naming no folder.
    storage.write_atomic(f"inbox/{DEMO_BATCH}/extra.zip", b"PK")
    with pytest.raises(KeyRefused) as refused:
        pseudonym_key(demo, storage)
    assert refused.value.code == "demo_key_on_real_root"
    assert "1 file(s) in demo-001 are not the ones" in str(refused.value)
    storage.remove(f"inbox/{DEMO_BATCH}/extra.zip")
    pseudonym_key(demo, storage)
    storage.write_atomic("inbox/DOE^JANE_MRN4711/a.zip", b"PK")
    with pytest.raises(KeyRefused, match="demo_key_on_real_root") as refused:
        ingest(demo, progress=False)
    assert "1 batch folder(s) besides demo-001" in str(refused.value)
    assert "DOE" not in str(refused.value)


def test_the_demo_key_is_refused_on_a_root_that_held_other_batches(
    settings: Settings, storage: Storage
) -> None:
    """A root whose ledger records other batches (its inbox emptied since, and no
    fingerprint yet: written before lungcls recorded one) is not a demo root."""
    synth_batch(storage, "b1", TINY)
    ingest(settings, progress=False)
    storage.remove("inbox")
    storage.remove(KEY_FINGERPRINT_PATH)
    with pytest.raises(KeyRefused, match="demo_key_on_real_root") as refused:
        pseudonym_key(with_key(settings, DEMO_PSEUDONYM_KEY), storage)
    assert re.search(
        r"ledger records \d+ archive version\(s\) of other batches", str(refused.value)
    )


def test_a_demo_batch_without_its_marker_is_refused(settings: Settings, storage: Storage) -> None:
    synth_batch(storage, DEMO_BATCH, TINY)  # as `lungcls synth --batch demo-001` would
    with pytest.raises(KeyRefused, match="demo_key_on_real_root") as refused:
        pseudonym_key(with_key(settings, DEMO_PSEUDONYM_KEY), storage)
    assert f"no {DEMO_MARKER}" in str(refused.value)


def test_the_demo_key_is_refused_on_s3(s3_settings: Settings) -> None:
    demo = with_key(s3_settings, DEMO_PSEUDONYM_KEY)
    storage = Storage.from_settings(demo)
    with pytest.raises(KeyRefused) as refused:
        pseudonym_key(demo, storage)
    assert refused.value.code == "demo_key_on_shared_storage"
    assert "LUNGCLS_PSEUDONYM_KEY" in str(refused.value)
    assert not storage.exists(KEY_FINGERPRINT_PATH)


def test_lungcls_demo_refuses_a_real_root_before_writing_its_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)  # no lungcls.yaml here: the demo key is used
    monkeypatch.setenv("LUNGCLS_PSEUDONYM_KEY", "set-so-that-the-test-restores-it")
    monkeypatch.delenv("LUNGCLS_PSEUDONYM_KEY")  # `lungcls demo` sets it in this process
    monkeypatch.setenv("LUNGCLS_WORK_DIR", str(tmp_path / "work"))
    root = tmp_path / "root"
    (root / "inbox" / "b1").mkdir(parents=True)
    (root / "inbox" / "b1" / "a.zip").write_bytes(b"PK")
    assert main(["--root", str(root), "--executor", "local", "demo"]) == 2
    assert "demo_key_on_real_root" in capsys.readouterr().err
    assert not (root / "inbox" / DEMO_BATCH).exists()
    assert not (root / KEY_FINGERPRINT_PATH).exists()
