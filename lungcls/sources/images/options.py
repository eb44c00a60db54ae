"""What an image import is asked to do, checked before any file is read."""

from __future__ import annotations

from dataclasses import dataclass

from lungcls.errors import LungclsError


class ImageImportError(LungclsError):
    """The import cannot run as asked; the message says what to change."""


@dataclass(frozen=True)
class ImportOptions:
    """The options of `lungcls import-images` (the package docstring says what each does)."""

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
