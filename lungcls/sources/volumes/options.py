"""What a volume import is asked to do, checked before any file is read."""

from __future__ import annotations

from dataclasses import dataclass

from lungcls.dataset.splits import SPLITS
from lungcls.errors import LungclsError


class VolumeImportError(LungclsError):
    """The import cannot run as asked (no SRC/labels.csv, a required column missing, bad
    options); the message says what to change. Single bad rows and files are refused with a
    code instead, and the others are imported."""


@dataclass(frozen=True)
class VolumeImportOptions:
    """The options of `lungcls import-volumes` (the package docstring says what each does).

    Splits apply to the patients whose rows give no `split` (a `split` column wins): either
    `split` for all of them (`test` for an external set), or shares `test_fraction` and
    `val_fraction` of them, patient by patient; neither leaves the split to the pipeline's
    keyed hash."""

    test_fraction: float = 0.0
    val_fraction: float = 0.0
    split: str | None = None

    def check(self) -> None:
        if not (0 <= self.test_fraction < 1 and 0 <= self.val_fraction < 1):
            raise VolumeImportError(
                f"--test-fraction {self.test_fraction} and --val-fraction {self.val_fraction} "
                "must lie in [0, 1)"
            )
        if self.test_fraction + self.val_fraction >= 1:
            raise VolumeImportError("--test-fraction and --val-fraction leave nothing to train on")
        if self.split is not None and self.split not in SPLITS:
            raise VolumeImportError(f"--split {self.split!r}: expected one of {', '.join(SPLITS)}")
        if self.split is not None and (self.test_fraction or self.val_fraction):
            raise VolumeImportError(
                "--split assigns every patient one split: give it or the fractions, not both"
            )

    @property
    def assigns_splits(self) -> bool:
        return self.split is not None or bool(self.test_fraction or self.val_fraction)
