"""The geometry and rescale of each frame of a CT file, read from untrusted header values.

A CT Image (single-frame) keeps them at the top level of the dataset. An Enhanced CT or a
Legacy Converted Enhanced CT keeps them in functional groups: per frame
(PerFrameFunctionalGroupsSequence), shared by all frames (SharedFunctionalGroupsSequence),
and, in files converted by lenient tools, sometimes at the top level. `frame_headers` reads
both kinds the same way: for each frame, each attribute comes from the frame's own group,
else the shared group, else the top level.

Header values come from whoever wrote the file: a value that is not what the standard says
raises `HeaderError` with a stable code and a message that names the attribute, never its
value (values can be identifiers).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence

from lungcls.ingest.deid import kept_metadata

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2.1"
LEGACY_CONVERTED_ENHANCED_CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2.2"
MULTIFRAME_CT_CLASSES = {ENHANCED_CT_STORAGE, LEGACY_CONVERTED_ENHANCED_CT_STORAGE}
CT_CLASSES = {CT_IMAGE_STORAGE, *MULTIFRAME_CT_CLASSES}

# The functional group (PS3.3 C.7.6.16) that holds each attribute of a frame.
FUNCTIONAL_GROUP = {
    "ImagePositionPatient": "PlanePositionSequence",
    "ImageOrientationPatient": "PlaneOrientationSequence",
    "PixelSpacing": "PixelMeasuresSequence",
    "RescaleSlope": "PixelValueTransformationSequence",
    "RescaleIntercept": "PixelValueTransformationSequence",
}
UID_PATTERN = re.compile(r"[0-9]+(\.[0-9]+)*")
UID_MAX_LENGTH = 64
# How far |row x column| may be from 1 before ImageOrientationPatient is not two orthogonal
# unit vectors (assemble_series sorts along that cross product).
UNIT_TOLERANCE = 1e-3


class HeaderError(Exception):
    """A header value that is missing or unusable: `code` is stable, `message` names the
    attribute but never quotes its value."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


@dataclass(frozen=True)
class FrameHeader:
    """Where one frame lies and how its stored values become HU."""

    frame_number: int  # 1-based, as in the standard; 1 for a single-frame file
    position_xyz_mm: np.ndarray
    orientation: np.ndarray  # row cosines then column cosines
    pixel_spacing_mm: tuple[float, float]  # (row spacing, column spacing)
    slope: float
    intercept: float

    @property
    def normal(self) -> np.ndarray:
        return slice_normal(self.orientation)


def slice_normal(orientation: np.ndarray) -> np.ndarray:
    """Row cosines x column cosines, written out: `np.cross` costs more than the rest of a
    frame's geometry checks on 3-vectors, and ingest computes this for every file."""
    r0, r1, r2, c0, c1, c2 = (float(v) for v in orientation)
    return np.array((r1 * c2 - r2 * c1, r2 * c0 - r0 * c2, r0 * c1 - r1 * c0))


def is_multiframe(ds: Dataset) -> bool:
    return str(get(ds, "SOPClassUID") or "").strip() in MULTIFRAME_CT_CLASSES


def get(holder: Dataset, keyword: str) -> Any:
    """`holder.get(keyword)`, where a value pydicom cannot convert is a `HeaderError`."""
    try:
        return holder.get(keyword)
    except Exception as error:  # pydicom converts values on access and raises many types
        raise HeaderError("bad_header_value", f"{keyword} cannot be read") from error


def uid(ds: Dataset, keyword: str) -> str:
    """A UID attribute as a string: digits and dots, at most 64 characters."""
    value = get(ds, keyword)
    if value is None or str(value).strip() == "":
        raise HeaderError("missing_uid", f"{keyword} is missing")
    text = str(value).strip()
    if len(text) > UID_MAX_LENGTH or UID_PATTERN.fullmatch(text) is None:
        raise HeaderError(
            "bad_header_value",
            f"{keyword} is not a valid UID (digits and dots, at most {UID_MAX_LENGTH} characters)",
        )
    return text


def numbers(holder: Dataset, keyword: str, count: int, where: str = "") -> tuple[float, ...]:
    """Exactly `count` finite numbers from `holder[keyword]`, which must be present."""
    try:
        value = holder[keyword].value
        values = list(value) if isinstance(value, (list, tuple, MultiValue)) else [value]
        parsed = tuple(float(v) for v in values)
    except Exception:  # pydicom leaves unparsable DS/IS values as text, or raises
        parsed = ()
    if len(parsed) != count or not all(math.isfinite(v) for v in parsed):
        what = "a finite number" if count == 1 else f"{count} finite numbers"
        raise HeaderError("bad_header_value", f"{keyword}{where} is not {what}")
    return parsed


def frame_count(ds: Dataset) -> int:
    """NumberOfFrames of a multi-frame file (a positive integer)."""
    if not is_multiframe(ds):
        return 1
    if _empty(get(ds, "NumberOfFrames")):
        raise HeaderError("missing_geometry", "NumberOfFrames is missing")
    (count,) = numbers(ds, "NumberOfFrames", 1)
    if count < 1 or not count.is_integer():
        raise HeaderError("bad_header_value", "NumberOfFrames is not a positive integer")
    return int(count)


def frame_headers(ds: Dataset) -> list[FrameHeader]:
    """The geometry and rescale of every frame, in frame order."""
    count = frame_count(ds)
    shared: Dataset | None = None
    per_frame: list[Dataset | None] = [None]
    if is_multiframe(ds):
        shared = _first_item(ds, "SharedFunctionalGroupsSequence")
        groups = get(ds, "PerFrameFunctionalGroupsSequence")
        if _empty(groups) and count > 1:  # frames without their own positions
            raise HeaderError("missing_geometry", "PerFrameFunctionalGroupsSequence is missing")
        if not _empty(groups):
            if not isinstance(groups, Sequence) or len(groups) != count:
                raise HeaderError(
                    "bad_header_value",
                    "PerFrameFunctionalGroupsSequence does not hold one item per frame "
                    "(NumberOfFrames)",
                )
            per_frame = list(groups)
    return [_frame_header(ds, shared, own, number) for number, own in enumerate(per_frame, start=1)]


def _frame_header(
    ds: Dataset, shared: Dataset | None, own: Dataset | None, number: int
) -> FrameHeader:
    where = f" (frame {number})" if own is not None else ""
    holders = {k: _holder(ds, shared, own, k) for k in FUNCTIONAL_GROUP}
    missing = [
        k
        for k in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing")
        if holders[k] is None
    ]
    if missing:
        raise HeaderError("missing_geometry", f"geometry attributes missing: {', '.join(missing)}")
    if holders["RescaleSlope"] is None or holders["RescaleIntercept"] is None:
        raise HeaderError("missing_rescale", "RescaleSlope/RescaleIntercept missing: HU unknown")
    position = numbers(holders["ImagePositionPatient"], "ImagePositionPatient", 3, where)
    orientation = np.asarray(
        numbers(holders["ImageOrientationPatient"], "ImageOrientationPatient", 6, where)
    )
    if not math.isclose(math.hypot(*slice_normal(orientation)), 1.0, abs_tol=UNIT_TOLERANCE):
        raise HeaderError(
            "bad_header_value",
            f"ImageOrientationPatient{where} is not two orthogonal unit vectors",
        )
    spacing = numbers(holders["PixelSpacing"], "PixelSpacing", 2, where)
    if min(spacing) <= 0:
        raise HeaderError("bad_header_value", f"PixelSpacing{where} is not positive")
    (slope,) = numbers(holders["RescaleSlope"], "RescaleSlope", 1, where)
    (intercept,) = numbers(holders["RescaleIntercept"], "RescaleIntercept", 1, where)
    if slope == 0:
        raise HeaderError("bad_header_value", f"RescaleSlope{where} is zero")
    return FrameHeader(
        frame_number=number,
        position_xyz_mm=np.asarray(position),
        orientation=orientation,
        pixel_spacing_mm=(spacing[0], spacing[1]),
        slope=slope,
        intercept=intercept,
    )


def _holder(ds: Dataset, shared: Dataset | None, own: Dataset | None, keyword: str):
    """The dataset that holds `keyword` for one frame: the frame's own functional group,
    else the shared one, else the top level; None when none holds a value."""
    for groups in (own, shared):
        if groups is None:
            continue
        item = _first_item(groups, FUNCTIONAL_GROUP[keyword])
        if item is not None and not _empty(get(item, keyword)):
            return item
    return None if _empty(get(ds, keyword)) else ds


def multiframe_metadata(ds: Dataset) -> dict[str, str | float | int]:
    """The kept attributes of a multi-frame file: the top level first, then the shared and
    the first frame's functional groups (where an Enhanced CT keeps KVP, the convolution
    kernel and the slice thickness)."""
    found = kept_metadata(ds)
    for item in _functional_group_items(ds):
        for column, value in kept_metadata(item).items():
            found.setdefault(column, value)
    return found


def _functional_group_items(ds: Dataset) -> list[Dataset]:
    items: list[Dataset] = []
    for keyword in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        try:
            groups = _first_item(ds, keyword)
            for element in groups or ():
                if element.VR == "SQ":
                    items += [item for item in element.value if isinstance(item, Dataset)]
        except Exception:  # descriptive metadata only: an unreadable group adds nothing
            continue
    return items


def _first_item(holder: Dataset, keyword: str) -> Dataset | None:
    sequence = get(holder, keyword)
    if _empty(sequence):
        return None
    item = sequence[0] if isinstance(sequence, Sequence) else None
    if not isinstance(item, Dataset):
        raise HeaderError("bad_header_value", f"{keyword} is not a sequence of items")
    return item


def _empty(value: Any) -> bool:
    return value is None or (hasattr(value, "__len__") and len(value) == 0)
