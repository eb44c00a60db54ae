"""Fuzzing ingest with mutated real files: no input may raise, every input is accounted for.

Seeds are real: a Lung-PET-CT-Dx slice (Philips, implicit VR) and GE/vendor slices of
../shared/data/dicom-codecs (explicit VR, big endian, deflated, RLE, JPEG, JPEG-LS,
JPEG 2000). Files are taken apart with a small element walker (`walk`), so mutations hit
DICOM structure rather than only pixels: truncation at every element boundary (all of them,
deterministically), random values in every numeric and UID element (lengths of enclosing
sequences and of the file meta group are kept consistent, so the value itself is what the
reader meets), random VRs and length fields, and bit flips. `read_file` must return slices
(int16 HU of the declared shape, finite geometry) or a Problem/Skipped with a snake_case
code. Archives of mutated members, junk and odd names must go through `ingest` with every
member stored, quarantined or skipped, and a ledger row for every archive.

Hypothesis runs derandomized (the same examples on every machine); a failure prints its
minimal example. Budget: well under two minutes on two cores.
"""

from __future__ import annotations

import functools
import hashlib
import io
import re
import struct
import tarfile
import uuid
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pydicom
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from pydicom.datadict import dictionary_VR

from lungcls.ingest.deid import pseudonym
from lungcls.ingest.dicom_series import CTSlice, Problem, Skipped, read_file
from lungcls.ingest.ledger import Ledger
from lungcls.ingest.run import ingest
from lungcls.ingest.series_store import read_series_index
from lungcls.io.quarantine import read_quarantine
from lungcls.io.storage import Storage
from lungcls.sources.synth import dicom_bytes
from tests.support import REAL_DATA, TEST_KEY, make_settings, small_ct_series

pytestmark = pytest.mark.filterwarnings("ignore")  # pydicom warns on every odd value

SNAKE_CASE = re.compile(r"^[a-z][a-z0-9]*(_[a-z0-9]+)*$")
CODECS = REAL_DATA / "dicom-codecs"
LUNG = REAL_DATA / "lung-pet-ct-dx" / "Lung_Dx-A0001" / "2.000000-5mm-40805"
FUZZ = settings(
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
    ],
)

# Walkable seeds (the element walker reads their bytes as stored) and, for bit flips only,
# seeds whose data set is compressed as a whole (deflate).
SEEDS = {
    "lung-implicit": LUNG / "1-01.dcm",
    "ge-explicit": CODECS / "CT_small.dcm",
    "ge-big-endian": CODECS / "CTImage.dcm_BigEndianExplicitTransferSyntax_1.2.840.10008.1.2.2.dcm",
    "ge-rle": CODECS / "CTImage.dcm_RLELosslessTransferSyntax_1.2.840.10008.1.2.5.dcm",
    "ge-jpeg-baseline": CODECS
    / "CTImage.dcm_JPEGProcess1TransferSyntax_1.2.840.10008.1.2.4.50.dcm",
    "ge-jpeg-ls": CODECS / "CT1_JLSN.dcm",
    "j2k-lossy": CODECS / "693_J2KI.dcm",
}
FLIP_ONLY = {
    "ge-deflated": CODECS
    / "CTImage.dcm_DeflatedExplicitVRLittleEndianTransferSyntax_1.2.840.10008.1.2.1.99.dcm",
}


# --- A DICOM element walker: where every element's tag, length and value are. ------------

UNDEFINED = 0xFFFFFFFF
ITEM, ITEM_END, SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
LONG_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"}
NUMERIC_VRS = {"DS", "IS", "US", "SS", "UL", "SL", "FL", "FD", "UI"}
ALL_VRS = sorted(LONG_VRS | NUMERIC_VRS | {"AE", "AS", "AT", "CS", "DA", "DT", "LO", "LT"})
ALL_VRS += ["PN", "SH", "ST", "TM"]


@dataclass(frozen=True)
class Element:
    tag: int
    vr: str  # as stored (explicit VR) or from the dictionary (implicit); "item" for items
    start: int  # offset of the tag
    value: int  # offset of the value
    length: int  # declared (UNDEFINED for undefined length)
    length_at: int
    length_size: int  # 2 or 4 bytes
    little: bool
    # Length fields (4 bytes) of the defined-length sequences, items and file meta group
    # around this element: what must grow or shrink with its value.
    containers: tuple[int, ...] = ()

    @property
    def name(self) -> str:
        return f"({self.tag >> 16:04X},{self.tag & 0xFFFF:04X}) {self.vr} at {self.start}"


def _vr_of(tag: int) -> str:
    try:
        return dictionary_VR(tag).split(" or ")[0]
    except KeyError:
        return "UN"


def _walk_items(
    data: bytes,
    pos: int,
    end: int | None,
    explicit: bool,
    little: bool,
    containers: tuple[int, ...],
    out: list[Element],
    sequence: bool,
) -> int:
    """Items of a sequence, or fragments of encapsulated pixel data; the offset after."""
    order = "<" if little else ">"
    while end is None or pos < end:
        group, element, length = struct.unpack_from(order + "HHI", data, pos)
        tag = group << 16 | element
        if tag == SEQUENCE_END:
            return pos + 8
        assert tag == ITEM, f"expected an item at {pos}, found {tag:08X}"
        out.append(Element(tag, "item", pos, pos + 8, length, pos + 4, 4, little, containers))
        if not sequence:  # a pixel data fragment
            pos += 8 + length
        elif length == UNDEFINED:
            pos = _walk(data, pos + 8, None, explicit, little, containers, out)
        else:
            inner = (*containers, pos + 4)
            _walk(data, pos + 8, pos + 8 + length, explicit, little, inner, out)
            pos += 8 + length
    return pos


def _walk(
    data: bytes,
    pos: int,
    end: int | None,
    explicit: bool,
    little: bool,
    containers: tuple[int, ...],
    out: list[Element],
) -> int:
    """Elements from `pos` to `end` (or to an item delimiter); the offset after them."""
    order = "<" if little else ">"
    limit = len(data) if end is None else end
    while pos + 8 <= limit:
        group, element = struct.unpack_from(order + "HH", data, pos)
        tag = group << 16 | element
        if tag in (ITEM_END, SEQUENCE_END):
            return pos + 8
        if group == 0x0002 and not (explicit and little):
            explicit, little, order = True, True, "<"  # a stray meta element: never here
        if explicit:
            vr = data[pos + 4 : pos + 6].decode("latin-1")
            size = 4 if vr in LONG_VRS else 2
            length_at = pos + 8 if size == 4 else pos + 6
            header = 12 if size == 4 else 8
        else:
            vr, size, length_at, header = _vr_of(tag), 4, pos + 4, 8
        (length,) = struct.unpack_from(order + ("I" if size == 4 else "H"), data, length_at)
        value = pos + header
        out.append(Element(tag, vr, pos, value, length, length_at, size, little, containers))
        if vr == "SQ" or length == UNDEFINED:
            fragments = tag == 0x7FE00010  # encapsulated (compressed) pixel data
            inner = containers if length == UNDEFINED else (*containers, length_at)
            stop = None if length == UNDEFINED else value + length
            after = _walk_items(data, value, stop, explicit, little, inner, out, not fragments)
            pos = after if length == UNDEFINED else value + length
        else:
            pos = value + length
    return pos


def walk(data: bytes) -> list[Element]:
    """Every element of a DICOM file (file meta, data set, nested items), in file order."""
    assert data[128:132] == b"DICM"
    out: list[Element] = []
    (meta_length,) = struct.unpack_from("<I", data, 132 + 8)
    meta_end = 132 + 12 + meta_length
    _walk(data, 132, meta_end, True, True, (), out)
    meta = out[1:]  # the group length (0002,0000) encloses the rest of the meta group
    out[1:] = [replace(e, containers=(140,)) for e in meta]
    syntax = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).file_meta
    uid = str(syntax.TransferSyntaxUID)
    explicit, little = uid != "1.2.840.10008.1.2", uid != "1.2.840.10008.1.2.2"
    end = _walk(data, meta_end, None, explicit, little, (), out)
    assert end == len(data), f"walk ended at {end} of {len(data)}"
    return out


def with_value(data: bytes, element: Element, value: bytes) -> bytes:
    """The file with one element's value replaced; its length and those around it follow."""
    old = 0 if element.length == UNDEFINED else element.length
    delta = len(value) - old
    out = bytearray(data[: element.value] + value + data[element.value + old :])
    order = "<" if element.little else ">"
    if element.length_size == 2:
        struct.pack_into(order + "H", out, element.length_at, min(len(value), 0xFFFF))
    else:
        struct.pack_into(order + "I", out, element.length_at, len(value))
    for at in element.containers:
        container_order = "<" if at == 140 else order  # the meta group is little endian
        (length,) = struct.unpack_from(container_order + "I", out, at)
        if length != UNDEFINED:
            struct.pack_into(container_order + "I", out, at, (length + delta) & 0xFFFFFFFF)
    return bytes(out)


@functools.cache
def seed(name: str) -> bytes:
    return {**SEEDS, **FLIP_ONLY}[name].read_bytes()


@functools.cache
def elements(name: str) -> tuple[Element, ...]:
    return tuple(walk(seed(name)))


def targets(name: str) -> list[Element]:
    """The numeric and UID elements of a seed (file meta, data set, sequences)."""
    return [e for e in elements(name) if e.vr in NUMERIC_VRS and e.length != UNDEFINED]


# --- What read_file may answer. -----------------------------------------------------------


def _declared_shape(data: bytes) -> tuple[int, int] | None:
    """(Rows, Columns) as the file itself says, when pydicom can tell."""
    try:
        rows_columns = [0x00280010, 0x00280011]
        ds = pydicom.dcmread(io.BytesIO(data), force=True, specific_tags=rows_columns)
        return int(ds.Rows), int(ds.Columns)
    except Exception:
        return None


def verdict(member: str, data: bytes) -> str | None:
    """None if `read_file` answers as it must; else what was wrong (for the failure list)."""
    try:
        result = read_file(member, data, hashlib.sha256(data).hexdigest())
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as error:  # never raises; a Rust decoder's panic is a BaseException
        frame = error.__traceback__
        while frame is not None and frame.tb_next is not None:
            frame = frame.tb_next
        where = f"{frame.tb_frame.f_code.co_filename}:{frame.tb_lineno}" if frame else "?"
        return f"raised {type(error).__name__}: {str(error)[:120]} (at {where})"
    if isinstance(result, Problem | Skipped):
        if not SNAKE_CASE.match(result.code) or not result.message:
            return f"{type(result).__name__} with code {result.code!r}"
        return None
    if not isinstance(result, list) or not result:
        return f"returned {type(result).__name__} {result!r:.80}"
    declared = _declared_shape(data)
    for piece in result:
        if not isinstance(piece, CTSlice):
            return f"returned a list holding {type(piece).__name__}"
        if piece.hu.dtype != np.int16 or piece.hu.ndim != 2:
            return f"hu is {piece.hu.dtype} of shape {piece.hu.shape}"
        if declared is not None and piece.hu.shape != declared:
            return f"hu shape {piece.hu.shape}, the header declares {declared}"
        geometry = [*piece.position_xyz_mm, *piece.orientation, *piece.pixel_spacing_mm]
        if not np.all(np.isfinite(np.asarray(geometry, dtype=float))):
            return f"non-finite geometry {geometry}"
        if min(piece.pixel_spacing_mm) <= 0:
            return f"pixel spacing {piece.pixel_spacing_mm}"
    return None


def _report(failures: list[str]) -> str:
    return f"{len(failures)} inputs answered wrongly, first ones:\n" + "\n".join(failures[:25])


# --- The walker itself is right, or the tests below prove nothing. ------------------------


@pytest.mark.parametrize("name", sorted(SEEDS))
def test_walker_finds_the_elements_pydicom_reads(name: str) -> None:
    data = seed(name)
    found = {e.value: e for e in elements(name)}
    ds = pydicom.dcmread(io.BytesIO(data))
    raw = [
        e for e in [*ds.file_meta._dict.values(), *ds._dict.values()] if hasattr(e, "value_tell")
    ]
    assert len(raw) > 20
    for element in raw:
        assert element.value_tell in found, element
        assert found[element.value_tell].tag == element.tag
    assert verdict(name, data) is None and isinstance(read_file(name, data, "0" * 64), list)
    # an unchanged value written back gives the same bytes: the splice keeps every length
    target = targets(name)[-1]
    same = data[target.value : target.value + target.length]
    assert with_value(data, target, same) == data
    longer = with_value(data, target, same + b"  ")
    assert len(walk(longer)) == len(elements(name))


# --- File level. ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SEEDS))
def test_truncation_at_every_element_boundary(name: str) -> None:
    """A file cut before each element, and after each element's header: every one of them."""
    data = seed(name)
    cuts = sorted({0, 64, 128, 132} | {c for e in elements(name) for c in (e.start, e.value)})
    failures = [
        f"cut at {cut}: {problem}"
        for cut in cuts
        if cut < len(data) and (problem := verdict(f"{name}-cut", data[:cut]))
    ]
    assert not failures, _report(failures)


# What scanners and hand-edited files really hold, by how the VR stores numbers.
NASTY_TEXT = [b"120kV ", b"", b"nan ", b"-1e999", b"1\\2\\3 ", b"\xff\xfe"]
NASTY_BINARY = [b"", b"\xff" * 3, b"\x00" * 8, struct.pack("<d", np.nan), b"\xff\xff\xff\x7f" * 6]


@pytest.mark.parametrize("name", ["lung-implicit", "ge-big-endian"])
def test_nasty_values_in_every_numeric_and_uid_element(name: str) -> None:
    """Each numeric (DS IS US SS UL SL FL FD) and UI element, in turn, set to each value of a
    fixed list (random values, also of the other kind, are the next test's)."""
    data = seed(name)
    failures = [
        f"{element.name} = {value!r}: {problem}"
        for element in targets(name)
        for value in (NASTY_TEXT if element.vr in ("DS", "IS", "UI") else NASTY_BINARY)
        if (problem := verdict(name, with_value(data, element, value)))
    ]
    assert not failures, _report(failures)


def _numbers_as_text() -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.floats().map(repr),
        st.integers(-(2**70), 2**70).map(str),
        st.lists(st.floats(-1e6, 1e6).map(lambda f: f"{f:.6g}"), max_size=7).map("\\".join),
        st.text(max_size=24),
        st.from_regex(r"[0-9.eE+\- \\]{0,20}", fullmatch=True),
    ).map(lambda text: text.encode("utf-8")[:64])


def _numbers_as_binary() -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.binary(max_size=24),
        st.lists(st.floats(width=32), max_size=6).map(lambda v: struct.pack(f"<{len(v)}f", *v)),
        st.lists(st.floats(), max_size=3).map(lambda v: struct.pack(f">{len(v)}d", *v)),
        st.lists(st.integers(0, 2**32 - 1), max_size=4).map(
            lambda v: struct.pack(f"<{len(v)}I", *v)
        ),
    )


@pytest.mark.slow
@settings(FUZZ, max_examples=200)
@given(data=st.data())
def test_random_values_in_numeric_and_uid_elements(data: st.DataObject) -> None:
    name = data.draw(st.sampled_from(sorted(SEEDS)), label="seed")
    element = data.draw(st.sampled_from(targets(name)), label="element")
    value = data.draw(st.one_of(_numbers_as_text(), _numbers_as_binary()), label="value")
    problem = verdict(name, with_value(seed(name), element, value))
    assert problem is None, f"{element.name} = {value!r}: {problem}"


@pytest.mark.slow
@settings(FUZZ, max_examples=200)
@given(data=st.data())
def test_random_vrs_and_lengths(data: st.DataObject) -> None:
    """An element's VR (explicit files) or length field overwritten, nothing else adjusted."""
    name = data.draw(st.sampled_from(sorted(SEEDS)), label="seed")
    element = data.draw(st.sampled_from(elements(name)), label="element")
    mutated = bytearray(seed(name))
    order = "<" if element.little else ">"
    explicit_vr = element.length_at != element.start + 4 and element.vr != "item"
    if explicit_vr and data.draw(st.booleans(), label="change the VR"):
        vr = data.draw(
            st.one_of(st.sampled_from(ALL_VRS).map(str.encode), st.binary(min_size=2, max_size=2))
        )
        mutated[element.start + 4 : element.start + 6] = vr
        change = f"VR -> {vr!r}"
    else:
        bits = 8 * element.length_size
        length = data.draw(
            st.one_of(
                st.integers(0, 2**bits - 1),
                st.sampled_from([0, 1, 2**bits - 1, element.length + 1, element.length - 1]),
                st.just(len(mutated)),
            ).map(lambda n: n % 2**bits),
            label="length",
        )
        fmt = order + ("H" if element.length_size == 2 else "I")
        struct.pack_into(fmt, mutated, element.length_at, length)
        change = f"length {element.length} -> {length}"
    problem = verdict(name, bytes(mutated))
    assert problem is None, f"{element.name}: {change}: {problem}"


def _pixel_start(name: str) -> int:
    pixels = [e for e in elements(name) if e.tag == 0x7FE00010]
    return pixels[0].value + 64 if pixels else len(seed(name))


@pytest.mark.slow
@settings(FUZZ, max_examples=200)
@given(data=st.data())
def test_bit_flips(data: st.DataObject) -> None:
    """Flipped bits, mostly in the header (where they change meaning), some anywhere."""
    name = data.draw(st.sampled_from(sorted(SEEDS | FLIP_ONLY)), label="seed")
    original = seed(name)
    header = _pixel_start(name) if name in SEEDS else len(original)
    offsets = st.one_of(st.integers(0, header - 1), st.integers(0, len(original) - 1))
    flips = data.draw(
        st.lists(st.tuples(offsets, st.integers(0, 7)), min_size=1, max_size=8), label="flips"
    )
    mutated = bytearray(original)
    for offset, bit in flips:
        mutated[offset] ^= 1 << bit
    problem = verdict(name, bytes(mutated))
    assert problem is None, f"{name} with bits flipped at {flips}: {problem}"


# --- Archive level. ------------------------------------------------------------------------


ARCHIVE_SEEDS = ("lung-1", "lung-2", "lung-3", "fake-1", "fake-2", "fake-3", "fake-4", "ge", "rle")


@functools.cache
def archive_seed(name: str) -> bytes:
    """Real files that form series when left whole: three neighbouring slices of a real
    series, a small fake series (four slices), the small GE slice, and a GE slice in RLE."""
    if name.startswith("lung-"):
        lung = sorted(LUNG.glob("*.dcm"))
        by_z = sorted(
            (pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient[2], p) for p in lung
        )
        return by_z[int(name[-1]) - 1][1].read_bytes()
    if name.startswith("fake-"):
        return dicom_bytes(small_ct_series(1, n_slices=4)[int(name[-1]) - 1])
    return seed("ge-explicit" if name == "ge" else "ge-rle")


@dataclass(frozen=True)
class Recipe:
    """How one archive member is made: short to print when hypothesis reports an example."""

    source: str  # an ARCHIVE_SEEDS name, or "junk"
    mutation: str = "whole"  # whole, flip, cut or value
    flips: tuple[tuple[int, int], ...] = ()  # (offset, bit)
    element: int = 0  # index into the seed's elements (cut) or numeric elements (value)
    raw: bytes = b""  # the junk itself, or the value written

    def build(self) -> bytes:
        if self.source == "junk":
            return self.raw
        data = archive_seed(self.source)
        if self.mutation == "flip":
            out = bytearray(data)
            for offset, bit in self.flips:
                out[offset % len(out)] ^= 1 << bit
            return bytes(out)
        found = walk(data)
        if self.mutation == "cut":
            return data[: found[self.element % len(found)].start]
        if self.mutation == "value":
            numeric = [e for e in found if e.vr in NUMERIC_VRS and e.length != UNDEFINED]
            return with_value(data, numeric[self.element % len(numeric)], self.raw)
        return data


_OFFSETS = st.one_of(st.integers(0, 4095), st.integers(0, 2**20))  # the header, or anywhere
_FLIPS = st.lists(st.tuples(_OFFSETS, st.integers(0, 7)), min_size=1, max_size=4)
recipes = st.one_of(
    st.builds(Recipe, st.sampled_from(ARCHIVE_SEEDS)),
    st.builds(Recipe, st.sampled_from(ARCHIVE_SEEDS), st.just("flip"), _FLIPS.map(tuple)),
    st.builds(Recipe, st.sampled_from(ARCHIVE_SEEDS), st.just("cut"), element=st.integers(0, 400)),
    st.builds(
        Recipe,
        st.sampled_from(ARCHIVE_SEEDS),
        st.just("value"),
        element=st.integers(0, 200),
        raw=_numbers_as_text(),
    ),
    st.builds(
        Recipe,
        st.just("junk"),
        raw=st.one_of(st.binary(max_size=300), st.text(max_size=100).map(str.encode)),
    ),
)


_SEGMENT = st.text(
    st.characters(exclude_characters="/\x00", exclude_categories=("Cs",)), min_size=1, max_size=20
)
member_name = st.one_of(
    st.integers(0, 10**6).map(lambda n: f"IMG{n:06d}.dcm"),
    _SEGMENT,
    st.lists(_SEGMENT, min_size=2, max_size=8).map("/".join),  # nested folders
    st.lists(st.sampled_from([".", "..", "a", "DICOM", "é"]), min_size=1, max_size=5).map("/".join),
    st.text(
        st.characters(exclude_characters="/\x00", exclude_categories=("Cs",)),
        min_size=200,
        max_size=400,
    ),
    _SEGMENT.map(lambda s: "/" + s),  # absolute
)


@st.composite
def archives(draw: Callable) -> tuple[str, list[tuple[str, Recipe]]]:
    kind = draw(st.sampled_from(["zip", "zip-stored", "zip-bzip2", "tar", "tar.gz"]))
    members = draw(
        st.lists(
            st.tuples(member_name, recipes),
            min_size=1,
            max_size=6,
            unique_by=lambda m: m[0].rstrip("/"),
        )
    )
    return kind, members


def _pack(kind: str, members: list[tuple[str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    if kind.startswith("zip"):
        method = {"zip": zipfile.ZIP_DEFLATED, "zip-stored": zipfile.ZIP_STORED}.get(
            kind, zipfile.ZIP_BZIP2
        )
        with zipfile.ZipFile(buffer, "w", method) as archive:
            for name, data in members:
                archive.writestr(name, data)
    else:
        with tarfile.open(fileobj=buffer, mode="w:gz" if kind == "tar.gz" else "w") as archive:
            for name, data in members:
                info = tarfile.TarInfo(name)
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _fates(name: str, data: bytes) -> list[tuple[str, str]] | str | None:
    """What ingest must have done with a member that was not quarantined as a file: the
    (series, instance) pseudonyms of its slices, "skipped", or None (it must be quarantined)."""
    key = TEST_KEY.encode()
    try:
        result = read_file(name, data, hashlib.sha256(data).hexdigest())
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException:  # the file level tests report it; here: refused
        return None
    if isinstance(result, Skipped):
        return "skipped"
    if isinstance(result, Problem):
        return None
    return [
        (pseudonym(key, "series", s.series_uid), pseudonym(key, "instance", s.sop_uid))
        for s in result
    ]


@pytest.mark.slow
@settings(FUZZ, max_examples=30)
@given(batch=st.lists(archives(), min_size=1, max_size=3))
def test_random_archives_are_ingested_or_quarantined(
    tmp_path: Path, batch: list[tuple[str, list[tuple[str, Recipe]]]]
) -> None:
    root = tmp_path / uuid.uuid4().hex
    run_settings = make_settings(root, tmp_path)
    storage = Storage.from_settings(run_settings)
    keys, contents = [], []
    for number, (kind, recipes_of_members) in enumerate(batch):
        suffix = ".zip" if kind.startswith("zip") else "." + kind
        members = [(name, recipe.build()) for name, recipe in recipes_of_members]
        keys.append(f"inbox/b1/archive-{number}{suffix}")
        contents.append(members)
        storage.write_atomic(keys[-1], _pack(kind, members))

    summary = ingest(run_settings, progress=False)

    ledger = Ledger.load(storage)
    assert all(ledger.current(key) is not None for key in keys), "an archive has no ledger row"
    items = read_quarantine(storage, summary.run_id)
    rejected = {i.source_url for i in items if i.level == "archive"}
    files = {(i.source_url, i.member) for i in items if i.level == "file"}
    series = {i.series_id for i in items if i.level == "series"}
    stored = {
        (row["series_id"], instance)
        for row in read_series_index(storage).to_pylist()
        for instance in row["slice_ids"]
    }
    lost = []
    for key, members in zip(keys, contents, strict=True):
        url = storage.url(key)
        if url in rejected:
            continue
        for name, data in members:
            if (url, name) in files:
                continue
            fate = _fates(name, data)
            if fate == "skipped":
                continue
            if fate is None or not all(s in series or (s, i) in stored for s, i in fate):
                lost.append(f"{key}: member {name!r} ({len(data)} bytes): read_file gives {fate}")
    assert not lost, "members neither stored, quarantined nor skipped:\n" + "\n".join(lost)
    event(f"{len(rejected)} of {len(keys)} archives rejected")
    event(f"{len({s for s, _ in stored})} series stored")


def test_found_by_fuzzing_a_decoder_panic_stops_nothing(tmp_path: Path) -> None:
    """Found by test_bit_flips: one flipped bit in RLE pixel data makes pylibjpeg-rle (Rust)
    panic, and a pyo3 PanicException is a BaseException, which `except Exception` misses:
    it stopped the whole ingest. That file must be quarantined, the rest ingested."""
    flipped = bytearray(seed("ge-rle"))
    flipped[14712] ^= 1
    run_settings = make_settings(tmp_path / "root", tmp_path)
    storage = Storage.from_settings(run_settings)
    good = small_ct_series(2)
    members = [(f"good/{k}.dcm", dicom_bytes(ds)) for k, ds in enumerate(good)]
    storage.write_atomic("inbox/b1/a.zip", _pack("zip", [("rle.dcm", bytes(flipped))]))
    storage.write_atomic("inbox/b1/b.zip", _pack("zip", members))

    summary = ingest(run_settings, progress=False)

    key = TEST_KEY.encode()
    stored = {row["series_id"] for row in read_series_index(storage).to_pylist()}
    assert stored == {pseudonym(key, "series", str(good[0].SeriesInstanceUID))}
    (item,) = read_quarantine(storage, summary.run_id)
    assert (item.level, item.member) == ("file", "rle.dcm") and SNAKE_CASE.match(item.code)
