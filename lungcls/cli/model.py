"""`lungcls train | tune | evaluate | promote | rollback | predict`: models, from dataset
versions to predictions."""

from __future__ import annotations

import argparse
import json
import sys

from lungcls.cli.common import Commands, add_command, settings_from, show


def cmd_train(args: argparse.Namespace) -> int:
    from lungcls.train.trainer import train_model

    settings = settings_from(args)
    if args.workers:
        settings.train.num_workers = args.workers
    if args.epochs:
        settings.train.epochs = args.epochs
    result = train_model(settings, args.dataset, args.version, resume=args.resume)
    return show(result, args.json, result.summary_lines())


def cmd_tune(args: argparse.Namespace) -> int:
    from lungcls.train.tune import tune_model

    settings = settings_from(args)
    if args.trials:
        settings.tune.trials = args.trials
    if args.max_epochs:
        settings.tune.max_epochs = args.max_epochs
    result = tune_model(settings, args.dataset, args.version)
    return show(result, args.json, result.summary_lines())


def cmd_evaluate(args: argparse.Namespace) -> int:
    from lungcls.evaluate.evaluation import evaluate_model
    from lungcls.io.storage import Storage

    settings = settings_from(args)
    result = evaluate_model(
        settings, args.name, args.model, args.dataset, args.dataset_version, force=args.force
    )
    report, storage = result.report, Storage.from_settings(settings)
    where = {
        "html": storage.url(f"{result.folder}/report.html"),
        "json": storage.url(f"{result.folder}/report.json"),
    }
    if args.json:
        key = {
            "model": report.model.model_dump(mode="json"),
            "dataset": report.dataset.model_dump(mode="json"),
            "operating_point": report.operating_point.model_dump(mode="json"),
            "test": {m.name: {"value": m.value, "ci95": m.ci95} for m in report.key_metrics()},
            "report": where,
        }
        print(json.dumps(key, indent=2))
        return 0
    print(report.headline(settings.promotion.max_fold_spread))
    print(report.key_metrics_caption() + ":")
    for row in report.key_metrics_rows():
        print("  " + _metric_line(row))
    print(f"report: {where['html']}")
    return 0


def _metric_line(row: dict[str, str | float | None]) -> str:
    """A row of `EvaluationReport.key_metrics_rows` (the Prefect table's rows) as text."""
    low, high = row["95% CI low"], row["95% CI high"]
    text = f"{row['metric']:<18} {_cell(row['value'])}"
    if low is None or high is None:
        return text
    return f"{text}  (95 % CI {_cell(low)}-{_cell(high)})"


def _cell(value: str | float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def cmd_promote(args: argparse.Namespace) -> int:
    from lungcls.registry.promote import promote

    decision = promote(settings_from(args), args.version, args.name)
    show(decision, args.json, decision.summary_lines())
    return 0 if decision.outcome == "promoted" else 4


def cmd_rollback(args: argparse.Namespace) -> int:
    from lungcls.registry.promote import rollback

    decision = rollback(settings_from(args), args.name)
    print("\n".join(decision.summary_lines()))
    return 0 if decision.outcome == "rolled_back" else 4


def cmd_predict(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from lungcls.predict.batch import predict_batch, predict_source

    settings = settings_from(args)
    if args.batch:
        predictions, where = predict_batch(settings, args.batch, args.model_version, args.out)
        print(f"{len(predictions)} series scored; results in {where}/predictions.parquet and .csv")
        return 0
    if not args.source:
        print("lungcls predict: give a file, folder or archive, or --batch NAME", file=sys.stderr)
        return 2
    center = tuple(float(v) for v in args.center.split(",")) if args.center else None
    predictions = predict_source(
        settings, args.source, center, args.model_version, saliency_dir=args.saliency
    )
    if args.json:
        print(json.dumps([asdict(p) for p in predictions], indent=2))
        return 0
    for p in predictions:
        print(
            f"{p.series_id}: p(malignant) {p.probability:.4f} -> {p.decision} at "
            f"{p.threshold:.3f} [{p.threshold_source}], center from {p.center}, "
            f"model {p.model} v{p.model_version}"
        )
    return 0


def register(commands: Commands) -> None:
    train = add_command(
        commands, "train", cmd_train, "train a CNN on a dataset version with Ray Train"
    )
    train.add_argument("--dataset", help="dataset name (default: dataset.name)")
    train.add_argument("--version", type=int, help="dataset version (default: the latest)")
    train.add_argument("--workers", type=int, help="Ray Train workers (default: train.num_workers)")
    train.add_argument("--epochs", type=int, help="epochs (default: train.epochs)")
    train.add_argument(
        "--resume", action="store_true", help="resume the latest unfinished run from its checkpoint"
    )
    train.add_argument("--json", action="store_true", help="print a machine-readable summary")

    tune = add_command(
        commands, "tune", cmd_tune, "search hyperparameters with Ray Tune (ASHA); publish the best"
    )
    tune.add_argument("--dataset", help="dataset name (default: dataset.name)")
    tune.add_argument("--version", type=int, help="dataset version (default: the latest)")
    tune.add_argument("--trials", type=int, help="number of trials (default: tune.trials)")
    tune.add_argument("--max-epochs", type=int, help="epochs of the longest trial")
    tune.add_argument("--json", action="store_true", help="print a machine-readable summary")

    evaluate = add_command(
        commands, "evaluate", cmd_evaluate, "evaluate a model version on a test split with CIs"
    )
    evaluate.add_argument("--name", help="model name (default: model.name)")
    evaluate.add_argument("--model", help="version number or 'champion' (default: the latest)")
    evaluate.add_argument("--dataset", help="dataset (default: the one the model trained on)")
    evaluate.add_argument("--dataset-version", type=int, help="dataset version (default: same)")
    evaluate.add_argument("--force", action="store_true", help="recompute an existing report")
    evaluate.add_argument("--json", action="store_true", help="print the key metrics as JSON")

    promote = add_command(
        commands, "promote", cmd_promote, "gate a candidate; make it champion if it passes"
    )
    promote.add_argument("--version", type=int, help="candidate version (default: the latest)")
    promote.add_argument("--name", help="model name (default: model.name)")
    promote.add_argument("--json", action="store_true", help="print the decision as JSON")
    rollback = add_command(
        commands, "rollback", cmd_rollback, "move the champion back to the version before"
    )
    rollback.add_argument("--name", help="model name (default: model.name)")

    predict = add_command(commands, "predict", cmd_predict, "score DICOM series with the champion")
    predict.add_argument("source", nargs="?", help="DICOM file, series folder or archive (or URL)")
    predict.add_argument("--batch", help="score every archive of inbox/BATCH instead")
    predict.add_argument("--center", help="nodule center 'x,y,z' in patient mm")
    predict.add_argument("--model-version", help="version or alias (default: champion)")
    predict.add_argument("--saliency", help="folder for Grad-CAM overlays (PNG per series)")
    predict.add_argument("--out", help="batch output folder under the root")
    predict.add_argument("--json", action="store_true", help="print predictions as JSON")
