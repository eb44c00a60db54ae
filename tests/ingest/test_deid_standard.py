"""De-identification checked against the standard: DICOM PS3.15 Table E.1-1, Basic Profile.

The attribute list is DICOM PS3.15 2026c, Annex E, Table E.1-1 (Application Level
Confidentiality Profile Attributes), as transcribed by dicom-anonymizer in
`dicomfields_2026c` (every action: D, Z, X, U and their combinations). Real CT slices (the
Lung-PET-CT-Dx series in ../shared/data) get every attribute of the table set to a unique
sentinel that its VR can hold, plus a private element; ingest runs on them for real, a
dataset is built, and no sentinel may appear in any output outside the operator's view
(`inbox/`, `ledger/`, `quarantine/`): series files (every column), shards, manifests,
summaries, contract results. The raw study, series and SOP instance UIDs, which the table
says to replace (U), must not appear either.

The pipeline keeps only an allow-list of attributes (`deid.KEPT_ATTRIBUTES`); this test
holds that list to the standard.

Attributes pydicom's dictionary does not know yet (added to the table after pydicom 3.0's
dictionary) are set all the same, with VR UN, which holds any bytes. Left out, and why:
- the command elements Affected and Requested SOP Instance UID (0000,1000), (0000,1001):
  group 0000 exists only in DIMSE messages, a stored file cannot hold it (pydicom refuses
  to write it), so ingest can never meet it;
- attributes whose VR is AT (a tag: four fixed bytes cannot be a sentinel) if the table
  had any; it has none (`test_the_table_is_the_standard_s` checks).
"""

from __future__ import annotations

import datetime
import io
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
from dicomanonymizer.dicom_anonymization_databases import dicomfields_2026c as table_e11
from pydicom._dicom_dict import RepeatersDictionary
from pydicom.datadict import dictionary_VM, dictionary_VR
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian

from lungcls.config import Settings
from lungcls.dataset.build import build_dataset
from lungcls.ingest.run import ingest
from tests.ingest.test_identifiers import OPERATOR_ONLY, Secret, leaks, tree_pieces
from tests.support import REAL_DATA

pytestmark = pytest.mark.slow

STANDARD = "DICOM PS3.15 2026c, Annex E, Table E.1-1 (Basic Profile)"
SOURCE = REAL_DATA / "lung-pet-ct-dx" / "Lung_Dx-A0001" / "2.000000-5mm-40805"
SERIES = 4  # copies of the slices as four series of four patients: enough to build a dataset
SLICES = 6
UID_BASE = 777_000_000_000  # sentinel UIDs: 2.25.<UID_BASE + n>[.series[.slice]]
NUMBER_BASE = 60_000  # numeric sentinels: NUMBER_BASE + n (fits US)
# Set per series (and SOP instances per slice): the pipeline groups slices by them.
PER_SERIES = {0x00100020}  # PatientID
PER_SLICE = {0x00080018, 0x00020003}  # SOPInstanceUID, MediaStorageSOPInstanceUID
TEXT_VRS = {"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UT"}
BYTE_VRS = {"OB", "OW", "OD", "OF", "OL", "OV", "UN"}
INT_VRS = {"US", "UL", "SL", "SS", "UV", "SV"}


@dataclass(frozen=True)
class Attribute:
    tag: int
    vr: str
    vm: str
    sentinel: Secret


def table_tags() -> list[int]:
    """Every tag of the table; a repeating group (`50xx`, `60xx`) as every element the
    dictionary knows in its first group, a masked element as that element."""
    tags: list[int] = []
    for entry in table_e11.ALL_TAGS:
        if len(entry) == 2:
            tags.append(entry[0] << 16 | entry[1])
            continue
        group, element, _, element_mask = entry
        for key in RepeatersDictionary:
            repeated = key[:2] == f"{group >> 8:02X}" and key[2:4] == "xx"
            if repeated and (element_mask == 0 or int(key[4:], 16) == element):
                tags.append(group << 16 | int(key[4:], 16))
    return sorted(set(tags))


def _vr_and_vm(tag: int) -> tuple[str, str]:
    try:
        vr, vm = dictionary_VR(tag), dictionary_VM(tag)
    except KeyError:
        return "UN", "1"  # newer than pydicom's dictionary: any bytes
    return vr.split(" or ")[0], vm


def _sentinel(n: int, vr: str) -> Secret | None:
    """A value unique to attribute `n` that `vr` can hold (None: it can hold none)."""
    day = datetime.date(1901, 1, 1) + datetime.timedelta(days=n)
    if vr == "DA":
        return Secret(day.strftime("%Y%m%d"), "date", numeric=True)
    if vr == "DT":
        return Secret(day.replace(year=1902).strftime("%Y%m%d") + "121314", "datetime", True)
    if vr == "TM":
        return Secret(f"235959.{n:06d}", "time", numeric=True)
    if vr == "AS":
        return Secret(f"{n % 1000:03d}W", "age")
    if vr == "UI":
        return Secret(f"2.25.{UID_BASE + n}", "UID")
    if vr in INT_VRS or vr in {"IS"}:
        value = NUMBER_BASE + n if vr not in {"SS", "SV"} else 20_000 + n
        return Secret(str(value), "number", numeric=True)
    if vr in {"DS", "FL", "FD"}:
        return Secret(f"{NUMBER_BASE + n}.5", "decimal", numeric=True)
    if vr == "AT":
        return None
    return Secret(f"SNTL{n:04d}X", "text")  # text, bytes, URLs and sequences


def attributes() -> tuple[list[Attribute], dict[int, str]]:
    """The table's attributes with their sentinels, and why the others have none."""
    found, skipped = [], {}
    for n, tag in enumerate(table_tags()):
        vr, vm = _vr_and_vm(tag)
        sentinel = _sentinel(n, vr)
        if tag >> 16 == 0x0000:
            skipped[tag] = "command element: DIMSE messages only, never in a file"
        elif sentinel is None:
            skipped[tag] = f"VR {vr} cannot hold a sentinel"
        else:
            what = f"({tag >> 16:04X},{tag & 0xFFFF:04X}) {vr} {sentinel.what}"
            found.append(Attribute(tag, vr, vm, Secret(sentinel.value, what, sentinel.numeric)))
    return found, skipped


def _value(attribute: Attribute, series: int, slice_: int) -> object:
    """The element value for one slice: the sentinel, made unique where it must be."""
    text = attribute.sentinel.value
    if attribute.vr == "UI":
        text = f"{text}.{series + 1}" + (f".{slice_ + 1}" if attribute.tag in PER_SLICE else "")
    elif attribute.tag in PER_SERIES:
        text = f"{text}-{series + 1}"
    if attribute.vr == "SQ":
        item = Dataset()
        item.CodeMeaning = text  # a nested item holding the sentinel
        return Sequence([item])
    if attribute.vr in BYTE_VRS:
        data = text.encode()
        return data + b" " * (len(data) % 2)
    if attribute.vr == "UR":
        return f"https://example.invalid/{text}"
    if attribute.vr in INT_VRS:
        return int(text)
    if attribute.vr in {"FL", "FD"}:
        return float(text)
    multiplicity = attribute.vm.split("-")[0]
    count = int(multiplicity) if multiplicity.isdigit() else 1
    return [text] * count if count > 1 else text


def sentinel_slice(source: Path, attrs: list[Attribute], series: int, slice_: int) -> Dataset:
    """A real CT slice with every table attribute set, and a private element, written as
    Explicit VR Little Endian (the VRs of the sentinels travel with them)."""
    ds = pydicom.dcmread(source)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    for attribute in attrs:
        value = _value(attribute, series, slice_)
        if attribute.tag >> 16 == 0x0002:
            ds.file_meta[attribute.tag] = DataElement(attribute.tag, attribute.vr, value)
        else:
            ds[attribute.tag] = DataElement(attribute.tag, attribute.vr, value)
    block = ds.private_block(0x0009, "SNTL PRIVATE CREATOR", create=True)
    block.add_new(0x01, "LO", "SNTL9999X private")
    return ds


@pytest.fixture(scope="module")
def table() -> tuple[list[Attribute], dict[int, str]]:
    return attributes()


def test_the_table_is_the_standard_s(table) -> None:
    """A sanity check of the transcription: the table's well-known rows are in it, and
    only the two command elements are left without a sentinel."""
    attrs, skipped = table
    tags = {a.tag for a in attrs}
    for tag in (0x00100010, 0x00100020, 0x00100030, 0x0020000D, 0x0020000E, 0x00080018):
        assert tag in tags  # PatientName, PatientID, BirthDate, Study/Series/SOP UIDs
    assert 0x60004000 in tags and 0x60003000 in tags and 0x50003000 in tags  # repeating groups
    assert len(attrs) > 600, STANDARD
    assert set(skipped) == {0x00001000, 0x00001001}, skipped


def test_no_attribute_of_the_basic_profile_reaches_an_output(
    table, settings: Settings, tmp_path: Path
) -> None:
    assert SOURCE.is_dir(), f"real CT data missing at {SOURCE} (see ../shared/data/README.md)"
    attrs, _ = table
    files = sorted(SOURCE.glob("*.dcm"), key=lambda p: pydicom.dcmread(p).ImagePositionPatient[2])
    middle = files[len(files) // 2 - SLICES // 2 :][:SLICES]
    originals = [pydicom.dcmread(p, stop_before_pixels=True) for p in middle]
    batch = Path(settings.root) / "inbox" / "standard"
    batch.mkdir(parents=True)
    for series in range(SERIES):
        with zipfile.ZipFile(batch / f"export-{series}.zip", "w") as archive:
            for k, path in enumerate(middle):
                buffer = io.BytesIO()
                sentinel_slice(path, attrs, series, k).save_as(buffer, enforce_file_format=True)
                archive.writestr(f"slice-{k:03d}.dcm", buffer.getvalue())
    patient = next(a for a in attrs if a.tag == 0x00100020).sentinel.value
    rows = [f"{patient}-{s + 1},{s % 2},{('train', 'train', 'val', 'test')[s]}" for s in range(4)]
    (batch / "labels.csv").write_text("patient_id,label,split\n" + "\n".join(rows) + "\n")

    settings = settings.model_copy(
        update={
            "dataset": settings.dataset.model_copy(update={"require_both_classes": False}),
            "preprocess": settings.preprocess.model_copy(
                update={"shape": (8, 32, 32), "spacing_mm": (5.0, 4.0, 4.0)}
            ),
        }
    )
    summary = ingest(settings, progress=False)
    assert summary.series_ingested == SERIES, summary.summary_lines()
    assert build_dataset(settings, progress=False).created

    secrets = [a.sentinel for a in attrs]
    secrets.append(Secret("SNTL9999X", "private element"))
    secrets.append(Secret("SNTL PRIVATE CREATOR", "private creator"))
    for ds in originals:  # the file's own UIDs are replaced by the sentinels, so never seen
        secrets += [
            Secret(str(ds.StudyInstanceUID), "original study UID"),
            Secret(str(ds.SeriesInstanceUID), "original series UID"),
            Secret(str(ds.SOPInstanceUID), "original SOP instance UID"),
        ]
    root = Path(settings.root)
    pieces = [*tree_pieces(root, skip=OPERATOR_ONLY), *tree_pieces(Path(settings.work_dir))]
    written = {p.where.split(" ")[0] for p in pieces}
    assert any("/series/" in w for w in written) and any("/shards/" in w for w in written)
    found = leaks(secrets, pieces)
    assert not found, f"{STANDARD}: attributes in outputs:\n" + "\n".join(found)
    # The sentinels did go in: every attribute is in the slices as ingest read them.
    with zipfile.ZipFile(batch / "export-0.zip") as archive:
        sent = pydicom.dcmread(archive.open("slice-000.dcm"))
    missing = [a.sentinel.what for a in attrs if a.tag not in sent and a.tag not in sent.file_meta]
    assert not missing
