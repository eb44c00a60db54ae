"""A CT file's pixel data -> one int16 HU array per frame, or why not.

Decoding is where untrusted bytes meet the most code: a compressed syntax that no installed
decoder handles, pixel data cut short, decoders that raise any type (or panic, those written
in Rust), stored values that the rescale puts outside int16. Each is a `PixelError` with a
stable code; its message never quotes a decoder's text, which can carry header values.
"""

from __future__ import annotations

import numpy as np
from pydicom.dataset import Dataset
from pydicom.pixels import get_decoder
from pydicom.uid import UID

from lungcls.ingest.multiframe import FrameHeader

HU_MIN, HU_MAX = -32768, 32767


class PixelError(Exception):
    """Pixel data that cannot become HU: `code` is stable, `message` is for people."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


def recoverable(error: BaseException) -> bool:
    """Any Exception, and the panics of decoders written in Rust (pyo3's PanicException is
    a BaseException); never KeyboardInterrupt or SystemExit."""
    return isinstance(error, Exception) or type(error).__name__ == "PanicException"


def stored_pixels(ds: Dataset, syntax: UID | None, frames: int) -> np.ndarray:
    """The stored pixel values as (frames, rows, columns).

    Raises:
        PixelError: `no_decoder`, `truncated`, `pixel_decode_error` or `unsupported_pixels`.
    """
    if syntax is not None and not syntax.is_transfer_syntax:
        raise PixelError("no_decoder", "the TransferSyntaxUID is not a known transfer syntax")
    if syntax is not None and syntax.is_compressed:
        try:
            available = get_decoder(syntax).is_available
        except NotImplementedError:
            available = False
        if not available:
            raise PixelError(
                "no_decoder",
                f"pixel data compressed as {syntax.name} ({syntax}); no installed decoder "
                "handles it (install the matching pylibjpeg/pydicom plugin)",
            )
    try:
        pixels = ds.pixel_array
    except BaseException as error:  # decoders raise many types; their text is not for the record
        if not recoverable(error):
            raise
        if _native_pixels_short(ds, syntax, frames):
            raise PixelError(
                "truncated", "the pixel data is shorter than its size: file truncated"
            ) from None
        name = syntax.name if syntax is not None else "no transfer syntax given"
        raise PixelError(
            "pixel_decode_error",
            f"pixel data ({name}) cannot be decoded ({type(error).__name__})",
        ) from None
    if pixels.ndim == 2 and frames == 1:
        pixels = pixels[np.newaxis]
    if pixels.ndim != 3 or pixels.shape[0] != frames:
        raise PixelError(
            "unsupported_pixels",
            f"expected {frames} grey frame(s), got an array of shape {pixels.shape}",
        )
    return pixels


def _native_pixels_short(ds: Dataset, syntax: UID | None, frames: int) -> bool:
    """Whether uncompressed pixel data holds fewer bytes than its header promises."""
    if syntax is None or syntax.is_compressed:
        return False
    try:
        bits = int(ds.get("BitsAllocated", 16))
        expected = int(ds.Rows) * int(ds.Columns) * frames * bits // 8
        return len(ds.PixelData) < expected
    except Exception:
        return False


def frame_hu(stored: np.ndarray, frame: FrameHeader, padding: int | None) -> np.ndarray:
    """One frame's stored values in HU as int16.

    Raises:
        PixelError: `hu_out_of_range`: values outside int16 other than the pixel padding
            mean the stored values were misread (signedness, bit depth) or are damaged.
    """
    slope, intercept = frame.slope, frame.intercept
    if (
        slope == 1.0
        and intercept.is_integer()
        and abs(intercept) < 2**20
        and stored.dtype.kind in "iu"
    ):
        hu = stored.astype(np.int32) + int(intercept)  # the usual case: exact and cheaper
    else:
        with np.errstate(over="ignore", invalid="ignore"):
            hu = np.rint(stored.astype(np.float32) * np.float32(slope) + np.float32(intercept))
    if not (hu.min() >= HU_MIN and hu.max() <= HU_MAX):
        outside = ~((hu >= HU_MIN) & (hu <= HU_MAX))
        if padding is not None:
            outside &= stored != padding
        if outside.any():
            raise PixelError(
                "hu_out_of_range",
                "stored values rescale to HU outside -32768..32767: the pixel data does not "
                "match PixelRepresentation/BitsStored or the rescale (a vendor quirk or a "
                "damaged file)",
            )
    return np.clip(hu, HU_MIN, HU_MAX).astype(np.int16)


def padding_value(ds: Dataset) -> int | None:
    """PixelPaddingValue, whose stored value is exempt from the HU range check."""
    try:
        value = ds.get("PixelPaddingValue")
        return None if value is None else int(value)
    except Exception:  # an unreadable padding value only loses the exemption
        return None
