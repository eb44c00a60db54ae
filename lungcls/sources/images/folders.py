"""Reading SRC: one folder per class of JPEG/PNG slices, each image checked and numbered.

Pixels are decoded here to check them (8-bit grey, not a duplicate) and again when the
image is written, so an import holds one image in memory at a time.
"""

from __future__ import annotations

import hashlib
import io
import posixpath
import re
from dataclasses import dataclass

import numpy as np

from lungcls.io.quarantine import QuarantineItem
from lungcls.io.storage import Storage
from lungcls.sources.images.options import ImageImportError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}
GREY_TOLERANCE = 4  # JPEG rounding makes the channels of a grey RGB image differ slightly
_CASE_NUMBER = re.compile(r"\d+")


@dataclass(frozen=True)
class SourceImage:
    """One accepted image: where it is and its case number."""

    class_name: str
    name: str  # file name inside its class folder
    number: int

    @property
    def rel(self) -> str:
        return f"{self.class_name}/{self.name}"


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
    source: Storage, positive: tuple[str, ...]
) -> tuple[dict[str, list[SourceImage]], list[QuarantineItem]]:
    """Every usable image under SRC/<class>/, by class in case-number order, and the refused
    files (`positive`: the classes that must be there)."""
    classes = [posixpath.basename(d) for d in source.list_dirs("")]
    if not classes:
        raise ImageImportError(f"{source.root_url} holds no class folders (SRC/<class>/*.png)")
    unknown = sorted(set(positive) - set(classes))
    if unknown:
        raise ImageImportError(
            f"--positive class(es) {', '.join(unknown)} not found in {source.root_url}; "
            f"its class folders are {', '.join(classes)}"
        )
    reader = _FolderReader(source)
    for info in source.list_files(""):
        if "/" not in info.path:
            reader.refuse(info.path, "not_in_class_folder", "files must sit in a class folder")
    images = {class_name: reader.read_class(class_name) for class_name in classes}
    return images, reader.refused


class _FolderReader:
    """Accepts or refuses the files of SRC's class folders, one class after another; pixel
    duplicates are looked for across all classes."""

    def __init__(self, source: Storage) -> None:
        self.source = source
        self.refused: list[QuarantineItem] = []
        self.seen: dict[str, str] = {}  # pixel digest -> the first image that had it

    def refuse(self, rel: str, code: str, message: str) -> None:
        self.refused.append(
            QuarantineItem(
                level="file",
                code=code,
                message=message,
                source_url=self.source.url(rel),
                member=rel,
            )
        )

    def read_class(self, class_name: str) -> list[SourceImage]:
        accepted = []
        for info in self.source.list_files(class_name):
            image = self._accept(info.path, info.path[len(class_name) + 1 :], class_name)
            if image is not None:
                accepted.append(image)
        if not accepted:
            raise ImageImportError(
                f"class folder {class_name!r} holds no usable JPEG/PNG image: remove it, or "
                "fix its files (see the reasons above)"
                + "".join(f"\n  {r.member}: {r.message}" for r in self.refused if r.member)
            )
        return sorted(accepted, key=lambda i: (i.number, i.name))

    def _accept(self, rel: str, name: str, class_name: str) -> SourceImage | None:
        if "/" in name or posixpath.splitext(name)[1].lower() not in IMAGE_SUFFIXES:
            self.refuse(rel, "not_image", "not a .jpg/.jpeg/.png file directly in a class folder")
            return None
        number = case_number(name)
        if number is None:
            self.refuse(rel, "no_case_number", "no number in the file name to group patients by")
            return None
        try:
            grey = grey_pixels(self.source.read_bytes(rel))
        except ImageRefused as error:
            self.refuse(rel, error.code, str(error))
            return None
        digest = hashlib.sha256(f"{grey.shape}".encode() + grey.tobytes()).hexdigest()
        if digest in self.seen:
            # Kept once: two copies in different patient groups could sit on both sides of
            # a split.
            self.refuse(
                rel, "duplicate_image", f"same pixels as {self.seen[digest]}; kept that one"
            )
            return None
        self.seen[digest] = rel
        return SourceImage(class_name, name, number)
