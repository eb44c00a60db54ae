"""The storage helper on every backend: local folder, memory, and a real S3 server."""

from __future__ import annotations

import hashlib
import threading
import uuid
from pathlib import Path

import pytest

from lungcls.config import Settings
from lungcls.io.storage import Storage


@pytest.fixture(params=["local", "file-url", "memory", "s3"])
def any_storage(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    if request.param == "local":
        return Storage(str(tmp_path / "root"))
    if request.param == "file-url":
        return Storage(f"file://{tmp_path}/root")
    if request.param == "memory":
        return Storage(f"memory://lungcls-{uuid.uuid4().hex}")
    s3_settings: Settings = request.getfixturevalue("s3_settings")
    return Storage.from_settings(s3_settings)


def test_write_read_list_remove(any_storage: Storage) -> None:
    any_storage.write_atomic("a/b/one.bin", b"hello")
    any_storage.write_atomic("a/two.bin", b"world!")
    assert any_storage.read_bytes("a/b/one.bin") == b"hello"
    assert [i.path for i in any_storage.list_files("a")] == ["a/b/one.bin", "a/two.bin"]
    assert [i.size for i in any_storage.list_files("a")] == [5, 6]
    assert any_storage.list_dirs("a") == ["a/b"]
    any_storage.remove("a/b/one.bin")
    assert not any_storage.exists("a/b/one.bin")
    assert any_storage.list_files("missing") == []


def test_write_atomic_replaces(any_storage: Storage) -> None:
    any_storage.write_atomic("x.json", b"old")
    any_storage.write_atomic("x.json", b"new")
    assert any_storage.read_bytes("x.json") == b"new"


def test_create_is_exclusive(any_storage: Storage) -> None:
    assert any_storage.create("commit/manifest.json", b"first")
    assert not any_storage.create("commit/manifest.json", b"second")
    assert any_storage.read_bytes("commit/manifest.json") == b"first"


def test_sha256_streams_whole_object(any_storage: Storage) -> None:
    data = bytes(range(256)) * 40_000  # ~10 MB, over one read chunk
    any_storage.write_atomic("big.bin", data)
    assert any_storage.sha256("big.bin") == hashlib.sha256(data).hexdigest()


def test_version_tag_changes_with_content(any_storage: Storage) -> None:
    any_storage.write_atomic("v.bin", b"one")
    first = any_storage.info("v.bin")
    any_storage.write_atomic("v.bin", b"two-two")
    second = any_storage.info("v.bin")
    assert (first.size, first.version_tag) != (second.size, second.version_tag)


def test_concurrent_creates_have_one_winner(tmp_path: Path) -> None:
    storage = Storage(str(tmp_path))
    results: list[bool] = []
    barrier = threading.Barrier(8)

    def race(n: int) -> None:
        barrier.wait()
        results.append(storage.create("alias.json", f"writer {n}".encode()))

    threads = [threading.Thread(target=race, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False] * 7 + [True]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left


def test_storage_pickles_to_same_root(s3_settings: Settings) -> None:
    import pickle

    storage = Storage.from_settings(s3_settings)
    storage.write_atomic("p.txt", b"x")
    clone = pickle.loads(pickle.dumps(storage))
    assert clone.root_url == storage.root_url
    assert clone.read_bytes("p.txt") == b"x"
