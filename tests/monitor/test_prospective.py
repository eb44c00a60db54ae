"""The champion on each new batch, from a real root: synthetic batches ingested, one built
into a dataset version and a model trained on it (in process) and made champion; then a
batch like it, a `synth --shift` batch, one whose labels say the opposite of its images, a
tiny one and an unlabelled one scored by it.

The shifted acquisition (another scanner and kernel, 5 mm slices, +60 HU, more noise) does
not lower this champion's ROC AUC: on these phantoms the label is carried by the nodule's
size and margin, which the shift leaves as they were (measured: AUC 0.93-0.99 on normal
batches of other seeds, 0.98 on the shifted one; +400 HU moves the operating point, the
ranking hardly). So the shifted batch's test asserts what holds, a row whose alert follows
its AUC, and the drift report flags the shift; the alert itself is tested on the batch
whose labels contradict its images, where any model that learned the task scores low.
"""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from sklearn.metrics import roc_auc_score

from lungcls.cli import main
from lungcls.config import Settings
from lungcls.dataset.build import build_dataset
from lungcls.dataset.manifest import load_manifest
from lungcls.dataset.validation import series_frame
from lungcls.evaluate.store import latest_report
from lungcls.ingest.ledger import Ledger
from lungcls.ingest.run import ingest
from lungcls.io.storage import Storage
from lungcls.monitor.batch_evaluation import (
    BatchEvaluation,
    MonitoringError,
    batches_dir,
    commit_batch_evaluation,
    monitoring_dir,
    read_batch_history,
)
from lungcls.monitor.history import history_artifacts, render_history_markdown, render_history_plot
from lungcls.monitor.prospective import evaluate_batch
from lungcls.registry.aliases import move_alias, read_alias
from lungcls.registry.promote import CHAMPION
from lungcls.registry.store import load_record
from lungcls.sources.synth import AcquisitionShift, SynthOptions, SynthScan, synth_batch
from tests.support import TEST_KEY, make_settings, train_in_process

BASE = SynthOptions(
    scans=30, slices=12, rows=40, columns=40, pixel_spacing_mm=7.0, slice_spacing_mm=2.5, seed=41
)
FIRST = "site-a-2019"  # inbox folder names: never in what monitoring writes
NORMAL = "site-a-2020"
SHIFTED = "site-b-2020"
RELABELLED = "site-c-2020"  # its labels.csv says 1 where the phantom's nodule is benign
TRAINING_STEPS = 30
# Below the AUC of a model that learned the task on a batch like its training data, far
# above what it scores on labels that say the opposite: the data decides which alerts.
MIN_BATCH_AUC = 0.8
FLOAT = re.compile(r"(?<![\d.])\d\.\d{3,}(?![\d.])")  # 0.8734…, not a UID's 1.2.826…


@dataclass
class Root:
    settings: Settings
    version: int
    scans: dict[str, list[SynthScan]]


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Root:
    """A champion trained on one batch; four batches ingested after it."""
    tmp = tmp_path_factory.mktemp("prospective")
    settings = make_settings(
        tmp / "root",
        tmp,
        contracts={"max_pixel_spacing_mm": 8.0},
        preprocess={"shape": (8, 8, 8), "spacing_mm": (4.0, 4.0, 4.0)},
        model={"width": 8, "depth": 2},
        evaluation={"bootstrap_rounds": 200},
        monitoring={"min_batch_auc": MIN_BATCH_AUC},
    )
    storage = Storage.from_settings(settings)
    scans = {FIRST: synth_batch(storage, FIRST, BASE)}
    ingest(settings, progress=False)
    build_dataset(settings, progress=False)
    version = train_in_process(settings, steps=TRAINING_STEPS)
    name = settings.model.name
    assert move_alias(storage, name, read_alias(storage, name, CHAMPION), version, "test")
    later = {
        NORMAL: SynthOptions(**{**BASE.__dict__, "scans": 24, "seed": 42}),
        SHIFTED: SynthOptions(
            **{**BASE.__dict__, "scans": 24, "seed": 43, "shift": AcquisitionShift()}
        ),
        RELABELLED: SynthOptions(**{**BASE.__dict__, "scans": 16, "seed": 46}),
        "tiny": SynthOptions(**{**BASE.__dict__, "scans": 3, "seed": 44}),
        "unlabelled": SynthOptions(
            **{**BASE.__dict__, "scans": 4, "seed": 45, "unlabelled_fraction": 1.0}
        ),
    }
    for batch, options in later.items():
        scans[batch] = synth_batch(storage, batch, options)
    flip_labels(tmp / "root" / "inbox" / RELABELLED / "labels.csv")
    ingest(settings, progress=False)
    return Root(settings, version, scans)


def flip_labels(path: Path) -> None:
    """Every label of a labels.csv the other way round (0/1 and negative/positive)."""
    rows = list(csv.DictReader(path.read_text().splitlines()))
    opposite = {"0": "1", "1": "0", "negative": "positive", "positive": "negative"}
    for row in rows:
        row["label"] = opposite[row["label"]]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    path.write_text(buffer.getvalue())


def test_a_batch_like_the_training_data_is_scored_as_an_external_test(root: Root) -> None:
    storage = Storage.from_settings(root.settings)
    row = evaluate_batch(root.settings, NORMAL)
    counts = row.counts
    assert counts.samples == counts.series_in_batch == 24 and counts.excluded_seen == 0
    assert counts.positives + counts.negatives == 24 and counts.unlabelled == 0
    assert row.model_version == root.version and row.batch.startswith("batch-")
    # The champion's own calibration and operating point, unchanged.
    record = load_record(storage, row.model, row.model_version)
    own = latest_report(storage, record, record.dataset)
    assert own is not None and row.threshold == own.operating_point.threshold
    assert row.internal_test_auc == own.metrics.at_operating_point.values["roc_auc"]
    assert "of lung-nodules v1" in row.calibration_from
    # The AUC is that of the recorded scores and labels; the interval surrounds it.
    auc = row.roc_auc.value
    assert auc is not None and auc == pytest.approx(roc_auc_score(row.labels, row.scores))
    low, high = row.roc_auc.ci95
    assert low is not None and high is not None and low <= auc <= high
    for metric in (row.sensitivity, row.specificity, row.ece):
        assert metric.value is not None and 0.0 <= metric.value <= 1.0
    assert auc >= MIN_BATCH_AUC and row.alerts == [], row.summary_lines()
    assert row.scores == sorted(row.scores) and len(row.scores) == 24
    # One mean a patient, the drift report's unit: within the range of the samples' scores.
    support = row.class_support
    assert support is not None and row.patient_scores == sorted(row.patient_scores)
    assert len(row.patient_scores) <= support.patients_with_cancer + support.patients_without_cancer
    assert row.scores[0] <= row.patient_scores[0] <= row.patient_scores[-1] <= row.scores[-1]
    assert any(r.batch == row.batch for r in read_batch_history(storage, row.model))
    png = storage.read_bytes(f"{monitoring_dir(row.model)}/history.png")
    assert png.startswith(b"\x89PNG")
    assert row.batch in storage.read_text(f"{monitoring_dir(row.model)}/history.md")


def test_a_shifted_acquisition_gets_a_row_whose_alert_follows_its_auc(root: Root) -> None:
    row = evaluate_batch(root.settings, SHIFTED)
    assert row.counts.samples == 24 and row.counts.excluded_seen == 0
    auc = row.roc_auc.value
    assert auc is not None and row.roc_auc.ci95[0] is not None
    assert bool(row.alerts) == (auc < MIN_BATCH_AUC)  # see the module docstring


def test_a_batch_the_champion_does_poorly_on_raises_an_alert(root: Root) -> None:
    normal = evaluate_batch(root.settings, NORMAL)
    poor = evaluate_batch(root.settings, RELABELLED)
    assert normal.roc_auc.value is not None and poor.roc_auc.value is not None
    assert poor.roc_auc.value < MIN_BATCH_AUC <= normal.roc_auc.value
    assert poor.alerts == [
        f"ROC AUC {poor.roc_auc.value:.3f} below monitoring.min_batch_auc {MIN_BATCH_AUC:.2f}"
    ]
    assert normal.alerts == [] and "ALERT" in poor.headline()
    caption = history_artifacts(Storage.from_settings(root.settings), poor.model)[0].description
    assert f"latest alert on batch {poor.batch}" in caption


def test_a_tiny_batch_is_not_estimable_and_says_what_is_missing(root: Root) -> None:
    row = evaluate_batch(root.settings, "tiny")
    assert row.counts.samples == 3 and row.class_support is not None
    for metric in (row.roc_auc, row.ece):
        assert metric.value is None and metric.ci95 == (None, None)
        assert metric.not_estimable is not None
        assert metric.not_estimable.startswith("not estimable (needs ")
    support = row.class_support
    assert support.patients_with_cancer + support.patients_without_cancer == 3
    assert not support.estimable and row.alerts == []  # no number, so no AUC alert
    assert any("(5 of each needed)" in line for line in row.summary_lines())
    assert row.table_row()["ROC AUC [95% CI]"] == row.roc_auc.not_estimable
    assert len(row.scores) == 3  # the score distribution is kept all the same


def test_an_unlabelled_batch_keeps_its_scores_and_has_no_metric(root: Root) -> None:
    row = evaluate_batch(root.settings, "unlabelled")
    assert row.counts.samples == row.counts.unlabelled == 4 and row.class_support is None
    assert row.labels == [None] * 4 and len(row.scores) == 4
    assert row.roc_auc.value is None and "no labelled sample" in (row.roc_auc.not_estimable or "")
    assert row.alerts == []


def test_what_the_champion_trained_on_is_left_out(root: Root) -> None:
    storage = Storage.from_settings(root.settings)
    manifest = load_manifest(storage, root.settings.dataset.name)
    seen = sum(s.rows for s in manifest.shards if s.split in ("train", "val"))
    tested = sum(s.rows for s in manifest.shards if s.split == "test")
    row = evaluate_batch(root.settings, FIRST)
    assert row.counts.excluded_seen == seen and row.counts.samples == tested
    with pytest.raises(MonitoringError, match="batch 'nowhere' has no ingested series"):
        evaluate_batch(root.settings, "nowhere")


def test_the_same_batch_twice_is_one_row(root: Root) -> None:
    storage = Storage.from_settings(root.settings)
    name = root.settings.model.name
    first = evaluate_batch(root.settings, NORMAL)
    rows = read_batch_history(storage, name)
    again = evaluate_batch(root.settings, NORMAL)
    assert again == first and read_batch_history(storage, name) == rows
    # A writer that lost the race to a committed row gets that row back.
    assert commit_batch_evaluation(storage, first.model_copy(update={"seq": 0}), "run") == first
    # Two rows of one pair (writers at the same moment): readers keep the first.
    late = first.model_copy(update={"seq": 999, "created_at": "2099-01-01T00:00:00+00:00"})
    assert late.save(storage, f"{batches_dir(name)}/{late.file_name}", exclusive=True)
    assert read_batch_history(storage, name) == rows
    storage.remove(f"{batches_dir(name)}/{late.file_name}")


def test_the_history_plot_marks_a_new_champion(root: Root) -> None:
    row = evaluate_batch(root.settings, NORMAL)
    later = row.model_copy(
        update={"seq": row.seq + 1, "model_version": 7, "internal_test_auc": 0.9}
    )
    rows = [row, later]
    png = render_history_plot(row.model, rows)
    assert png.startswith(b"\x89PNG") and png == render_history_plot(row.model, rows)
    assert png != render_history_plot(row.model, [row, row.model_copy(update={"seq": 9})])
    markdown = render_history_markdown(row.model, rows)
    assert "v7: internal test ROC AUC 0.900" in markdown
    assert markdown.count(f"| {row.batch} |") == 2
    assert "No batch evaluated yet." in render_history_markdown(row.model, [])
    assert render_history_plot(row.model, []).startswith(b"\x89PNG")


def test_nothing_written_names_a_patient_a_series_or_an_inbox_folder(root: Root) -> None:
    storage = Storage.from_settings(root.settings)
    name = root.settings.model.name
    for batch in (NORMAL, SHIFTED, RELABELLED, "tiny", "unlabelled"):
        evaluate_batch(root.settings, batch)
    frame = series_frame(storage, Ledger.load(storage))
    secrets = {FIRST, NORMAL, SHIFTED, RELABELLED, *frame["series_id"], *frame["patient_id"]}
    secrets |= set(frame["study_id"])
    for scans in root.scans.values():
        for scan in scans:
            secrets |= {*scan.patient.values(), *scan.scan.values(), *scan.sop_uids}
    secrets = {s for s in secrets if isinstance(s, str) and len(s) >= 4}
    files = [info.path for info in storage.list_files(monitoring_dir(name))]
    texts = [storage.read_text(p) for p in files if p.endswith((".json", ".md"))]
    for artifact in history_artifacts(storage, name):
        texts += [(artifact.markdown or "").split("data:image")[0], str(artifact.table)]
    for row in read_batch_history(storage, name):
        texts += [*row.summary_lines(), *(a.markdown or "" for a in row.artifacts())]
    assert len(texts) > 5
    # Scores and metrics are numbers: their digits could spell a study time by chance.
    texts = [FLOAT.sub("#", text) for text in texts]
    leaked = {s for s in secrets if any(s in text for text in texts)}
    assert not leaked


@pytest.fixture
def cli_config(root: Root, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("LUNGCLS_PSEUDONYM_KEY", TEST_KEY)
    config = {
        "root": root.settings.root,
        "work_dir": str(tmp_path / "work"),
        "ray": {"executor": "local"},
        "evaluation": {"bootstrap_rounds": 200},
        "monitoring": {"min_batch_auc": MIN_BATCH_AUC},
    }
    path = tmp_path / "lungcls.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def test_the_commands_print_the_history_and_the_drift_verdict(
    root: Root, cli_config: str, capsys: pytest.CaptureFixture[str]
) -> None:
    evaluate_batch(root.settings, NORMAL)
    assert main(["--config", cli_config, "monitor", "--batch", SHIFTED, "--json"]) == 0
    row = BatchEvaluation.from_json(capsys.readouterr().out)
    assert row == evaluate_batch(root.settings, SHIFTED)
    assert main(["--config", cli_config, "monitor"]) == 0
    out = capsys.readouterr().out
    assert "ROC AUC [95% CI]" in out and row.batch in out and "plot: " in out
    assert out.count(row.batch) == 1 and "history.png" in out
    assert main(["--config", cli_config, "drift", "--batch", SHIFTED]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"DRIFTED: batch {row.batch}")
    assert "model_score" in out or "convolution_kernel" in out
    html = next(line for line in out.splitlines() if line.startswith("report: "))
    assert f"/drift/{row.batch}/lung-nodules-v1/drift.html" in html
    assert SHIFTED not in out
    assert main(["--config", cli_config, "drift", "--batch", NORMAL, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)["report"]
    assert any(f["name"] == "model_score" for f in report["features"])  # scored: compared


def test_without_a_champion_the_commands_say_to_promote_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LUNGCLS_PSEUDONYM_KEY", TEST_KEY)
    monkeypatch.setenv("LUNGCLS_WORK_DIR", str(tmp_path / "work"))
    for command in (["monitor"], ["monitor", "--batch", "b"], ["drift", "--batch", "b"]):
        assert main(["--root", str(tmp_path / "empty"), *command]) == 3
        assert "promote a model first" in capsys.readouterr().err
