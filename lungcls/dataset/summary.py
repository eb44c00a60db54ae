"""What one `build_dataset` call did: the version it built or found up to date, and why.

`lungcls dataset build` prints it, `--json` writes it whole, and the build_dataset flow
turns it (with the version's manifest) into its Prefect artifacts: all render this record.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from lungcls.dataset.manifest import (
    CONTRACT_TABLE_HEADER,
    DatasetRef,
    Manifest,
    SplitCounts,
    count_lines,
    load_build_record,
)
from lungcls.io.artifacts import Artifact
from lungcls.io.quarantine import QuarantineItem
from lungcls.io.records import Record
from lungcls.io.storage import Storage


class BuildSummary(Record):
    """What one `build_dataset` call did (what the CLI prints and the flow's artifacts show)."""

    SCHEMA: ClassVar[str] = "lungcls.dataset-build-summary/1"

    name: str
    version: int
    created: bool  # False: no new data, `version` is the existing latest
    manifest_path: str
    preprocessed: int = 0
    reused_shards: int = 0
    label_changes: int = 0  # series whose label differs from the parent version's
    quarantined: list[QuarantineItem] = Field(default_factory=list)
    counts: SplitCounts = Field(default_factory=dict)
    seconds: float = 0.0

    @classmethod
    def up_to_date(cls, latest: Manifest, seconds: float) -> BuildSummary:
        return cls(
            name=latest.name,
            version=latest.version,
            created=False,
            manifest_path=latest.ref.manifest_path,
            counts=latest.counts,
            seconds=seconds,
        )

    @property
    def ref(self) -> DatasetRef:
        return DatasetRef(name=self.name, version=self.version)

    def as_cached(self) -> BuildSummary:
        """This summary as seen by a later run that found it cached: nothing was done."""
        update = {
            "created": False,
            "preprocessed": 0,
            "reused_shards": 0,
            "label_changes": 0,
            "quarantined": [],
        }
        return self.model_copy(update={**update, "seconds": 0.0})

    def summary_lines(self) -> list[str]:
        """What `lungcls dataset build` prints."""
        if not self.created:
            return [
                f"dataset {self.ref} is up to date: no new data, no new version",
                *(item.line() for item in self.quarantined),
            ]
        changed = (
            [f"  {self.label_changes} series changed label (`lungcls dataset show` lists them)"]
            if self.label_changes
            else []
        )
        return [
            f"dataset {self.ref}: {self.preprocessed} series preprocessed, "
            f"{self.reused_shards} shards reused, {len(self.quarantined)} quarantined "
            f"({self.seconds:.1f} s); manifest {self.manifest_path}",
            *count_lines(self.counts),
            *changed,
            *(item.line() for item in self.quarantined),
        ]

    def validation_markdown(self, manifest: Manifest, data_docs_url: str) -> str:
        """The validation-summary artifact: each contract's verdict on the version."""
        state = "built now" if self.created else "unchanged (no new series)"
        lines = [
            f"# Validation of {manifest.ref} ({state})",
            "",
            *CONTRACT_TABLE_HEADER,
            *(c.table_line() for c in manifest.contracts.values()),
            "",
            f"Quarantined at this build: {len(self.quarantined)}; excluded: "
            f"{manifest.excluded.text()}.",
            "",
            f"Data Docs: `{data_docs_url}/<contract>/index.html`",
        ]
        return "\n".join(lines)

    def version_description(self, manifest: Manifest, manifest_url: str) -> str:
        """The caption of the dataset-version artifact (its table is `manifest.count_table`)."""
        changed = len(manifest.label_changes)
        return (
            f"{manifest.ref}: samples by split and label ({len(manifest.shards)} shards, "
            f"parent v{manifest.parent}, {self.reused_shards} shards reused"
            + (f", {changed} series changed label" if changed else "")
            + f"); manifest {manifest_url}"
        )

    def artifacts(self, storage: Storage) -> list[Artifact]:
        """The contracts' verdicts and the version's counts, for the Prefect UI."""
        manifest = Manifest.load(storage, self.manifest_path)
        data_docs = storage.url(load_build_record(storage, self.ref).data_docs)
        return [
            Artifact(
                key="validation-summary",
                description="Data contracts",
                markdown=self.validation_markdown(manifest, data_docs),
            ),
            Artifact.of_table(
                "dataset-version",
                self.version_description(manifest, storage.url(self.manifest_path)),
                manifest.count_table(),
                "no samples",
            ),
        ]
