"""Reading archives safely: zip-slip, links, bombs, floods, corruption, and digests."""

from __future__ import annotations

import hashlib
import io
import random
import tarfile
import zipfile

import pytest

from lungcls.config import IngestLimits
from lungcls.ingest.archive import (
    ArchiveReader,
    ArchiveRejected,
    Member,
    MemberProblem,
    discover_archives,
    unsafe_member_reason,
)
from lungcls.io.storage import Storage

SMALL = IngestLimits(
    max_archive_bytes=10_000_000,
    max_members=5,
    max_member_bytes=4_000_000,
    max_uncompressed_bytes=8_000_000,
    max_compression_ratio=50,
    ratio_check_after_bytes=1_000_000,
)


def _zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buffer.getvalue()


def _tar(members: dict[str, bytes], mode: str = "w:gz", symlink: str | None = None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode) as t:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
        if symlink:
            link = tarfile.TarInfo(symlink)
            link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
            t.addfile(link)
    return buffer.getvalue()


def _read(storage: Storage, name: str, payload: bytes, limits: IngestLimits = SMALL):
    storage.write_atomic(f"inbox/b1/{name}", payload)
    (ref,), _ = discover_archives(storage, "inbox")
    reader = ArchiveReader(storage, ref, limits)
    return reader, list(reader.members())


@pytest.mark.parametrize("name", ["../../etc/cron.d/x", "/abs/path.dcm", "a/../../b.dcm"])
def test_unsafe_names_are_detected(name: str) -> None:
    assert unsafe_member_reason(name) is not None
    assert unsafe_member_reason("scan-1/0001.dcm") is None


def test_zip_slip_member_refused_others_read(storage: Storage) -> None:
    reader, items = _read(storage, "a.zip", _zip({"../../evil.dcm": b"x", "ok/1.dcm": b"y"}))
    problems = [i for i in items if isinstance(i, MemberProblem)]
    members = [i for i in items if isinstance(i, Member)]
    assert [(p.name, p.code) for p in problems] == [("../../evil.dcm", "unsafe_path")]
    assert [(m.name, m.data) for m in members] == [("ok/1.dcm", b"y")]
    assert reader.sha256 == hashlib.sha256(storage.read_bytes("inbox/b1/a.zip")).hexdigest()


def test_tar_link_refused_and_digest_covers_whole_file(storage: Storage) -> None:
    payload = _tar({"s/1.dcm": b"abc"}, symlink="s/link.dcm")
    reader, items = _read(storage, "a.tar.gz", payload)
    assert [(type(i).__name__, i.name) for i in items] == [
        ("Member", "s/1.dcm"),
        ("MemberProblem", "s/link.dcm"),
    ]
    assert reader.sha256 == hashlib.sha256(payload).hexdigest()
    assert reader.bytes_read == len(payload)


@pytest.mark.parametrize("kind", ["a.zip", "a.tar.gz"])
def test_decompression_bomb_is_rejected(storage: Storage, kind: str) -> None:
    zeros = {"bomb.dcm": bytes(3_000_000), "more.dcm": bytes(3_000_000)}
    payload = _zip(zeros) if kind.endswith("zip") else _tar(zeros)
    with pytest.raises(ArchiveRejected) as error:
        _read(storage, kind, payload)
    assert error.value.code == "archive_bomb"
    assert "ratio" in error.value.message


@pytest.mark.parametrize("kind", ["a.zip", "a.tar"])
def test_too_many_members(storage: Storage, kind: str) -> None:
    many = {f"f{i}.dcm": b"x" for i in range(6)}
    payload = _zip(many) if kind.endswith("zip") else _tar(many, mode="w")
    with pytest.raises(ArchiveRejected) as error:
        _read(storage, kind, payload)
    assert error.value.code == "too_many_members"


def test_member_too_large(storage: Storage) -> None:
    big = bytes(range(256)) * 20_000  # 5 MB, barely compressible: not a ratio problem
    with pytest.raises(ArchiveRejected) as error:
        _read(storage, "a.tar", _tar({"big.dcm": big}, mode="w"))
    assert error.value.code == "member_too_large"


def test_archive_too_large(storage: Storage) -> None:
    limits = SMALL.model_copy(update={"max_archive_bytes": 100})
    with pytest.raises(ArchiveRejected) as error:
        _read(storage, "a.zip", _zip({"x.dcm": bytes(range(256))}), limits)
    assert error.value.code == "archive_too_large"


@pytest.mark.parametrize(
    ("name", "payload", "code"),
    [
        ("empty.zip", _zip({}), "empty_archive"),
        ("garbage.zip", b"PK\x03\x04 this is not really a zip file", "corrupt_archive"),
        (
            "cut.tar.gz",
            _tar({"a.dcm": random.Random(0).randbytes(90_000)})[:50_000],
            "corrupt_archive",
        ),
    ],
)
def test_broken_archives(storage: Storage, name: str, payload: bytes, code: str) -> None:
    with pytest.raises(ArchiveRejected) as error:
        _read(storage, name, payload)
    assert error.value.code == code


def test_discovery_groups_folders_and_loose_files(storage: Storage) -> None:
    for rel in [
        "inbox/b1/labels.csv",
        "inbox/b1/a.zip",
        "inbox/b1/loose1.dcm",
        "inbox/b1/loose2.dcm",
        "inbox/b1/patient-x/s1/1.dcm",
        "inbox/b1/patient-x/s1/2.dcm",
        "inbox/b2/c.tgz",
    ]:
        storage.write_atomic(rel, b"data")
    archives, labels = discover_archives(storage, "inbox")
    assert [(a.key, a.kind, len(a.files)) for a in archives] == [
        ("inbox/b1/", "folder", 2),
        ("inbox/b1/a.zip", "zip", 1),
        ("inbox/b1/patient-x/", "folder", 2),
        ("inbox/b2/c.tgz", "tar", 1),
    ]
    assert [label.path for label in labels] == ["inbox/b1/labels.csv"]
    reader = ArchiveReader(storage, archives[2], SMALL)
    assert [m.name for m in reader.members()] == ["s1/1.dcm", "s1/2.dcm"]
