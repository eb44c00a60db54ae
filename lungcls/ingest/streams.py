"""Byte streams under the archive reader: storage reads told apart from bad bytes, and tar
streams that prove they were read to their end.

- `storage_stream`: a storage file whose read errors are `StorageError`s (a rerun finishes
  the job), so whatever else fails while reading comes from the archive's bytes.
- `decompressed`: the tar bytes of a plain, gzip, bzip2 or xz stream, through decompressors
  that raise when the stream is cut (tarfile's own streaming does not).
- `TailTap`: keeps the last bytes read, to check the tar end-of-archive block.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
from typing import IO, Any

from lungcls.io.storage import HashingReader, Storage, StorageError

_TAR_BLOCK = 512


class StorageStream:
    """A storage file whose read errors are `StorageError`s: what fails in the storage is
    told apart from what is wrong with the bytes (an input to refuse)."""

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw = raw

    def _call(self, name: str, *args: Any) -> Any:
        try:
            return getattr(self.raw, name)(*args)
        except Exception as error:
            raise StorageError(f"reading an archive failed: {type(error).__name__}") from error

    def read(self, size: int = -1) -> bytes:
        return self._call("read", size)

    # Seeks do no I/O (a remote file fetches on read); a bad offset comes from the bytes.
    def seek(self, offset: int, whence: int = 0) -> int:
        return self.raw.seek(offset, whence)

    def tell(self) -> int:
        return self.raw.tell()

    def seekable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        self.raw.close()

    def __enter__(self) -> StorageStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def storage_stream(storage: Storage, rel: str) -> StorageStream:
    try:
        return StorageStream(storage.open(rel, "rb"))
    except Exception as error:
        raise StorageError(f"opening an archive failed: {type(error).__name__}") from error


class _Prefixed:
    """A stream with its first bytes already read (to sniff the compression) put back."""

    def __init__(self, head: bytes, rest: IO[bytes] | HashingReader) -> None:
        self.head, self.rest = head, rest

    def read(self, size: int = -1) -> bytes:
        if not self.head:
            return self.rest.read(size)
        if size < 0:
            data, self.head = self.head + self.rest.read(), b""
            return data
        data, self.head = self.head[:size], self.head[size:]
        return data if len(data) == size else data + self.rest.read(size - len(data))

    def readable(self) -> bool:
        return True


def decompressed(stream: HashingReader) -> IO[bytes] | _Prefixed:
    """The tar bytes of a plain, gzip, bzip2 or xz stream. The decompressors (unlike
    tarfile's own streaming) raise when the stream ends before its end-of-stream marker."""
    head = stream.read(6)
    sniffed = _Prefixed(head, stream)
    if head.startswith(b"\x1f\x8b"):
        return gzip.GzipFile(fileobj=sniffed, mode="rb")  # type: ignore[arg-type]
    if head.startswith(b"BZh"):
        return bz2.BZ2File(sniffed)  # type: ignore[arg-type]
    if head.startswith(b"\xfd7zXZ\x00"):
        return lzma.LZMAFile(sniffed)  # type: ignore[arg-type]
    return sniffed


class TailTap:
    """Passes reads through and keeps the last bytes, to check the tar end-of-archive block."""

    KEEP = 64 * 1024

    def __init__(self, stream: IO[bytes] | _Prefixed) -> None:
        self.stream = stream
        self.tail = bytearray()
        self.total = 0

    def read(self, size: int = -1) -> bytes:
        data = self.stream.read(size)
        self.total += len(data)
        self.tail += data
        del self.tail[: max(0, len(self.tail) - self.KEEP)]
        return data

    def readable(self) -> bool:
        return True

    def zeros_at(self, offset: int) -> bool:
        """Whether a whole block of zeros was read at stream offset `offset`."""
        start = offset - (self.total - len(self.tail))
        block = bytes(self.tail[start : start + _TAR_BLOCK]) if start >= 0 else b""
        return len(block) == _TAR_BLOCK and not block.strip(b"\0")
