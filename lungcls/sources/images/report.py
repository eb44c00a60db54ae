"""What an image import did: the summary the CLI prints, and the report it leaves behind.

`ImportResult` is what `import_images` returns and `lungcls import-images --json` prints;
`ImportReport` (`runs/<run>/import.json`, schema `lungcls.import/1`) is the same summary
with how it was made: the source, the options, the pixel mapping and every patient group.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from lungcls.dataset.manifest import SplitCounts, count_lines
from lungcls.io.quarantine import QuarantineItem
from lungcls.io.records import Part, Record
from lungcls.sources.images.options import ImportOptions


class ClassCount(Part):
    """One class folder: its label, the images taken, the patient groups they formed."""

    label: int
    images: int
    patients: int


class RefusedFile(Part):
    """A source file the import refused; its quarantine record says the same."""

    level: Literal["file"] = "file"
    code: str
    message: str
    source_url: str
    member: str  # the file's path inside SRC

    @classmethod
    def of(cls, item: QuarantineItem) -> RefusedFile:
        return cls(
            code=item.code, message=item.message, source_url=item.source_url, member=item.member
        )


class ImportResult(Part):
    """The summary of one import."""

    batch: str
    batch_url: str
    run_id: str
    images: int
    patients: int
    archives: int
    classes: dict[str, ClassCount]  # by class folder name
    splits: SplitCounts  # images by assigned split and label; empty without --test-range
    quarantined: list[RefusedFile]
    report: str  # the ImportReport, under the storage root

    def summary_lines(self, report_url: str) -> list[str]:
        """What `lungcls import-images` prints; `report_url`: where the report is."""
        return [
            f"{self.run_id}: {self.images} images as {self.patients} pseudonymous patients "
            f"in {self.archives} archives, {len(self.quarantined)} refused; batch at "
            f"{self.batch_url}; report {report_url}",
            *(
                f"  class {name:<12} label {entry.label}  {entry.images:>5} images  "
                f"{entry.patients:>4} patients"
                for name, entry in self.classes.items()
            ),
            *count_lines(self.splits),
            *(f"  refused {r.member}: {r.code}: {r.message}" for r in self.quarantined),
        ]


class GreyMapping(Part):
    """How grey levels became HU (the package docstring explains the choice)."""

    stored_value: str = "grey level 0..255"
    rescale_slope: str  # as written in the DICOM files
    rescale_intercept: str
    window_center_width: tuple[float, float]


class PatientGroupEntry(Part):
    """One pseudonymous patient: a range of case numbers of one class, and its archive."""

    patient: str  # class:first-last
    label: int
    split: str | None  # None: no split assigned; "gap": imported without a label
    images: int
    archive: str


class ImportReport(ImportResult, Record):
    """`runs/<run>/import.json`: the summary, and how the import was made (the tag first,
    then the summary's fields, then these)."""

    SCHEMA: ClassVar[str] = "lungcls.import/1"

    source: str
    options: ImportOptions
    pixel_mapping: GreyMapping
    groups: list[PatientGroupEntry]
