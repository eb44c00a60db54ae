"""Reading archives safely: zip-slip, links, bombs, floods, corruption, and digests."""

from __future__ import annotations

import hashlib
import io
import random
import struct
import tarfile
import zipfile
import zlib

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


def _tar_gz(members: list[tuple[str, bytes]]) -> bytes:
    return _tar(dict(members))


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


# --- Archives Python's own writers cannot make: encrypted, exotic methods, cut short. -------
# The helpers are shared with test_reported_failures.py, which runs the same archives
# through a whole ingest.

_MASK = 0xFFFFFFFF


def _crc_byte(crc: int, byte: int) -> int:
    """One step of CRC-32 without the pre/post inversion (what PKWARE's key update uses)."""
    return zlib.crc32(bytes([byte]), crc ^ _MASK) ^ _MASK


class _ZipCrypto:
    """PKWARE traditional encryption (APPNOTE 6.1), the "ZipCrypto" of `zip -e`.

    Python's zipfile can decrypt it but not write it, and the `zip` command is not on every
    machine; setting only the "encrypted" flag bit of a plain zip would test a fake (its bytes
    are not encrypted, so a reader that ignores the flag would pass). So the cipher is
    written here (a few lines), and `encrypted_zip` proves its output real by reading it
    back with zipfile and the password."""

    def __init__(self, password: bytes) -> None:
        self.keys = [0x12345678, 0x23456789, 0x34567890]
        for byte in password:
            self._update(byte)

    def _update(self, byte: int) -> None:
        k0, k1, k2 = self.keys
        k0 = _crc_byte(k0, byte)
        k1 = ((k1 + (k0 & 0xFF)) * 134775813 + 1) & _MASK
        k2 = _crc_byte(k2, k1 >> 24)
        self.keys = [k0, k1, k2]

    def encrypt(self, plain: bytes) -> bytes:
        out = bytearray()
        for byte in plain:
            t = (self.keys[2] | 2) & 0xFFFF
            out.append(byte ^ (((t * (t ^ 1)) >> 8) & 0xFF))
            self._update(byte)
        return bytes(out)


def encrypted_zip(members: list[tuple[str, bytes]], password: bytes = b"s3cret") -> bytes:
    """A real ZipCrypto-encrypted zip (Deflate inside), written header by header."""
    local, central = bytearray(), bytearray()
    for index, (name, data) in enumerate(members):
        crc = zlib.crc32(data)
        packer = zlib.compressobj(9, zlib.DEFLATED, -15)
        deflated = packer.compress(data) + packer.flush()
        # 12 header bytes, the last one the CRC's high byte (the password check).
        header = random.Random(index).randbytes(11) + bytes([crc >> 24])
        body = _ZipCrypto(password).encrypt(header + deflated)
        raw = name.encode()
        fields = (0x1, 8, 0, 0x21, crc, len(body), len(data), len(raw))  # flags: encrypted
        offset = len(local)
        local += struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, *fields, 0) + raw + body
        central += struct.pack("<IHH", 0x02014B50, 20, 20)
        central += struct.pack("<HHHHIIIHHHHHII", *fields, 0, 0, 0, 0, 0o644 << 16, offset) + raw
    count = len(members)
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, count, count, len(central), len(local), 0)
    payload = bytes(local + central + end)
    with zipfile.ZipFile(io.BytesIO(payload)) as check:  # a real encrypted zip, not a fake
        name, data = members[0]
        assert check.getinfo(name).flag_bits & 0x1
        assert check.read(name, pwd=password) == data
    return payload


def with_zip_method(payload: bytes, method: int) -> bytes:
    """A real zip whose members claim another compression method (9 Deflate64, 93 zstd, …).

    zipfile cannot write those methods, so the method field of every local and central
    header is patched; the reader must refuse by method before it decodes any byte."""
    out = bytearray(payload)
    with zipfile.ZipFile(io.BytesIO(payload)) as archive:
        infos = archive.infolist()
        (central_start,) = struct.unpack_from("<I", payload, len(payload) - 22 + 16)
    for info in infos:
        assert out[info.header_offset : info.header_offset + 4] == b"PK\x03\x04"
        struct.pack_into("<H", out, info.header_offset + 8, method)
    position = central_start
    for _ in infos:
        assert out[position : position + 4] == b"PK\x01\x02"
        struct.pack_into("<H", out, position + 10, method)
        name_len, extra_len, comment_len = struct.unpack_from("<HHH", out, position + 28)
        position += 46 + name_len + extra_len + comment_len
    return bytes(out)


def plain_tar(members: list[tuple[str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as archive:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def tar_member_ends(payload: bytes) -> list[int]:
    """Where each member of a plain tar ends (its data padded to the 512-byte block)."""
    with tarfile.open(fileobj=io.BytesIO(payload), mode="r:") as archive:
        return [m.offset_data + -(-m.size // 512) * 512 for m in archive.getmembers()]


def _six_members() -> list[tuple[str, bytes]]:
    return [(f"s/{k}.dcm", random.Random(k).randbytes(700 + 300 * k)) for k in range(6)]


LIMITS = SMALL.model_copy(update={"max_members": 50})


def test_encrypted_zip_is_refused_whole(storage: Storage) -> None:
    with pytest.raises(ArchiveRejected) as error:
        _read(storage, "locked.zip", encrypted_zip(_six_members()[:2]), LIMITS)
    assert error.value.code == "encrypted_archive"
    assert "password" in error.value.message


@pytest.mark.parametrize("method", [9, 93, 98])  # Deflate64, zstd, PPMd
def test_zip_methods_python_cannot_read_are_refused(storage: Storage, method: int) -> None:
    payload = with_zip_method(_zip(dict(_six_members()[:2])), method)
    with pytest.raises(ArchiveRejected) as error:
        _read(storage, "odd.zip", payload, LIMITS)
    assert error.value.code == "unsupported_compression"


def test_tar_cut_at_any_member_boundary_is_corrupt(storage: Storage) -> None:
    """tarfile stops quietly at a cut between members: without the end-of-archive blocks the
    reader cannot know that nothing is missing, even when every member read is whole."""
    payload = plain_tar(_six_members())
    ends = tar_member_ends(payload)
    assert len(payload) > ends[-1] + 1024  # the complete tar has its end blocks
    _, items = _read(storage, "whole.tar", payload, LIMITS)
    assert len(items) == 6
    storage.remove("inbox/b1/whole.tar")
    for k, end in enumerate(ends, 1):
        with pytest.raises(ArchiveRejected) as error:
            _read(storage, f"cut{k}.tar", payload[:end], LIMITS)
        assert error.value.code == "corrupt_archive", f"cut after {k} of 6 members"
        storage.remove(f"inbox/b1/cut{k}.tar")


@pytest.mark.parametrize("kind", ["tar", "tar.gz", "zip"])
@pytest.mark.parametrize("fraction", [0.3, 0.6, 0.95])
def test_archive_still_being_copied_is_corrupt(
    storage: Storage, kind: str, fraction: float
) -> None:
    members = _six_members()
    whole = {"tar": plain_tar, "zip": lambda m: _zip(dict(m))}.get(kind, _tar_gz)(members)
    # A plain tar ends in zero blocks padded to a 10 kB record: cut within its members.
    content = tar_member_ends(whole)[-1] if kind == "tar" else len(whole)
    with pytest.raises(ArchiveRejected) as error:
        _read(storage, f"copying.{kind}", whole[: int(content * fraction)], LIMITS)
    assert error.value.code == "corrupt_archive"
