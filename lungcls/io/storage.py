"""The one storage helper: every read and write of lungcls goes through `Storage`.

A `Storage` is a root URL (a plain folder, `file://`, `s3://bucket/prefix`, `memory://`) and
paths relative to it, written with forward slashes (`series/abc.parquet`). It adds what
fsspec alone does not give:

- `write_atomic`: readers see the old bytes or the new, never a partial file
  (local: temp file + fsync + rename; S3: one PUT of the final key).
- `create`: write-once commit objects. It returns False when the object already exists,
  so two writers racing for the same manifest or alias cannot both win (local: hard link;
  S3: conditional PUT `If-None-Match: *`; memory: exclusive create).
- `sha256`: digest while streaming, never the whole object in memory.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import IO, Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

CHUNK_BYTES = 8 * 1024 * 1024


class StorageError(RuntimeError):
    """Storage could not be reached or used; the message names the URL."""


@dataclass(frozen=True)
class ObjectInfo:
    """What listing tells about one object, enough to recognise it again without reading it."""

    path: str  # relative to the storage root
    size: int
    version_tag: str  # ETag on S3, mtime (ns) elsewhere: changes whenever the bytes may have
    modified: datetime | None = None  # last written (UTC), where the store says (`lungcls gc`)


def fsspec_options(root: str, s3_endpoint_url: str | None = None) -> dict[str, Any]:
    """The fsspec options for a root (also handed to other fsspec users, such as Prefect's
    result storage, so that everything reaches the same endpoint the same way)."""
    options: dict[str, Any] = {}
    if root.startswith(("s3://", "s3a://")):
        # Region comes from AWS_DEFAULT_REGION; region_name in client_kwargs breaks moto.
        if s3_endpoint_url:
            options["client_kwargs"] = {"endpoint_url": s3_endpoint_url}
        options["cache_regions"] = False
        # s3fs caches listings per process: `exists` and `ls` would then never see what
        # other processes wrote since (a version another writer committed, a ledger segment,
        # a lease). Writers overlap (DESIGN 10), so every listing asks the store.
        options["use_listings_cache"] = False
    return options


class Storage:
    """A storage root and the operations lungcls needs on it."""

    def __init__(self, root: str, s3_endpoint_url: str | None = None) -> None:
        self.fsspec_options = fsspec_options(root, s3_endpoint_url)
        self.fs, root_path = fsspec.core.url_to_fs(root, **self.fsspec_options)
        self.root_path = root_path.rstrip("/")
        self.root_url = root if "://" in root else self.fs.unstrip_protocol(self.root_path)
        self.is_local = isinstance(self.fs, LocalFileSystem)

    @classmethod
    def from_settings(cls, settings: Any) -> Storage:
        return cls(settings.root, settings.s3_endpoint_url)

    def __reduce__(self) -> tuple[Any, ...]:
        # Ray tasks receive the root and rebuild their own client; fsspec clients do not travel.
        endpoint = (getattr(self.fs, "client_kwargs", None) or {}).get("endpoint_url")
        return (Storage, (self.root_url, endpoint))

    def arrow_filesystem(self) -> tuple[Any, str]:
        """A pyarrow filesystem and the root's path in it, for Ray Data and Ray Train.

        Credentials and region come from the standard AWS chain, as for s3fs.
        """
        import pyarrow.fs

        if self.is_local:
            return pyarrow.fs.LocalFileSystem(), self.root_path
        if not self.root_url.startswith(("s3://", "s3a://")):
            raise StorageError(f"Ray cannot read {self.root_url}: use a local folder or s3://")
        endpoint = (getattr(self.fs, "client_kwargs", None) or {}).get("endpoint_url")
        options: dict[str, Any] = {"region": os.environ.get("AWS_DEFAULT_REGION", "us-east-1")}
        if endpoint:
            scheme, _, host = endpoint.partition("://")
            options.update(endpoint_override=host, scheme=scheme)
        return pyarrow.fs.S3FileSystem(**options), self.root_path

    # -- naming ---------------------------------------------------------------------------
    def path(self, rel: str) -> str:
        """The filesystem path of `rel` (what fsspec calls take)."""
        rel = rel.strip("/")
        return f"{self.root_path}/{rel}" if rel else self.root_path

    def url(self, rel: str) -> str:
        """A full URL for messages, ledgers and pointers."""
        return self.fs.unstrip_protocol(self.path(rel))

    def rel(self, path: str) -> str:
        """Inverse of `path`: a path from a listing, relative to the root."""
        path = self.fs._strip_protocol(path)
        if path != self.root_path and not path.startswith(self.root_path + "/"):
            raise StorageError(f"{path} is outside the storage root {self.root_url}")
        return path[len(self.root_path) :].lstrip("/")

    # -- reading --------------------------------------------------------------------------
    def exists(self, rel: str) -> bool:
        return self.fs.exists(self.path(rel))

    def open(self, rel: str, mode: str = "rb", **kwargs: Any) -> IO[Any]:
        if "w" in mode and self.is_local:
            self.fs.makedirs(posixpath.dirname(self.path(rel)), exist_ok=True)
        return self.fs.open(self.path(rel), mode, **kwargs)

    def read_bytes(self, rel: str) -> bytes:
        return self.fs.cat_file(self.path(rel))

    def read_text(self, rel: str) -> str:
        return self.read_bytes(rel).decode("utf-8")

    def info(self, rel: str) -> ObjectInfo:
        return self._object_info(self.fs.info(self.path(rel)))

    def list_files(self, rel: str) -> list[ObjectInfo]:
        """Files under `rel`, recursively, sorted. Only for discovering inputs and numbered
        commit files: readers of data trust manifests and the ledger."""
        base = self.path(rel)
        if not self.fs.exists(base):
            return []
        entries = self.fs.find(base, detail=True).values()
        infos = [self._object_info(e) for e in entries if e.get("type") != "directory"]
        return sorted(infos, key=lambda i: i.path)

    def list_dirs(self, rel: str) -> list[str]:
        """Immediate sub-folders of `rel`, relative to the root, sorted."""
        base = self.path(rel)
        if not self.fs.exists(base):
            return []
        entries = self.fs.ls(base, detail=True)
        return sorted(self.rel(e["name"]) for e in entries if e["type"] == "directory")

    def _object_info(self, entry: dict[str, Any]) -> ObjectInfo:
        tag = entry.get("ETag") or entry.get("etag")
        if tag is None:
            mtime = entry.get("mtime") or entry.get("LastModified") or entry.get("created")
            tag = f"mtime:{getattr(mtime, 'timestamp', lambda: mtime)()}"
        return ObjectInfo(
            self.rel(entry["name"]),
            int(entry.get("size") or 0),
            str(tag).strip('"'),
            _modified(entry),
        )

    def sha256(self, rel: str) -> str:
        """SHA-256 of an object, streamed in chunks."""
        digest = hashlib.sha256()
        with self.open(rel, "rb") as f:
            while chunk := f.read(CHUNK_BYTES):
                digest.update(chunk)
        return digest.hexdigest()

    # -- writing --------------------------------------------------------------------------
    def write_atomic(self, rel: str, data: bytes) -> None:
        """Replace `rel` with `data` so that readers never see a partial object."""
        if self.is_local:
            with self._local_temp(rel, data) as temp:
                os.replace(temp, self.path(rel))
                _fsync_dir(os.path.dirname(self.path(rel)))
        else:
            self.fs.pipe_file(self.path(rel), data)

    def create(self, rel: str, data: bytes) -> bool:
        """Write `rel` only if it does not exist yet; False if someone else created it first."""
        if self.is_local:
            with self._local_temp(rel, data) as temp:
                try:
                    os.link(temp, self.path(rel))
                except FileExistsError:
                    return False
                _fsync_dir(os.path.dirname(self.path(rel)))
                return True
        try:
            self.fs.pipe_file(self.path(rel), data, mode="create")
        except FileExistsError:
            return False
        except OSError as error:
            if "PreconditionFailed" in str(error) or "412" in str(error):
                return False
            raise
        return True

    def remove(self, rel: str) -> None:
        if self.exists(rel):
            self.fs.rm(self.path(rel), recursive=True)

    @contextmanager
    def _local_temp(self, rel: str, data: bytes) -> Iterator[str]:
        final = self.path(rel)
        os.makedirs(os.path.dirname(final), exist_ok=True)
        temp = os.path.join(
            os.path.dirname(final), f".{os.path.basename(final)}.{uuid.uuid4().hex}"
        )
        try:
            with open(temp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            yield temp
        finally:
            if os.path.exists(temp):
                os.unlink(temp)


def _modified(entry: dict[str, Any]) -> datetime | None:
    """When a listed object was last written: S3's LastModified, a file's mtime, memory's
    creation time; None when the store does not say."""
    value = entry.get("LastModified") or entry.get("mtime") or entry.get("created")
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, (int, float)):
        return datetime.fromtimestamp(value, UTC)
    return None


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class HashingReader:
    """A read-only stream that hashes and counts the bytes passing through it."""

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw = raw
        self.digest = hashlib.sha256()
        self.bytes_read = 0

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        self.digest.update(data)
        self.bytes_read += len(data)
        return data

    def readable(self) -> bool:
        return True

    def hexdigest(self) -> str:
        return self.digest.hexdigest()
