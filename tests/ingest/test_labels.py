"""labels.csv parsing: keys pseudonymised on read, every problem reported with its row."""

from __future__ import annotations

from lungcls.ingest.deid import pseudonym
from lungcls.ingest.labels import parse_labels

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
