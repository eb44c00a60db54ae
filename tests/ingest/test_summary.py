"""The ingest summary: one record behind the CLI text, `--json` and the flow's artifacts."""

from __future__ import annotations

from lungcls.ingest.summary import IngestSummary
from lungcls.io.quarantine import QuarantineItem

ITEMS = [
    QuarantineItem(
        level="archive",
        code="corrupt_archive",
        message="not a zip file",
        source_url="file:///root/inbox/b/junk.zip",
        archive_id="archive-1234",
    ).redacted(),
    QuarantineItem(
        level="labels",
        code="labels_unmatched",
        message="row names a series that no ingested series of batch 'b' has",
        source_url="file:///root/inbox/b/labels.csv",
        row=3,
    )
    .stamped("ingest-1")
    .redacted(),
]


def _summary() -> IngestSummary:
    return IngestSummary(
        run_id="ingest-1",
        root="file:///root",
        archives_seen=4,
        archives_ingested=2,
        archives_skipped=1,
        archives_rejected=1,
        series_ingested=3,
        bytes_read=2_000_000,
        seconds=1.25,
        quarantined=ITEMS,
    )


def test_lines_markdown_and_table_render_the_same_counts() -> None:
    summary = _summary()
    first, *items = summary.summary_lines()
    assert first.startswith("ingest-1: 4 archives seen, 2 ingested, 1 skipped, 1 rejected;")
    assert items == [
        "  quarantined archive archive-1234: corrupt_archive: not a zip file",
        "  quarantined labels row 3: labels_unmatched: row names a series that no ingested "
        "series of batch 'b' has",
    ]
    assert all("inbox" not in line for line in summary.summary_lines())
    markdown = summary.markdown("file:///root/series", "file:///root/ledger")
    assert "| 4 | 2 | 1 | 1 | 3 | 2 |" in markdown and "2.0 MB read in 1.2 s" in markdown
    table = summary.quarantine_table("file:///root/quarantine/ingest-1")
    assert [row["code"] for row in table] == ["corrupt_archive", "labels_unmatched"]
    assert all("inbox" not in value for row in table for value in row.values())


def test_the_operator_line_names_the_source() -> None:
    item = QuarantineItem(
        level="file",
        code="not_dicom",
        message="not a DICOM file",
        source_url="file:///root/inbox/b/a.zip",
        member="x/notes.txt",
    )
    assert (
        item.line() == "  quarantined file file:///root/inbox/b/a.zip x/notes.txt: not_dicom: "
        "not a DICOM file"
    )
    assert item.redacted().line() == "  quarantined file : not_dicom: not a DICOM file"


def test_a_cached_summary_says_nothing_was_done() -> None:
    summary = _summary()
    cached = summary.as_cached()
    assert cached.cached and not summary.cached
    assert (cached.archives_seen, cached.archives_skipped) == (4, 4)
    assert (cached.archives_ingested, cached.archives_rejected, cached.series_ingested) == (0, 0, 0)
    assert (cached.bytes_read, cached.seconds, cached.quarantined) == (0, 0.0, [])
    assert "(inbox unchanged since this run: nothing to do)" in cached.markdown("s", "l")


def test_it_survives_a_prefect_result_round_trip() -> None:
    from prefect.serializers import JSONSerializer

    summary = _summary()
    assert IngestSummary.from_json(summary.to_json()) == summary
    # Tasks return the record itself: Prefect's JSON results store it with its class name
    # and give the same record back (what a cached task result is).
    serializer = JSONSerializer()
    assert serializer.loads(serializer.dumps(summary)) == summary
    assert IngestSummary.from_json(summary.to_json()).quarantined[1].run == "ingest-1"
