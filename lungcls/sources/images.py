"""Folders of JPEG/PNG CT slices -> an inbox batch of DICOM archives plus `labels.csv`.

    lungcls import-images SRC --batch NAME --positive malignant[,other] [--out ROOT]
        [--group-size 10] [--window -600,1500] [--fov-mm 360]
        [--test-range 0.8:1 --val-fraction 0.15 --val-blocks 2 --gap-groups 1]

SRC holds one folder per class (`SRC/malignant/*.jpg`, `SRC/normal/*.png`, ...); classes
named by `--positive` are label 1, every other class 0. Then the normal pipeline takes the
batch in: `lungcls ingest`, `dataset build` in 2D mode with `preprocess.crop_center: image`.

Each image becomes one single-slice series, written as CT Image Storage (ImageType
DERIVED\\SECONDARY: it was re-encoded from a display image), because that is what ingest,
the contracts and predict take, and because a CT rescale lets the preprocessing window work
unchanged. Pixel mapping: the stored value is the 8-bit grey level g (16 bits allocated, 12
stored), and RescaleSlope/RescaleIntercept map it linearly onto the display window the
image is assumed to show, `--window C,W`: HU = C - W/2 + g * W/255 (g = 0 -> C - W/2,
g = 255 -> C + W/2), written as WindowCenter/WindowWidth too. The HU are nominal: a
JPEG has already lost the scanner's values, and sources differ in the window they used.
The default window equals `preprocess.windows`' default, so preprocessing turns g back into
g/255 exactly; a narrower `preprocess.windows` stretches a part of the grey range.

Geometry is nominal too: the longer side of each image spans `--fov-mm`, so pixel spacing
is fov / max(rows, columns) and every image covers the same field whatever its pixel count;
slice thickness `--slice-thickness-mm`; the image center is at the patient origin.

Patients: image sets like these carry no patient IDs, but consecutive case numbers tend to
come from one patient. The case number is the first integer in the file name; within a class,
numbers first..first+K-1 form one pseudonymous patient, the next K the next, and so on
(`--group-size K`; 1 makes every image its own patient). The DICOM PatientID names only the
batch, class and number range, and ingest turns it into a keyed pseudonym like any other.

Splits: by default none is written and the pipeline's keyed hash splits patients. With
`--test-range A:B`, the groups from share A to share B of each class's groups in case-number
order (0.8:1 = the highest fifth of the numbers, one contiguous range) are assigned to test;
with `--val-fraction V` a share V of the groups, in `--val-blocks` contiguous blocks spread
over the rest of the range, to validation; the others to train: a `split` column in
labels.csv. A patient's slices may run past a group boundary, so `--gap-groups` groups on
each side of a held-out block get no label (ingested, never used): no patient is then on
both sides. `--test-range 0:1` makes the whole batch a test set (an external set to score a
trained model on).

Refused images (not an image, unreadable, colour, 16-bit, no case number, a pixel-identical
duplicate of an earlier image) are quarantined under `quarantine/<run>/` with a reason; an
unknown `--positive` class or an empty class folder stops the import. The same source and
options give byte-identical archives, so importing twice makes ingest skip the second copy.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import posixpath
import re
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, generate_uid

from lungcls.dataset.splits import SPLITS
from lungcls.errors import LungclsError
from lungcls.ingest.dicom_series import CT_IMAGE_STORAGE
from lungcls.io.quarantine import QuarantineItem, write_quarantine
from lungcls.io.runs import new_run_id
from lungcls.io.storage import Storage
from lungcls.sources.synth import dicom_bytes, pack_zip

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}
GAP = "gap"  # a group imported without a label, between a held-out block and training
GREY_TOLERANCE = 4  # JPEG rounding makes the channels of a grey RGB image differ slightly
_CASE_NUMBER = re.compile(r"\d+")


class ImageImportError(LungclsError):
    """The import cannot run as asked; the message says what to change."""


@dataclass(frozen=True)
class ImportOptions:
    positive: tuple[str, ...]
    group_size: int = 10
    window: tuple[float, float] = (-600.0, 1500.0)  # (center, width) the grey levels show
    fov_mm: float = 360.0
    slice_thickness_mm: float = 1.0
    # Share of each class's patient groups, in case-number order, held out as test, e.g.
    # (0.8, 1.0): the highest fifth of the numbers. None: no split is assigned.
    test_range: tuple[float, float] | None = None
    val_fraction: float = 0.0
    val_blocks: int = 2  # contiguous val blocks per class
    gap_groups: int = 1  # groups left unlabelled on each side of a held-out block

    def check(self) -> None:
        if not self.positive:
            raise ImageImportError("--positive names no class: give at least one class folder")
        if self.group_size < 1 or self.val_blocks < 1 or self.gap_groups < 0:
            raise ImageImportError(
                f"--group-size {self.group_size} and --val-blocks {self.val_blocks} must be "
                f"at least 1, --gap-groups {self.gap_groups} at least 0"
            )
        if self.window[1] <= 0 or self.fov_mm <= 0 or self.slice_thickness_mm <= 0:
            raise ImageImportError("--window width, --fov-mm and slice thickness must be > 0")
        start, end = self.test_range or (0.0, 0.0)
        if not 0 <= start <= end <= 1 or not 0 <= self.val_fraction < 1:
            raise ImageImportError(
                f"--test-range {start}:{end} must be within 0:1 (start <= end) and "
                f"--val-fraction {self.val_fraction} within [0, 1)"
            )
        if self.val_fraction and end - start + self.val_fraction >= 1:
            raise ImageImportError("--test-range and --val-fraction leave nothing to train on")


@dataclass(frozen=True)
class SourceImage:
    """One accepted image: where it is and its case number (pixels are read when written,
    so an import holds one image in memory at a time)."""

    class_name: str
    name: str  # file name inside its class folder
    number: int

    @property
    def rel(self) -> str:
        return f"{self.class_name}/{self.name}"


@dataclass
class PatientGroup:
    """Consecutive case numbers of one class, taken as one pseudonymous patient."""

    class_name: str
    label: int
    first: int  # lowest case number the group covers
    last: int
    images: list[SourceImage]
    split: str | None = None

    @property
    def patient_id(self) -> str:
        return f"{self.class_name}:{self.first}-{self.last}"

    @property
    def archive(self) -> str:
        return f"{self.class_name}-{self.first:05d}-{self.last:05d}.zip"


@dataclass
class ImportResult:
    batch: str
    batch_url: str
    run_id: str
    images: int = 0
    patients: int = 0
    archives: int = 0
    classes: dict[str, dict[str, int]] = field(default_factory=dict)
    splits: dict[str, dict[str, int]] = field(default_factory=dict)
    quarantined: list[dict[str, object]] = field(default_factory=list)
    report: str = ""

    def to_json(self) -> dict[str, object]:
        return asdict(self)


class ImageRefused(ValueError):
    """One image cannot be imported; `code` is its quarantine code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def grey_pixels(data: bytes) -> np.ndarray:
    """Decode a JPEG/PNG to 8-bit grey (uint8, rows x columns).

    Raises:
        ImageRefused: not decodable, or not an 8-bit grey image (a grey image stored as RGB
            is accepted: JPEG encoders often do that).
    """
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            mode = image.mode
            if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
                raise ImageRefused(
                    "unsupported_pixels",
                    f"{mode} pixels: the pixel mapping is defined for 8-bit grey; "
                    "convert the image to 8 bits",
                )
            if mode in ("L", "1"):
                return np.asarray(image.convert("L"), dtype=np.uint8)
            rgba = np.asarray(image.convert("RGBA"), dtype=np.int16)
    except ImageRefused:
        raise
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        # UnidentifiedImageError (not an image) and truncated data are OSErrors.
        raise ImageRefused("unreadable_image", f"not a decodable JPEG/PNG: {error}") from None
    if rgba[..., 3].min() < 255:
        raise ImageRefused(
            "unsupported_pixels", f"{mode} image with transparent pixels: expected opaque grey"
        )
    rgb = rgba[..., :3]
    grey = np.rint(rgb.mean(axis=2))
    spread = int(np.abs(rgb - grey[..., None]).max())
    if spread > GREY_TOLERANCE:
        raise ImageRefused(
            "colour_image",
            f"colour image ({mode}, channels differ by up to {spread} levels): CT slices are "
            "grey; convert it to grey if the colour carries nothing",
        )
    return grey.astype(np.uint8)


def case_number(file_name: str) -> int | None:
    """The first integer in a file name's stem (`malignant-040.jpg` -> 40), or None."""
    found = _CASE_NUMBER.search(posixpath.splitext(file_name)[0])
    return int(found.group()) if found else None


def read_class_folders(
    source: Storage, options: ImportOptions
) -> tuple[dict[str, list[SourceImage]], list[QuarantineItem]]:
    """Every usable image under SRC/<class>/, by class in case-number order, and the refused."""
    classes = [posixpath.basename(d) for d in source.list_dirs("")]
    if not classes:
        raise ImageImportError(f"{source.root_url} holds no class folders (SRC/<class>/*.png)")
    unknown = sorted(set(options.positive) - set(classes))
    if unknown:
        raise ImageImportError(
            f"--positive class(es) {', '.join(unknown)} not found in {source.root_url}; "
            f"its class folders are {', '.join(classes)}"
        )
    refused: list[QuarantineItem] = []

    def refuse(rel: str, code: str, message: str) -> None:
        refused.append(QuarantineItem("file", code, message, source.url(rel), member=rel))

    for info in source.list_files(""):
        if "/" not in info.path:
            refuse(info.path, "not_in_class_folder", "files must sit in a class folder")
    images: dict[str, list[SourceImage]] = {}
    seen: dict[str, str] = {}  # pixel digest -> the first image that had it
    for class_name in classes:
        accepted = []
        for info in source.list_files(class_name):
            rel = info.path
            name = rel[len(class_name) + 1 :]
            if "/" in name or posixpath.splitext(name)[1].lower() not in IMAGE_SUFFIXES:
                refuse(rel, "not_image", "not a .jpg/.jpeg/.png file directly in a class folder")
                continue
            number = case_number(name)
            if number is None:
                refuse(rel, "no_case_number", "no number in the file name to group patients by")
                continue
            try:
                grey = grey_pixels(source.read_bytes(rel))
            except ImageRefused as error:
                refuse(rel, error.code, str(error))
                continue
            digest = hashlib.sha256(f"{grey.shape}".encode() + grey.tobytes()).hexdigest()
            if digest in seen:
                # Kept once: two copies in different patient groups could sit on both sides
                # of a split.
                refuse(rel, "duplicate_image", f"same pixels as {seen[digest]}; kept that one")
                continue
            seen[digest] = rel
            accepted.append(SourceImage(class_name, name, number))
        if not accepted:
            raise ImageImportError(
                f"class folder {class_name!r} holds no usable JPEG/PNG image: remove it, or "
                "fix its files (see the reasons above)"
                + "".join(f"\n  {r.member}: {r.message}" for r in refused if r.member)
            )
        images[class_name] = sorted(accepted, key=lambda i: (i.number, i.name))
    return images, refused


def group_patients(
    images: dict[str, list[SourceImage]], options: ImportOptions
) -> list[PatientGroup]:
    """Contiguous case-number ranges of `group_size` per class, with splits if asked for."""
    groups: list[PatientGroup] = []
    for class_name, members in images.items():
        label = int(class_name in options.positive)
        first = members[0].number
        by_index: dict[int, list[SourceImage]] = defaultdict(list)
        for image in members:
            by_index[(image.number - first) // options.group_size].append(image)
        ordered = [
            PatientGroup(
                class_name,
                label,
                first + index * options.group_size,
                first + (index + 1) * options.group_size - 1,
                by_index[index],
            )
            for index in sorted(by_index)
        ]
        assign_splits(ordered, options)
        groups += ordered
    return groups


def assign_splits(ordered: list[PatientGroup], options: ImportOptions) -> None:
    """Test: one contiguous range of groups; val: a few contiguous blocks spread evenly over
    the rest; train: the others, except `gap` groups next to a held-out block."""
    if options.test_range is None and not options.val_fraction:
        return
    n = len(ordered)
    start, end = options.test_range or (0.0, 0.0)
    first, last = round(start * n), round(end * n)
    if end > start and last == first:  # a small class still gets one test group
        last = min(n, first + 1)
        first = last - 1
    rest = [i for i in range(n) if not first <= i < last]
    n_val = max(1, round(options.val_fraction * n)) if options.val_fraction else 0
    if n_val and len(rest) - n_val < 1:
        raise ImageImportError(
            f"class {ordered[0].class_name!r} has {n} patient groups: too few for "
            f"{last - first} test and {n_val} val groups; lower --group-size or the shares"
        )
    splits = ["test" if first <= i < last else "train" for i in range(n)]
    # A few blocks across the range, not one tail: a threshold chosen on val must hold
    # across it; and blocks, not scattered groups: a patient longer than a group would
    # otherwise sit on both sides of most val groups.
    blocks = min(options.val_blocks, n_val)
    for block in range(blocks):
        size = n_val // blocks + (block < n_val % blocks)
        begin = round((block + 0.5) * len(rest) / blocks - size / 2)
        for position in range(max(0, min(begin, len(rest) - size)), len(rest))[:size]:
            splits[rest[position]] = "val"
    # Groups bordering a held-out block are left out (no label): the patient whose slices
    # cross the boundary then trains on neither side of it.
    held_out = [i for i in range(n) if splits[i] != "train"]
    for i in range(n):
        if splits[i] == "train" and any(0 < abs(i - j) <= options.gap_groups for j in held_out):
            splits[i] = GAP
    for group, split in zip(ordered, splits, strict=True):
        group.split = split


def nominal_rescale(window: tuple[float, float]) -> tuple[str, str]:
    """RescaleSlope and RescaleIntercept (DICOM DS strings) mapping grey 0..255 onto the
    window: HU = center - width/2 + grey * width/255."""
    center, width = window
    return f"{width / 255:.10g}", f"{center - width / 2:.10g}"


def image_dataset(
    image: SourceImage,
    grey: np.ndarray,
    group: PatientGroup,
    batch: str,
    options: ImportOptions,
) -> Dataset:
    """One single-slice CT Image Storage dataset for an image (see the module docstring)."""

    def uid(kind: str) -> str:
        parts = [f"lungcls-import-{batch}", image.class_name, kind]
        if kind in ("study", "frame"):
            return generate_uid(entropy_srcs=[*parts, group.patient_id])
        return generate_uid(entropy_srcs=[*parts, image.name])

    rows, columns = grey.shape
    spacing = options.fov_mm / max(rows, columns)
    slope, intercept = nominal_rescale(options.window)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CT_IMAGE_STORAGE
    meta.MediaStorageSOPInstanceUID = uid("instance")
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.preamble = b"\0" * 128
    ds.SOPClassUID = CT_IMAGE_STORAGE
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = uid("study")
    ds.SeriesInstanceUID = uid("series")
    ds.FrameOfReferenceUID = uid("frame")
    ds.PatientID = f"{batch}:{group.patient_id}"  # no person behind it; ingest hashes it
    ds.PatientName = ""
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.StudyDate = ds.StudyTime = ds.AccessionNumber = ds.ReferringPhysicianName = ""
    ds.StudyID = ""
    ds.Modality = "CT"
    ds.Manufacturer = ""
    ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
    ds.DerivationDescription = (
        "8-bit display image re-encoded by lungcls import-images; HU nominal, "
        f"grey 0..255 mapped onto window {options.window[0]:g}/{options.window[1]:g}"
    )
    ds.BurnedInAnnotation = "NO"
    ds.SeriesNumber = image.number
    ds.InstanceNumber = 1
    ds.ImagePositionPatient = [
        f"{-(columns - 1) / 2 * spacing:.4f}",
        f"{-(rows - 1) / 2 * spacing:.4f}",
        "0",
    ]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.SliceThickness = f"{options.slice_thickness_mm:g}"
    ds.PixelSpacing = [f"{spacing:.10g}", f"{spacing:.10g}"]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = rows, columns
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.PixelRepresentation = 0
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    ds.RescaleType = "HU"
    ds.WindowCenter, ds.WindowWidth = f"{options.window[0]:g}", f"{options.window[1]:g}"
    ds.PixelData = grey.astype("<u2").tobytes()
    return ds


def labels_csv(groups: list[PatientGroup], batch: str) -> str:
    """One patient row per group (none for gap groups: they stay unlabelled); a `split`
    column only when splits were assigned."""
    with_split = any(g.split for g in groups)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["patient_id", "label", *(["split"] if with_split else [])])
    for group in groups:
        if group.split == GAP:
            continue
        row = [f"{batch}:{group.patient_id}", group.label]
        writer.writerow(row + ([group.split] if with_split else []))
    return buffer.getvalue()


def import_images(
    source_url: str,
    storage: Storage,
    batch: str,
    options: ImportOptions,
    inbox: str = "inbox",
    s3_endpoint_url: str | None = None,
) -> ImportResult:
    """Import SRC's class folders as `<inbox>/<batch>/` of `storage`: archives, labels.csv."""
    options.check()
    source = Storage(source_url, s3_endpoint_url)
    images, refused = read_class_folders(source, options)
    groups = group_patients(images, options)
    run_id = new_run_id("import")
    batch_dir = f"{inbox}/{batch}"
    for group in groups:
        members = [
            (
                f"{posixpath.splitext(i.name)[0]}.dcm",
                dicom_bytes(
                    image_dataset(i, grey_pixels(source.read_bytes(i.rel)), group, batch, options)
                ),
            )
            for i in group.images
        ]
        storage.write_atomic(f"{batch_dir}/{group.archive}", pack_zip(members))
    # Last: a batch is complete once its labels are there (ingest reads them with it).
    storage.write_atomic(f"{batch_dir}/labels.csv", labels_csv(groups, batch).encode())
    write_quarantine(storage, run_id, refused)

    result = ImportResult(batch, storage.url(batch_dir), run_id)
    result.images = sum(len(g.images) for g in groups)
    result.patients = result.archives = len(groups)
    for class_name, members in images.items():
        label = int(class_name in options.positive)
        patients = sum(g.class_name == class_name for g in groups)
        result.classes[class_name] = {"label": label, "images": len(members), "patients": patients}
    if any(g.split for g in groups):
        counts: dict[str, Counter[str]] = {s: Counter() for s in (*SPLITS, GAP)}
        for g in groups:
            counts[g.split or "train"][str(g.label)] += len(g.images)
        result.splits = {s: {"0": c["0"], "1": c["1"]} for s, c in counts.items()}
    result.quarantined = [item.summary() for item in refused]
    result.report = f"runs/{run_id}/import.json"
    report = {
        "schema": "lungcls.import/1",
        "source": source.root_url,
        "options": asdict(options),
        "pixel_mapping": {
            "stored_value": "grey level 0..255",
            "rescale_slope": nominal_rescale(options.window)[0],
            "rescale_intercept": nominal_rescale(options.window)[1],
            "window_center_width": list(options.window),
        },
        "groups": [
            {
                "patient": g.patient_id,
                "label": g.label,
                "split": g.split,
                "images": len(g.images),
                "archive": g.archive,
            }
            for g in groups
        ],
        **result.to_json(),
    }
    storage.write_atomic(result.report, json.dumps(report, indent=2).encode())
    return result
