"""labels.csv parsing: keys pseudonymised on read, every problem reported with its row."""

from __future__ import annotations

import codecs

from lungcls.ingest.deid import pseudonym
from lungcls.ingest.labels import BatchLabels, parse_labels, read_labels, sniff_delimiter

KEY = b"k" * 32


def test_rows_parse_and_keys_are_pseudonyms() -> None:
    text = (
        "series_uid,study_uid,patient_id,label,nodule_x_mm,nodule_y_mm,nodule_z_mm,"
        "nodule_diameter_mm\n"
        "1.2.3,,,1,10.5,-20,30,12\n"
        ",,MRN42,negative,,,,\n"
        ",9.8.7,,Positive,,,,\n"
    )
    parsed = parse_labels(text, KEY)
    assert parsed.problems == []
    first, second, third = parsed.labels
    assert (first.level, first.label, first.nodule_center_xyz_mm) == ("series", 1, (10.5, -20, 30))
    assert first.nodule_diameter_mm == 12
    assert first.key == pseudonym(KEY, "series", "1.2.3") and "1.2.3" not in first.key
    assert (second.level, second.label, third.level, third.label) == ("patient", 0, "study", 1)
    # the most specific key wins
    assert parsed.lookup(first.key, third.key, second.key) is first
    assert parsed.lookup("other", third.key, second.key) is third
    assert parsed.lookup("other", "other", "other") is None


def test_problems_are_reported_not_dropped() -> None:
    text = (
        "series_uid,label,scanner_notes\n"
        "1.1,maybe,x\n"  # bad label value
        ",1,x\n"  # no key
        "1.2,1,x\n"
        "1.2,0,x\n"  # same series twice
    )
    parsed = parse_labels(text, KEY)
    codes = sorted((p.row or 0, p.code) for p in parsed.problems)
    assert codes == [
        (0, "labels_unknown_column"),
        (1, "labels_bad_value"),
        (2, "labels_bad_value"),
        (4, "labels_duplicate"),
    ]
    assert [label.row for label in parsed.labels] == [3]
    assert all("1.1" not in p.message and "1.2" not in p.message for p in parsed.problems)


def test_missing_columns_make_the_file_unreadable() -> None:
    parsed = parse_labels("name,diagnosis\nx,1\n", KEY)
    assert parsed.labels == []
    assert "labels_unreadable" in {p.code for p in parsed.problems}
    assert parse_labels("", KEY).problems[0].code == "labels_unreadable"


def test_partial_nodule_center_is_a_bad_value() -> None:
    parsed = parse_labels("series_uid,label,nodule_x_mm\n1.1,1,3\n", KEY)
    assert [p.code for p in parsed.problems] == ["labels_bad_value"]


def test_split_is_assigned_on_patient_rows_only() -> None:
    text = (
        "series_uid,patient_id,label,split\n"
        ",P1,1,test\n"
        "1.1,,0,\n"
        "1.2,,0,val\n"  # a series-level split could divide a patient
        ",P2,1,holdout\n"
        ",P3,0,\n"
    )
    parsed = parse_labels(text, KEY)
    assert sorted((p.row, p.code) for p in parsed.problems) == [
        (3, "labels_bad_value"),
        (4, "labels_bad_value"),
    ]
    p1, p3 = pseudonym(KEY, "patient", "P1"), pseudonym(KEY, "patient", "P3")
    assert parsed.split_for(p1) == "test" and parsed.split_for(p3) is None
    # A series labelled by its own row still takes its patient's split.
    series = pseudonym(KEY, "series", "1.1")
    assert parsed.lookup(series, "study-x", p1).level == "series"
    assert parsed.split_for(p1) == "test"


PLAIN = (
    "series_uid,patient_id,label,nodule_x_mm,nodule_y_mm,nodule_z_mm,nodule_diameter_mm,split\n"
    "1.2.3,,1,10.5,-20,30,12.5,\n"
    ",MRN42,negative,,,,,test\n"
)


def _labels(parsed: BatchLabels) -> list[tuple[object, ...]]:
    return [
        (x.row, x.key, x.level, x.label, x.nodule_center_xyz_mm, x.nodule_diameter_mm, x.split)
        for x in parsed.labels
    ]


def test_spreadsheet_exports_read_as_the_plain_file() -> None:
    plain = read_labels(PLAIN.encode(), KEY)
    assert plain.problems == [] and len(plain.labels) == 2
    # Excel "CSV UTF-8" in a locale with decimal commas: BOM, CRLF, ";" and "12,5".
    semicolons = PLAIN.replace(",", ";").replace("10.5", "10,5").replace("12.5", "12,5")
    excel = codecs.BOM_UTF8 + semicolons.replace("\n", "\r\n").encode()
    # Excel "Unicode text": UTF-16 with a BOM, tab-separated; capitalised headers.
    unicode_text = PLAIN.replace(",", "\t").replace("series_uid", "Series_UID")
    utf16 = unicode_text.replace("\n", "\r\n").encode("utf-16")
    # Old Mac line ends, trailing empty columns and a blank row at the end, as sheets leave.
    padded = PLAIN.replace("\n", ",,\r").encode() + b",,,,,,,,,,\r"
    for data in (excel, utf16, padded):
        parsed = read_labels(data, KEY)
        assert parsed.problems == [], data[:20]
        assert _labels(parsed) == _labels(plain)
    # A reader that decoded plain UTF-8 leaves the BOM in the text: still the same labels.
    assert _labels(parse_labels(excel.decode("utf-8"), KEY)) == _labels(plain)


def test_the_delimiter_comes_from_the_header_line_only() -> None:
    assert sniff_delimiter("series_uid;label\n1,2;1\n") == ";"
    assert sniff_delimiter("series_uid\tlabel\n1;2\t1\n") == "\t"
    assert sniff_delimiter("series_uid,label;x\n") == ","  # a tie goes to the comma
    assert sniff_delimiter("label\n") == ","
    # A quoted comma in a data row does not fool it.
    parsed = parse_labels('series_uid;label\n"1,2";1\n', KEY)
    assert parsed.labels[0].key == pseudonym(KEY, "series", "1,2")


def test_undecodable_bytes_are_unreadable_with_the_row_and_no_value() -> None:
    latin1 = "series_uid,label\n1.1,1\nMüller,0\n".encode("latin-1")
    parsed = read_labels(latin1, KEY)
    assert parsed.labels == []
    (problem,) = parsed.problems
    assert (problem.code, problem.row) == ("labels_unreadable", 2)
    assert "ller" not in problem.message and "CSV UTF-8" in problem.message


def test_bad_numbers_name_the_column_not_the_value() -> None:
    parsed = parse_labels("series_uid,label,nodule_diameter_mm\n1.1,1,DOE JANE\n", KEY)
    (problem,) = parsed.problems
    assert (problem.code, problem.row) == ("labels_bad_value", 1)
    assert "nodule_diameter_mm" in problem.message and "DOE" not in problem.message


def test_files_that_are_not_csv_text_are_unreadable_not_a_crash() -> None:
    utf16_without_bom = "series_uid,label\n1.1,1\n".encode("utf-16-le")
    unclosed_quote = b'series_uid,label\n1.1,1\n"' + b"x" * 200_000 + b",1\n"
    for data, row in ((utf16_without_bom, 0), (unclosed_quote, 2)):
        parsed = read_labels(data, KEY)
        assert parsed.labels == []
        assert [(p.code, p.row) for p in parsed.problems] == [("labels_unreadable", row)]


def test_a_missing_header_row_is_not_echoed_as_column_names() -> None:
    parsed = parse_labels("1.2.840.4711,MRN4711,1\n1.2.840.4712,MRN4712,0\n", KEY)
    assert [p.code for p in parsed.problems] == ["labels_unknown_column", "labels_unreadable"]
    message = parsed.problems[0].message
    assert "4711" not in message and "3 that are no names" in message
    named = parse_labels("series_uid,label,Comment\n1.1,1,x\n", KEY).problems[0]
    assert "unknown column(s) comment;" in named.message
