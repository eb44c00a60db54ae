"""Finding archives in the inbox and reading their members safely, without extracting to disk.

An *archive* is the unit of ingestion and of the ledger: a `.zip`, a `.tar`/`.tar.gz`/`.tgz`,
a top-level folder of a batch, or the loose files directly in a batch folder.
Members are streamed one at a time (tar in streaming mode, zip through random access on the
remote file), so memory holds one member, never the archive. Hostile archives are refused:
unsafe member paths (absolute, `..`, links), too many members, members or totals that are
too large, and decompression ratios that only a bomb reaches. An archive that cannot be read
to its end (still being copied, damaged, encrypted, or compressed with a method Python cannot
read) is refused whole: a series is never stored short because a member was lost.

Reading errors of the storage itself are raised as `StorageError` (a rerun finishes the job);
anything wrong with the bytes is an `ArchiveRejected` with a stable code.
"""

from __future__ import annotations

import hashlib
import lzma
import posixpath
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO, Literal

from lungcls.config import IngestLimits
from lungcls.ingest.streams import TailTap, decompressed, storage_stream
from lungcls.io.storage import CHUNK_BYTES, HashingReader, ObjectInfo, Storage, StorageError

ArchiveKind = Literal["zip", "tar", "folder"]
LABELS_FILE = "labels.csv"
_TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")
# What Python's zipfile can decompress; Deflate64 (9), zstd (93), PPMd (98) … it cannot.
_ZIP_METHODS = {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA}
_ZIP_METHOD_NAMES = {9: "Deflate64", 12: "bzip2", 14: "LZMA", 93: "zstd", 95: "xz", 98: "PPMd"}
# What damaged or cut archive bytes raise while they are read.
_UNREADABLE = (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error, lzma.LZMAError)


@dataclass(frozen=True)
class ArchiveRef:
    """One archive in the inbox and how to recognise it again without reading it."""

    key: str  # path under the root; folders end in "/"
    batch: str
    kind: ArchiveKind
    files: tuple[ObjectInfo, ...]  # the archive file itself, or a folder's files

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def version_tag(self) -> str:
        """Changes whenever the archive's bytes may have changed (ETag/mtime and size)."""
        if len(self.files) == 1 and self.kind != "folder":
            return f"{self.files[0].version_tag}:{self.files[0].size}"
        listing = "\n".join(f"{f.path}\t{f.size}\t{f.version_tag}" for f in self.files)
        return "listing:" + hashlib.sha256(listing.encode()).hexdigest()


@dataclass(frozen=True)
class Member:
    name: str
    data: bytes
    sha256: str


@dataclass(frozen=True)
class MemberProblem:
    name: str
    code: str
    message: str


class ArchiveRejected(Exception):
    """The whole archive is refused; `code` is stable and machine-readable."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def archive_kind(name: str) -> ArchiveKind | None:
    lower = name.lower()
    if lower.endswith(".zip"):
        return "zip"
    if lower.endswith(_TAR_SUFFIXES):
        return "tar"
    return None


def discover_archives(storage: Storage, inbox: str) -> tuple[list[ArchiveRef], list[ObjectInfo]]:
    """All archives under `inbox/<batch>/`, and the batches' `labels.csv` files."""
    archives: list[ArchiveRef] = []
    labels: list[ObjectInfo] = []
    for batch_dir in storage.list_dirs(inbox):
        batch = posixpath.basename(batch_dir)
        groups: dict[str, list[ObjectInfo]] = {}
        for info in storage.list_files(batch_dir):
            inner = info.path[len(batch_dir) + 1 :]
            if inner == LABELS_FILE:
                labels.append(info)
            elif (kind := archive_kind(inner)) is not None:
                archives.append(ArchiveRef(info.path, batch, kind, (info,)))
            elif not posixpath.basename(inner).startswith("."):
                top = inner.split("/", 1)[0] + "/" if "/" in inner else ""
                groups.setdefault(f"{batch_dir}/{top}", []).append(info)
        for key, files in groups.items():
            archives.append(ArchiveRef(key, batch, "folder", tuple(files)))
    return sorted(archives, key=lambda a: a.key), labels


def unsafe_member_reason(name: str) -> str | None:
    """Why a member path could escape an extraction folder (zip-slip), or None if it is safe."""
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        return "absolute path"
    if ".." in name.replace("\\", "/").split("/"):
        return "'..' path component"
    if "\x00" in name:
        return "NUL byte in name"
    return None


class _Budget:
    """Running totals for one archive, checked against the ingest limits as bytes arrive."""

    def __init__(self, limits: IngestLimits) -> None:
        self.limits = limits
        self.members = 0
        self.uncompressed = 0

    def count_member(self) -> None:
        self.members += 1
        if self.members > self.limits.max_members:
            raise ArchiveRejected(
                "too_many_members",
                f"more than {self.limits.max_members} members (limit ingest.limits.max_members)",
            )

    def check_member_size(self, name: str, size: int) -> None:
        if size > self.limits.max_member_bytes:
            raise ArchiveRejected(
                "member_too_large",
                f"member {name!r} is {size} bytes uncompressed, over the limit of "
                f"{self.limits.max_member_bytes} (ingest.limits.max_member_bytes)",
            )

    def add(self, nbytes: int, compressed: int) -> None:
        self.uncompressed += nbytes
        if self.uncompressed > self.limits.max_uncompressed_bytes:
            raise ArchiveRejected(
                "archive_bomb",
                f"more than {self.limits.max_uncompressed_bytes} uncompressed bytes "
                "(ingest.limits.max_uncompressed_bytes)",
            )
        if self.uncompressed > self.limits.ratio_check_after_bytes:
            ratio = self.uncompressed / max(compressed, 1)
            if ratio > self.limits.max_compression_ratio:
                raise ArchiveRejected(
                    "archive_bomb",
                    f"compression ratio {ratio:.0f}:1 exceeds "
                    f"{self.limits.max_compression_ratio:.0f}:1 "
                    "(ingest.limits.max_compression_ratio)",
                )


def _read_limited(
    stream: IO[bytes], name: str, budget: _Budget, compressed_so_far: Callable[[], int]
) -> tuple[bytes, str]:
    """Read one member in chunks, judging the limits as it grows rather than after."""
    parts: list[bytes] = []
    digest = hashlib.sha256()
    size = 0
    while chunk := stream.read(CHUNK_BYTES):
        size += len(chunk)
        budget.check_member_size(name, size)
        budget.add(len(chunk), compressed_so_far())
        digest.update(chunk)
        parts.append(chunk)
    return b"".join(parts), digest.hexdigest()


class ArchiveReader:
    """Streams the members of one archive; `sha256` is the archive's digest once exhausted."""

    def __init__(self, storage: Storage, ref: ArchiveRef, limits: IngestLimits) -> None:
        self.storage = storage
        self.ref = ref
        self.limits = limits
        self.sha256 = ""
        self.bytes_read = 0

    def members(self) -> Iterator[Member | MemberProblem]:
        if self.ref.kind != "folder" and self.ref.size > self.limits.max_archive_bytes:
            raise ArchiveRejected(
                "archive_too_large",
                f"{self.ref.size} bytes, over the limit of {self.limits.max_archive_bytes} "
                "(ingest.limits.max_archive_bytes)",
            )
        produced = False
        reader = {"zip": self._zip_members, "tar": self._tar_members, "folder": self._folder}
        try:
            for item in reader[self.ref.kind]():
                produced = produced or isinstance(item, Member)
                yield item
        except StorageError:
            raise
        except _UNREADABLE as error:
            raise ArchiveRejected(
                "corrupt_archive",
                f"cannot read the {self.ref.kind} archive to its end ({type(error).__name__}): "
                "it is damaged or still being copied; it is read again once it changes",
            ) from error
        except OSError as error:  # storage reads are StorageError, so this is the bytes
            raise ArchiveRejected(
                "corrupt_archive",
                f"cannot decompress the {self.ref.kind} archive ({type(error).__name__}): "
                "it is damaged or still being copied; it is read again once it changes",
            ) from error
        if not produced:
            raise ArchiveRejected("empty_archive", "the archive holds no readable files")

    def _zip_members(self) -> Iterator[Member | MemberProblem]:
        # Zip needs random access; hash in one sequential pass first, then read members.
        self.sha256 = self.storage.sha256(self.ref.key)
        self.bytes_read += self.ref.size
        budget = _Budget(self.limits)
        with (
            storage_stream(self.storage, self.ref.key) as raw,
            zipfile.ZipFile(raw) as archive,
        ):
            infos = archive.infolist()
            _refuse_unreadable_zip(infos)
            if len(infos) > self.limits.max_members:
                budget.members = len(infos) - 1
                budget.count_member()
            # Headers can lie, so the same limits are judged again on the bytes actually read.
            declared = sum(i.file_size for i in infos)
            ratio = declared / max(self.ref.size, 1)
            if declared > self.limits.max_uncompressed_bytes or (
                declared > self.limits.ratio_check_after_bytes
                and ratio > self.limits.max_compression_ratio
            ):
                raise ArchiveRejected(
                    "archive_bomb",
                    f"members declare {declared} uncompressed bytes from {self.ref.size} "
                    f"stored (ratio {ratio:.0f}:1, limit ingest.limits.max_compression_ratio "
                    f"{self.limits.max_compression_ratio:.0f}:1)",
                )
            compressed = 0
            for info in infos:
                if info.is_dir():
                    continue
                budget.count_member()
                mode = info.external_attr >> 16
                reason = unsafe_member_reason(info.filename)
                if reason is None and stat.S_ISLNK(mode):
                    reason = "symbolic link"
                if reason is not None:
                    yield MemberProblem(info.filename, "unsafe_path", f"refused member: {reason}")
                    continue
                budget.check_member_size(info.filename, info.file_size)
                compressed += info.compress_size
                with archive.open(info) as stream:
                    data, digest = _read_limited(
                        stream, info.filename, budget, lambda c=compressed: c
                    )
                yield Member(info.filename, data, digest)

    def _tar_members(self) -> Iterator[Member | MemberProblem]:
        budget = _Budget(self.limits)
        with storage_stream(self.storage, self.ref.key) as raw:
            hashing = HashingReader(raw)
            tap = TailTap(decompressed(hashing))
            with tarfile.open(fileobj=tap, mode="r|") as archive:
                for info in archive:
                    if info.isdir():
                        continue
                    budget.count_member()
                    reason = unsafe_member_reason(info.name)
                    if reason is None and not info.isfile():
                        reason = "link or special file"
                    if reason is not None:
                        yield MemberProblem(info.name, "unsafe_path", f"refused member: {reason}")
                        continue
                    budget.check_member_size(info.name, info.size)
                    stream = archive.extractfile(info)
                    assert stream is not None  # regular files always have a stream
                    data, digest = _read_limited(
                        stream, info.name, budget, lambda: hashing.bytes_read
                    )
                    yield Member(info.name, data, digest)
                # tarfile ends quietly at a cut header; only the end-of-archive block
                # (zeros) proves that no member is missing.
                if not tap.zeros_at(archive.offset):
                    raise tarfile.ReadError("no end-of-archive marker: the tar is cut short")
            while tap.read(CHUNK_BYTES):  # to the end: checks a compressed stream's trailer
                pass
            while hashing.read(CHUNK_BYTES):  # and the digest covers every byte
                pass
        self.sha256 = hashing.hexdigest()
        self.bytes_read += hashing.bytes_read

    def _folder(self) -> Iterator[Member | MemberProblem]:
        budget = _Budget(self.limits)
        combined = hashlib.sha256()
        prefix = self.ref.key
        for info in self.ref.files:
            budget.count_member()
            name = info.path[len(prefix) :] if info.path.startswith(prefix) else info.path
            budget.check_member_size(name, info.size)
            try:
                data = self.storage.read_bytes(info.path)
            except Exception as error:
                raise StorageError(f"cannot read a file of a folder archive: {error}") from error
            self.bytes_read += len(data)
            digest = hashlib.sha256(data).hexdigest()
            combined.update(f"{name}\t{digest}\n".encode())
            yield Member(name, data, digest)
        self.sha256 = combined.hexdigest()


def _refuse_unreadable_zip(infos: list[zipfile.ZipInfo]) -> None:
    """Refuse the whole zip when a member cannot be read: a lost slice would shorten a series."""
    for info in infos:
        if info.flag_bits & 0x1:
            raise ArchiveRejected(
                "encrypted_archive",
                "the zip is password-protected; export it again without a password",
            )
        if info.compress_type not in _ZIP_METHODS:
            method = _ZIP_METHOD_NAMES.get(info.compress_type, f"method {info.compress_type}")
            raise ArchiveRejected(
                "unsupported_compression",
                f"zip members are compressed with {method}, which cannot be read here; "
                "export again with standard Deflate (or as .tar.gz)",
            )
