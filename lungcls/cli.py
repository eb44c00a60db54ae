"""The `lungcls` command line: one subcommand per stage, all reading the same settings.

    lungcls config                      print the resolved settings (secrets masked)
    lungcls synth --batch demo-001      write a synthetic batch of CT archives into the inbox
    lungcls import-images SRC --batch B --positive CLASS   image folders -> a DICOM batch
    lungcls ingest [--batch B] [--json] ingest new archives into the series store
    lungcls dataset build|list|show     versioned, validated, patient-split datasets
    lungcls train [--resume]            train a CNN with Ray Train; publish a candidate model
    lungcls tune [--trials N]           hyperparameter search (Ray Tune, ASHA); publish the best
    lungcls evaluate [--model V]        metrics with CIs, operating point, plots, report
    lungcls promote | rollback          the gated champion alias, with a logged decision
    lungcls predict PATH | --batch B    score new series with the champion
    lungcls run [--batch B] [--force]   the `retrain` Prefect flow: every stage, only what is new
    lungcls demo                        `retrain` end to end on a synthetic batch

Global options go before the subcommand: `lungcls --root s3://bucket/lungcls ingest`.
Exit status: 0 when the command ran (quarantined input included), 2 for bad usage or
configuration, 1 when storage or another service could not be used, 3 when the data as a
whole breaks a contract (the build stops; nothing is published), 4 when a candidate was
rejected by the promotion gate.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError
from pydantic import ValidationError

from lungcls.config import ConfigError, Settings, load_settings
from lungcls.errors import LungclsError
from lungcls.storage import StorageError

log = logging.getLogger("lungcls")


def _settings(args: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = {}
    if args.root:
        overrides["root"] = args.root
    settings = load_settings(args.config, **overrides)
    if args.executor:  # set after loading: the rest of the ray section stays as configured
        settings.ray.executor = args.executor
    return settings


def cmd_config(args: argparse.Namespace) -> int:
    print(_settings(args).to_yaml(), end="")
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    from lungcls.storage import Storage
    from lungcls.synth import SynthOptions, synth_batch

    settings = _settings(args)
    options = SynthOptions(
        scans=args.scans,
        positive_fraction=args.positive_fraction,
        slices=args.slices,
        rows=args.rows,
        columns=args.columns,
        pixel_spacing_mm=args.pixel_spacing,
        slice_spacing_mm=args.slice_spacing,
        noise_hu=args.noise,
        mode=args.mode,
        unlabelled_fraction=args.unlabelled_fraction,
        seed=args.seed,
    )
    storage = Storage.from_settings(settings)
    scans = synth_batch(storage, args.batch, options)
    archives = sorted({s.archive for s in scans})
    positives = sum(s.label == 1 for s in scans)
    print(
        f"wrote {len(scans)} synthetic scans ({positives} positive) in {len(archives)} archives "
        f"to {storage.url(f'{settings.ingest.inbox}/{args.batch}')}"
    )
    return 0


def _pair(text: str, separator: str, option: str) -> tuple[float, float]:
    try:
        first, second = (float(v) for v in text.split(separator))
    except ValueError:
        raise ConfigError(f"{option} {text!r}: expected two numbers as A{separator}B") from None
    return first, second


def cmd_import_images(args: argparse.Namespace) -> int:
    from lungcls.images import ImportOptions, import_images
    from lungcls.storage import Storage

    settings = _settings(args)
    options = ImportOptions(
        positive=tuple(c.strip() for c in args.positive.split(",") if c.strip()),
        group_size=args.group_size,
        window=_pair(args.window, ",", "--window"),
        fov_mm=args.fov_mm,
        slice_thickness_mm=args.slice_thickness_mm,
        test_range=_pair(args.test_range, ":", "--test-range") if args.test_range else None,
        val_fraction=args.val_fraction,
        val_blocks=args.val_blocks,
        gap_groups=args.gap_groups,
    )
    storage = Storage(args.out or settings.root, settings.s3_endpoint_url)
    result = import_images(
        args.source, storage, args.batch, options, settings.ingest.inbox, settings.s3_endpoint_url
    )
    if args.json:
        print(json.dumps(result.to_json(), indent=2))
        return 0
    print(
        f"{result.run_id}: {result.images} images as {result.patients} pseudonymous patients "
        f"in {result.archives} archives, {len(result.quarantined)} refused; batch at "
        f"{result.batch_url}; report {storage.url(result.report)}"
    )
    for name, entry in result.classes.items():
        print(
            f"  class {name:<12} label {entry['label']}  {entry['images']:>5} images  "
            f"{entry['patients']:>4} patients"
        )
    if result.splits:
        _print_counts(result.splits)
    for item in result.quarantined:
        print(f"  refused {item['member']}: {item['code']}: {item['message']}")
    return 0


def cmd_ingest(args: argparse.Namespace) -> int:
    from lungcls.ingest import ingest

    settings = _settings(args)
    summary = ingest(settings, batch=args.batch, progress=None if not args.json else False)
    if args.json:
        print(json.dumps(summary.to_json(), indent=2))
        return 0
    print(
        f"{summary.run_id}: {summary.archives_seen} archives seen, "
        f"{summary.archives_ingested} ingested, {summary.archives_skipped} skipped, "
        f"{summary.archives_rejected} rejected; {summary.series_ingested} series ingested, "
        f"{summary.series_quarantined} series and {summary.files_quarantined} files quarantined "
        f"({summary.seconds:.1f} s)"
    )
    for item in summary.quarantined:
        where = item.get("member") or item.get("series_id") or item.get("row") or ""
        print(f"  quarantined {item['level']} {where}: {item['code']}: {item['message']}")
    return 0


def cmd_dataset_build(args: argparse.Namespace) -> int:
    from lungcls.datasets import build_dataset

    settings = _settings(args)
    if args.batch:
        settings.dataset.batches = args.batch
    result = build_dataset(settings, name=args.name, progress=None if not args.json else False)
    if args.json:
        print(json.dumps(vars(result), indent=2))
        return 0
    if not result.created:
        print(f"dataset {result.name} v{result.version} is up to date: no new data, no new version")
        return 0
    print(
        f"dataset {result.name} v{result.version}: {result.preprocessed} series preprocessed, "
        f"{result.reused_shards} shards reused, {len(result.quarantined)} quarantined "
        f"({result.seconds:.1f} s); manifest {result.manifest_path}"
    )
    _print_counts(result.counts)
    for item in result.quarantined:
        print(f"  quarantined {item.get('series_id', '')}: {item['code']}: {item['message']}")
    return 0


def _print_counts(counts: dict[str, dict[str, int]]) -> None:
    for split, by_label in counts.items():
        print(
            f"  {split:<5}  negative {by_label.get('0', 0):>5}  positive {by_label.get('1', 0):>5}"
        )


def cmd_dataset_list(args: argparse.Namespace) -> int:
    from lungcls.datasets import list_versions, load_manifest
    from lungcls.storage import Storage

    settings = _settings(args)
    storage = Storage.from_settings(settings)
    name = args.name or settings.dataset.name
    versions = list_versions(storage, name)
    if not versions:
        print(f"dataset {name}: no versions yet (lungcls dataset build)")
    for version in versions:
        m = load_manifest(storage, name, version)
        contracts = ", ".join(
            f"{c['name']} {c['version']} ({c['rows_rejected']} rejected)"
            for c in m["contracts"].values()
        )
        splits = " ".join(f"{s}={sum(c.values())}" for s, c in m["counts"].items())
        print(
            f"{name} v{version}: {m['samples']} samples ({splits}); parent "
            f"{m['parent'] or '-'}; preprocess {m['preprocess']['hash']}; {contracts}"
        )
    return 0


def cmd_dataset_show(args: argparse.Namespace) -> int:
    from lungcls.datasets import load_manifest
    from lungcls.storage import Storage

    settings = _settings(args)
    manifest = load_manifest(
        Storage.from_settings(settings), args.name or settings.dataset.name, args.version
    )
    if args.json:
        print(json.dumps(manifest, indent=2))
        return 0
    print(f"dataset {manifest['name']} v{manifest['version']} (parent {manifest['parent'] or '-'})")
    print(
        f"  tensor {manifest['tensor']['shape']} {manifest['tensor']['dtype']}, preprocess "
        f"{manifest['preprocess']['hash']}: {json.dumps(manifest['preprocess']['config'])}"
    )
    _print_counts(manifest["counts"])
    print(f"  excluded: {manifest['excluded']}")
    for contract in manifest["contracts"].values():
        print(
            f"  contract {contract['name']} {contract['version']}: "
            f"{contract['evaluated_expectations']} expectations, {contract['rows']} rows, "
            f"{contract['rows_rejected']} rejected"
        )
    print(
        f"  {len(manifest['shards'])} shards, "
        f"{sum(s['bytes'] for s in manifest['shards']) / 1e6:.1f} MB"
    )
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from lungcls.train import train_model

    settings = _settings(args)
    if args.workers:
        settings.train.num_workers = args.workers
    if args.epochs:
        settings.train.epochs = args.epochs
    result = train_model(settings, args.dataset, args.version, resume=args.resume)
    if args.json:
        print(json.dumps(vars(result), indent=2))
        return 0
    print(
        f"{result.run_id}: model {result.model_name} v{result.model_version} (candidate), best "
        f"val AUC {result.best_val_auc:.4f} at epoch {result.best_epoch + 1} of "
        f"{result.epochs_run}, {result.seconds:.0f} s"
    )
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    from lungcls.tune import tune_model

    settings = _settings(args)
    if args.trials:
        settings.tune.trials = args.trials
    if args.max_epochs:
        settings.tune.max_epochs = args.max_epochs
    result = tune_model(settings, args.dataset, args.version)
    if args.json:
        print(json.dumps(vars(result), indent=2))
        return 0
    print(
        f"{result.run_id}: best trial published as model {result.model_name} "
        f"v{result.model_version} (candidate), val AUC {result.best_val_auc:.4f}, "
        f"{result.seconds:.0f} s"
    )
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from lungcls.evaluate import evaluate_model

    settings = _settings(args)
    result = evaluate_model(
        settings, args.name, args.model, args.dataset, args.dataset_version, force=args.force
    )
    report = result.report
    at_op = report["metrics"]["at_operating_point"]
    key = {
        "model": report["model"],
        "dataset": report["dataset"],
        "operating_point": report["operating_point"],
        "test": {
            name: {"value": at_op["values"][name], "ci95": at_op["ci95"].get(name)}
            for name in ("roc_auc", "sensitivity", "specificity", "ppv", "npv", "ece")
        },
        "report": {
            "html": _url(settings, f"{result.folder}/report.html"),
            "json": _url(settings, f"{result.folder}/report.json"),
        },
    }
    if args.json:
        print(json.dumps(key, indent=2))
        return 0
    model, op = report["model"], report["operating_point"]
    scope = "test" if "external" not in report else "every sample the model did not see"
    print(
        f"model {model['name']} v{model['version']} on {report['dataset']['name']} "
        f"v{report['dataset']['version']} {scope}; operating point {op['threshold']:.3f} "
        f"chosen on {op['chosen_on']} (val sensitivity {op['val_sensitivity']:.2f}, target "
        f"{op['target_sensitivity']:.2f})"
    )
    for name, entry in key["test"].items():
        low, high = entry["ci95"] or (float("nan"), float("nan"))
        print(f"  {name:<12} {entry['value']:.3f}  (95 % CI {low:.3f}-{high:.3f})")
    print(f"report: {key['report']['html']}")
    return 0


def _url(settings: Settings, rel: str) -> str:
    from lungcls.storage import Storage

    return Storage.from_settings(settings).url(rel)


def _print_decision(decision) -> None:
    print(
        f"{decision.action} {decision.model}: {decision.outcome}; champion "
        f"v{decision.champion_before} -> v{decision.champion_after} (decision {decision.id})"
    )
    for gate in decision.gates:
        print(f"  [{'pass' if gate.passed else 'FAIL'}] {gate.name}: {gate.detail}")


def cmd_promote(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from lungcls.promote import promote

    decision = promote(_settings(args), args.version, args.name)
    if args.json:
        print(json.dumps(asdict(decision), indent=2, default=str))
    else:
        _print_decision(decision)
    return 0 if decision.outcome == "promoted" else 4


def cmd_rollback(args: argparse.Namespace) -> int:
    from lungcls.promote import rollback

    decision = rollback(_settings(args), args.name)
    _print_decision(decision)
    return 0 if decision.outcome == "rolled_back" else 4


def cmd_predict(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from lungcls.predict import predict_batch, predict_source

    settings = _settings(args)
    if args.batch:
        predictions, where = predict_batch(settings, args.batch, args.model_version, args.out)
        print(f"{len(predictions)} series scored; results in {where}/predictions.parquet and .csv")
        return 0
    if not args.source:
        print("lungcls predict: give a file, folder or archive, or --batch NAME", file=sys.stderr)
        return 2
    centre = tuple(float(v) for v in args.center.split(",")) if args.center else None
    predictions = predict_source(
        settings, args.source, centre, args.model_version, saliency_dir=args.saliency
    )
    if args.json:
        print(json.dumps([asdict(p) for p in predictions], indent=2))
        return 0
    for p in predictions:
        print(
            f"{p.series_id}: p(malignant) {p.probability:.4f} -> {p.decision} at "
            f"{p.threshold:.3f} [{p.threshold_source}], centre from {p.centre}, "
            f"model {p.model} v{p.model_version}"
        )
    return 0


def _run_retrain(args: argparse.Namespace, settings: Settings, force: bool = False) -> int:
    """The `retrain` flow in this process (Prefect's ephemeral API unless PREFECT_API_URL
    points at a server), on the same settings the other commands read."""
    prefect_defaults(settings)
    if args.executor:  # the flow reads its settings again: hand the override over
        os.environ["LUNGCLS_RAY__EXECUTOR"] = args.executor
    from flows.parameters import RetrainParameters
    from flows.retrain import retrain
    from lungcls.demo import print_outcome

    parameters = RetrainParameters(
        config_file=args.config, root=settings.root, batch=args.batch, force=force
    )
    summary = retrain(parameters)
    print_outcome(summary)
    return 0 if summary["outcome"] == "promoted" else 4


def cmd_run(args: argparse.Namespace) -> int:
    return _run_retrain(args, _settings(args), force=args.force)


def cmd_demo(args: argparse.Namespace) -> int:
    from lungcls.demo import DEMO_PSEUDONYM_KEY, ensure_demo_batch

    if load_settings(args.config).pseudonym_key is None:
        # Set for the flow too, which reads its settings again.
        os.environ["LUNGCLS_PSEUDONYM_KEY"] = DEMO_PSEUDONYM_KEY
        print("demo: pseudonyms use the public demo key (synthetic data only)")
    settings = _settings(args)
    ensure_demo_batch(settings)
    args.batch = None
    return _run_retrain(args, settings)


def prefect_defaults(settings: Settings) -> None:
    """Keep Prefect's state in the project's work folder, and offline, unless set already."""
    os.environ.setdefault("PREFECT_HOME", str(Path(settings.work_dir) / "prefect"))
    Path(os.environ["PREFECT_HOME"]).mkdir(parents=True, exist_ok=True)  # its SQLite lives here
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # The ephemeral API starts in 7-12 s here; give busy machines more than the default 20 s.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lungcls",
        description="Lung CT scans in, a trained, evaluated, gated cancer classifier out.",
        epilog="Settings: --config FILE, LUNGCLS_* variables (see `lungcls config`).",
    )
    parser.add_argument(
        "--config", help="YAML settings file (default: $LUNGCLS_CONFIG, ./lungcls.yaml)"
    )
    parser.add_argument("--root", help="storage root URL, overrides the settings (LUNGCLS_ROOT)")
    parser.add_argument(
        "--executor",
        choices=["ray", "local"],
        help="run parallel work as Ray tasks (default) or in this process",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, handler: Callable[[argparse.Namespace], int], help_: str):
        sub = commands.add_parser(name, help=help_, description=help_)
        sub.set_defaults(handler=handler)
        return sub

    add("config", cmd_config, "print the resolved settings, secrets masked")

    synth = add("synth", cmd_synth, "write a synthetic batch of DICOM CT archives into the inbox")
    synth.add_argument("--batch", default="synthetic-001", help="batch folder name under inbox/")
    synth.add_argument("--scans", type=int, default=40, help="number of series (default 40)")
    synth.add_argument("--positive-fraction", type=float, default=0.5, help="share of positives")
    synth.add_argument("--slices", type=int, default=48, help="slices per series (volume mode)")
    synth.add_argument("--rows", type=int, default=128)
    synth.add_argument("--columns", type=int, default=128)
    synth.add_argument("--pixel-spacing", type=float, default=2.8, help="in-plane spacing, mm")
    synth.add_argument("--slice-spacing", type=float, default=2.5, help="slice step, mm")
    synth.add_argument("--noise", type=float, default=20.0, help="noise standard deviation, HU")
    synth.add_argument(
        "--mode",
        choices=["volume", "slice"],
        default="volume",
        help="3D series, or one slice through the nodule per series (2D)",
    )
    synth.add_argument(
        "--unlabelled-fraction",
        type=float,
        default=0.0,
        help="share of series left out of labels.csv",
    )
    synth.add_argument("--seed", type=int, default=0, help="same seed, byte-identical archives")

    images = add(
        "import-images",
        cmd_import_images,
        "turn class folders of JPEG/PNG CT slices into an inbox batch of DICOM archives",
    )
    images.add_argument("source", help="folder (or URL) holding one sub-folder per class")
    images.add_argument("--batch", required=True, help="batch folder name under inbox/")
    images.add_argument(
        "--positive", required=True, help="class folder(s) that are label 1, comma-separated"
    )
    images.add_argument("--out", help="storage root to write to (default: the settings' root)")
    images.add_argument(
        "--group-size",
        type=int,
        default=10,
        help="consecutive case numbers taken as one pseudonymous patient (default 10)",
    )
    images.add_argument(
        "--window",
        default="-600,1500",
        help="'centre,width' in HU that grey 0..255 is mapped onto (default -600,1500)",
    )
    images.add_argument(
        "--fov-mm", type=float, default=360.0, help="field of view of an image's longer side"
    )
    images.add_argument(
        "--slice-thickness-mm", type=float, default=1.0, help="nominal slice thickness"
    )
    images.add_argument(
        "--test-range",
        help="'A:B': groups from share A to B of each class (case-number order) go to test, "
        "e.g. 0.8:1; default: no assigned split (keyed hash)",
    )
    images.add_argument(
        "--val-fraction",
        type=float,
        default=0.0,
        help="share of groups assigned to val, in --val-blocks blocks spread over the rest",
    )
    images.add_argument(
        "--val-blocks", type=int, default=2, help="contiguous val blocks per class (default 2)"
    )
    images.add_argument(
        "--gap-groups",
        type=int,
        default=1,
        help="groups left unlabelled beside each held-out block (default 1)",
    )
    images.add_argument("--json", action="store_true", help="print a machine-readable summary")

    ingest = add("ingest", cmd_ingest, "ingest new DICOM archives from the inbox")
    ingest.add_argument("--batch", help="only this batch folder (default: every batch)")
    ingest.add_argument("--json", action="store_true", help="print a machine-readable summary")

    dataset = commands.add_parser(
        "dataset", help="build, list and show versioned datasets", description="Dataset versions."
    )
    dataset_commands = dataset.add_subparsers(
        dest="dataset_command", required=True, metavar="ACTION"
    )
    build = dataset_commands.add_parser(
        "build", help="validate, preprocess and shard new series into the next version"
    )
    build.set_defaults(handler=cmd_dataset_build)
    build.add_argument("--name", help="dataset name (default: dataset.name in the settings)")
    build.add_argument(
        "--batch",
        action="append",
        help="only series of this inbox batch (repeatable; default: dataset.batches, or all)",
    )
    build.add_argument("--json", action="store_true", help="print a machine-readable summary")
    listing = dataset_commands.add_parser("list", help="list versions with counts and contracts")
    listing.set_defaults(handler=cmd_dataset_list)
    listing.add_argument("--name", help="dataset name (default: dataset.name in the settings)")
    show = dataset_commands.add_parser("show", help="show one version's manifest")
    show.set_defaults(handler=cmd_dataset_show)
    show.add_argument("--name", help="dataset name (default: dataset.name in the settings)")
    show.add_argument("--version", type=int, help="version number (default: the latest)")
    show.add_argument("--json", action="store_true", help="print the manifest as JSON")

    train = add("train", cmd_train, "train a CNN on a dataset version with Ray Train")
    train.add_argument("--dataset", help="dataset name (default: dataset.name)")
    train.add_argument("--version", type=int, help="dataset version (default: the latest)")
    train.add_argument("--workers", type=int, help="Ray Train workers (default: train.num_workers)")
    train.add_argument("--epochs", type=int, help="epochs (default: train.epochs)")
    train.add_argument(
        "--resume", action="store_true", help="resume the latest unfinished run from its checkpoint"
    )
    train.add_argument("--json", action="store_true", help="print a machine-readable summary")

    tune = add("tune", cmd_tune, "search hyperparameters with Ray Tune (ASHA); publish the best")
    tune.add_argument("--dataset", help="dataset name (default: dataset.name)")
    tune.add_argument("--version", type=int, help="dataset version (default: the latest)")
    tune.add_argument("--trials", type=int, help="number of trials (default: tune.trials)")
    tune.add_argument("--max-epochs", type=int, help="epochs of the longest trial")
    tune.add_argument("--json", action="store_true", help="print a machine-readable summary")

    evaluate = add("evaluate", cmd_evaluate, "evaluate a model version on a test split with CIs")
    evaluate.add_argument("--name", help="model name (default: model.name)")
    evaluate.add_argument(
        "--model", help="version number, 'champion' or 'challenger' (default: the latest)"
    )
    evaluate.add_argument("--dataset", help="dataset (default: the one the model trained on)")
    evaluate.add_argument("--dataset-version", type=int, help="dataset version (default: same)")
    evaluate.add_argument("--force", action="store_true", help="recompute an existing report")
    evaluate.add_argument("--json", action="store_true", help="print the key metrics as JSON")

    promote = add("promote", cmd_promote, "gate a candidate; make it champion if it passes")
    promote.add_argument("--version", type=int, help="candidate version (default: the latest)")
    promote.add_argument("--name", help="model name (default: model.name)")
    promote.add_argument("--json", action="store_true", help="print the decision as JSON")
    rollback = add("rollback", cmd_rollback, "move the champion back to the version before")
    rollback.add_argument("--name", help="model name (default: model.name)")

    predict = add("predict", cmd_predict, "score DICOM series with the champion")
    predict.add_argument("source", nargs="?", help="DICOM file, series folder or archive (or URL)")
    predict.add_argument("--batch", help="score every archive of inbox/BATCH instead")
    predict.add_argument("--center", help="nodule centre 'x,y,z' in patient mm")
    predict.add_argument("--model-version", help="version or alias (default: champion)")
    predict.add_argument("--saliency", help="folder for Grad-CAM overlays (PNG per series)")
    predict.add_argument("--out", help="batch output folder under the root")
    predict.add_argument("--json", action="store_true", help="print predictions as JSON")

    run = add(
        "run",
        cmd_run,
        "run the `retrain` Prefect flow: ingest, build, train, evaluate, gate, promote "
        "(only what new data calls for)",
    )
    run.add_argument("--batch", help="only this inbox batch (default: every new archive)")
    run.add_argument(
        "--force", action="store_true", help="train and gate even when nothing new arrived"
    )

    add("demo", cmd_demo, "the `retrain` flow end to end on a synthetic batch (made if missing)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # Third-party INFO chatter (credential lookups, Ray banners) stays out of the output.
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    log.setLevel(logging.DEBUG if args.verbose else logging.INFO)
    try:
        return args.handler(args)
    except (ConfigError, ValidationError) as error:
        print(f"lungcls: configuration error: {error}", file=sys.stderr)
        return 2
    except LungclsError as error:
        print(f"lungcls: {error}", file=sys.stderr)
        return 3
    except (StorageError, OSError, BotoCoreError, ClientError) as error:
        print(f"lungcls: storage error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
