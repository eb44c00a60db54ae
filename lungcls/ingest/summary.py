"""What an ingest run did: counts, and every item it quarantined with the reason.

`lungcls ingest` prints it, `--json` writes it whole, and the ingest flow turns it into
its Prefect artifacts: all three render this one record.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from lungcls.io.artifacts import Artifact
from lungcls.io.quarantine import QUARANTINE_DIR, QuarantineItem
from lungcls.io.records import Record
from lungcls.io.storage import Storage


class IngestSummary(Record):
    SCHEMA: ClassVar[str] = "lungcls.ingest-summary/1"

    run_id: str
    root: str  # the storage root URL
    archives_seen: int = 0
    archives_ingested: int = 0
    archives_skipped: int = 0  # already ingested, or byte-identical to what was
    archives_rejected: int = 0
    series_ingested: int = 0
    series_quarantined: int = 0
    files_quarantined: int = 0
    duplicate_files_dropped: int = 0
    # Files that are fine but not axial CT (localizers, dose reports, …), by skip code.
    skipped: dict[str, int] = Field(default_factory=dict)
    bytes_read: int = 0
    seconds: float = 0.0
    # Redacted copies (no inbox paths): this record travels to Prefect. The operator's
    # full records are under `quarantine_dir`.
    quarantined: list[QuarantineItem] = Field(default_factory=list)
    cached: bool = False  # True: a later run found this one's result; it did nothing

    @property
    def quarantine_dir(self) -> str:
        """Where this run's reason records are, under the root."""
        return f"{QUARANTINE_DIR}/{self.run_id}"

    def as_cached(self) -> IngestSummary:
        """This summary as seen by a later run on an unchanged inbox: nothing was opened,
        ingested or quarantined; every archive counts as already done."""
        nothing = dict.fromkeys(
            (
                "archives_ingested",
                "archives_rejected",
                "series_ingested",
                "series_quarantined",
                "files_quarantined",
                "duplicate_files_dropped",
                "bytes_read",
            ),
            0,
        )
        return self.model_copy(
            update={
                **nothing,
                "archives_skipped": self.archives_seen,
                "seconds": 0.0,
                "quarantined": [],
                "skipped": {},
                "cached": True,
            }
        )

    def headline(self) -> list[str]:
        """The counts: what `lungcls ingest` prints before the refused items."""
        lines = [
            f"{self.run_id}: {self.archives_seen} archives seen, "
            f"{self.archives_ingested} ingested, {self.archives_skipped} skipped, "
            f"{self.archives_rejected} rejected; {self.series_ingested} series ingested, "
            f"{self.series_quarantined} series and {self.files_quarantined} files quarantined "
            f"({self.seconds:.1f} s)"
        ]
        if self.skipped:
            counts = ", ".join(f"{n} {code}" for code, n in sorted(self.skipped.items()))
            lines.append(f"  skipped files (fine, but not axial CT images): {counts}")
        return lines

    def summary_lines(self) -> list[str]:
        """The counts and each refused item (redacted: no inbox paths)."""
        return [*self.headline(), *(item.line() for item in self.quarantined)]

    def markdown(self, series_url: str, ledger_url: str) -> str:
        """The ingest-summary artifact."""
        cached = " (inbox unchanged since this run: nothing to do)" if self.cached else ""
        return "\n".join(
            [
                f"# Ingest {self.run_id}{cached}",
                "",
                "| archives seen | ingested | already done | rejected | new series | "
                "quarantined items |",
                "|---|---|---|---|---|---|",
                f"| {self.archives_seen} | {self.archives_ingested} | "
                f"{self.archives_skipped} | {self.archives_rejected} | "
                f"{self.series_ingested} | {len(self.quarantined)} |",
                "",
                f"Series store: `{series_url}`; ledger: `{ledger_url}`; "
                f"{self.bytes_read / 1e6:.1f} MB read in {self.seconds:.1f} s.",
                *self._skipped_markdown(),
            ]
        )

    def _skipped_markdown(self) -> list[str]:
        if not self.skipped:
            return []
        counts = ", ".join(f"{n} `{code}`" for code, n in sorted(self.skipped.items()))
        return ["", f"Skipped files (fine, but not axial CT images; not errors): {counts}."]

    def quarantine_table(self, records_url: str) -> list[dict[str, str]]:
        """The ingest-quarantine artifact: one row per item, pointing at its records."""
        return [item.table_row(records_url) for item in self.quarantined]

    def artifacts(self, storage: Storage) -> list[Artifact]:
        """The run's summary and what it quarantined, for the Prefect UI."""
        return [
            Artifact(
                key="ingest-summary",
                description="Ingest run",
                markdown=self.markdown(storage.url("series"), storage.url("ledger")),
            ),
            Artifact.of_table(
                "ingest-quarantine",
                "What this ingest quarantined, with the reason",
                self.quarantine_table(storage.url(self.quarantine_dir)),
                "nothing quarantined",
            ),
        ]
