"""`lungcls synth | import-images | import-volumes | ingest | dataset`: data into the inbox,
the series store and dataset versions."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from lungcls.cli.common import Commands, add_command, settings_from, show
from lungcls.config import ConfigError

if TYPE_CHECKING:
    from lungcls.sources.synth import AcquisitionShift


def cmd_synth(args: argparse.Namespace) -> int:
    from lungcls.io.storage import Storage
    from lungcls.sources.synth import SynthOptions, synth_batch

    settings = settings_from(args)
    shift = _acquisition_shift(args)
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
        shift=shift,
    )
    storage = Storage.from_settings(settings)
    scans = synth_batch(storage, args.batch, options, settings.ingest.inbox)
    archives = sorted({s.archive for s in scans})
    positives = sum(s.label == 1 for s in scans)
    print(
        f"wrote {len(scans)} synthetic scans ({positives} positive) in {len(archives)} archives "
        f"to {storage.url(f'{settings.ingest.inbox}/{args.batch}')}"
    )
    if shift is not None:
        print(
            f"shifted acquisition: {shift.scanner.manufacturer} {shift.scanner.model}, kernel "
            f"{shift.scanner.kernel}, {shift.scanner.kvp:g} kVp, {shift.slice_thickness_mm:g} mm "
            f"slices, HU {shift.hu_offset:+g}, added noise {shift.extra_noise_hu:g} HU"
        )
    return 0


def _acquisition_shift(args: argparse.Namespace) -> AcquisitionShift | None:
    """`--shift`, with any `--shift-*` value given instead of its default (a `--shift-*`
    option alone implies `--shift`)."""
    from lungcls.sources.synth import AcquisitionShift

    given = {
        "slice_thickness_mm": args.shift_slice_thickness,
        "hu_offset": args.shift_hu_offset,
        "extra_noise_hu": args.shift_noise,
    }
    given = {name: value for name, value in given.items() if value is not None}
    return AcquisitionShift(**given) if args.shift or given else None


def _pair(text: str, separator: str, option: str) -> tuple[float, float]:
    try:
        first, second = (float(v) for v in text.split(separator))
    except ValueError:
        raise ConfigError(f"{option} {text!r}: expected two numbers as A{separator}B") from None
    return first, second


def cmd_import_images(args: argparse.Namespace) -> int:
    from lungcls.io.storage import Storage
    from lungcls.sources.images import ImportOptions, import_images

    settings = settings_from(args)
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
    report_url = storage.url(result.report)
    return show(result, args.json, result.summary_lines(report_url))


def cmd_import_volumes(args: argparse.Namespace) -> int:
    import sys

    from lungcls.ingest.deid import pseudonym_key
    from lungcls.io.storage import Storage
    from lungcls.sources.volumes import VolumeImportOptions, import_volumes

    settings = settings_from(args)
    options = VolumeImportOptions(
        test_fraction=args.test_fraction, val_fraction=args.val_fraction, split=args.split
    )
    storage = Storage(args.out or settings.root, settings.s3_endpoint_url)
    key = pseudonym_key(settings, storage)  # the key ingest will pseudonymise the batch with
    result = import_volumes(args.source, storage, args.batch, options, key, settings.ingest.inbox)
    show(result, args.json, result.summary_lines(storage.url(result.report)))
    if result.volumes:
        return 0
    print("lungcls: nothing imported: every row or file was refused", file=sys.stderr)
    return 3


def cmd_ingest(args: argparse.Namespace) -> int:
    from lungcls.ingest.run import ingest
    from lungcls.io.quarantine import read_quarantine
    from lungcls.io.storage import Storage

    settings = settings_from(args)
    progress = None if not args.json else False
    summary = ingest(settings, args.batch, progress, retry_rejected=args.retry_rejected)
    # The operator's view: each refused archive, file and labels row with where it is.
    storage = Storage.from_settings(settings)
    full = [item.line() for item in read_quarantine(storage, summary.run_id)]
    return show(summary, args.json, [*summary.headline(), *full])


def cmd_dataset_build(args: argparse.Namespace) -> int:
    from lungcls.dataset.build import build_dataset

    settings = settings_from(args)
    if args.batch:
        settings.dataset.batches = args.batch
    result = build_dataset(settings, name=args.name, progress=None if not args.json else False)
    return show(result, args.json, result.summary_lines())


def cmd_dataset_list(args: argparse.Namespace) -> int:
    from lungcls.dataset.manifest import list_versions, load_manifest
    from lungcls.io.storage import Storage

    settings = settings_from(args)
    storage = Storage.from_settings(settings)
    name = args.name or settings.dataset.name
    versions = list_versions(storage, name)
    if not versions:
        print(f"dataset {name}: no versions yet (lungcls dataset build)")
    for version in versions:
        print(load_manifest(storage, name, version).listing_line())
    return 0


def cmd_dataset_show(args: argparse.Namespace) -> int:
    from lungcls.dataset.manifest import load_manifest
    from lungcls.io.storage import Storage

    settings = settings_from(args)
    manifest = load_manifest(
        Storage.from_settings(settings), args.name or settings.dataset.name, args.version
    )
    return show(manifest, args.json, manifest.describe_lines())


def _register_synth(commands: Commands) -> None:
    synth = add_command(
        commands, "synth", cmd_synth, "write a synthetic batch of DICOM CT archives into the inbox"
    )
    synth.add_argument(
        "--batch", default="synthetic-001", help="batch folder name in the inbox (ingest.inbox)"
    )
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
    shift = synth.add_argument_group(
        "shifted acquisition",
        "write the batch as another site would acquire it (for drift monitoring): another "
        "manufacturer, model and kernel (Canon Aquilion Prime SP, FC52, 135 kVp), thicker "
        "slices, an HU offset and more noise; use another --seed for other patients",
    )
    shift.add_argument("--shift", action="store_true", help="a shifted acquisition")
    shift.add_argument(
        "--shift-slice-thickness", type=float, help="slice thickness and step, mm (default 5)"
    )
    shift.add_argument("--shift-hu-offset", type=float, help="added to every HU (default 60)")
    shift.add_argument(
        "--shift-noise", type=float, help="noise SD added to --noise in quadrature, HU (default 50)"
    )


def _register_import_images(commands: Commands) -> None:
    images = add_command(
        commands,
        "import-images",
        cmd_import_images,
        "turn class folders of JPEG/PNG CT slices into an inbox batch of DICOM archives",
    )
    images.add_argument("source", help="folder (or URL) holding one sub-folder per class")
    images.add_argument(
        "--batch", required=True, help="batch folder name in the inbox (ingest.inbox)"
    )
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
        help="'center,width' in HU that grey 0..255 is mapped onto (default -600,1500)",
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


def _register_import_volumes(commands: Commands) -> None:
    volumes = add_command(
        commands,
        "import-volumes",
        cmd_import_volumes,
        "turn CT volumes (NIfTI, MetaImage, NRRD) and their labels.csv into an inbox batch of "
        "DICOM CT series",
    )
    volumes.epilog = (
        "SRC/labels.csv: one row per volume with file, patient_id, label (0/1); optional "
        "mask (same grid), nodule_x_mm/nodule_y_mm/nodule_z_mm (SimpleITK's LPS mm: for NIfTI "
        "the RAS affine's x and y negated) or nodule_i/nodule_j/nodule_k (voxel index), "
        "diameter_mm, split (train/val/test, per patient); other columns are ignored. The "
        "nodule center defaults to the mask's centroid, else the volume's center. Refused "
        "rows and files are listed with a code; the others are imported, and the command "
        "fails (exit 3) only when nothing was."
    )
    volumes.add_argument("source", help="local folder holding labels.csv and the volumes")
    volumes.add_argument(
        "--batch", required=True, help="batch folder name in the inbox (ingest.inbox)"
    )
    volumes.add_argument("--out", help="storage root to write to (default: the settings' root)")
    volumes.add_argument(
        "--test-fraction",
        type=float,
        default=0.0,
        help="share of each label's patients assigned to test (patients whose rows give no "
        "split); default: no assigned split (keyed hash)",
    )
    volumes.add_argument(
        "--val-fraction", type=float, default=0.0, help="share of those patients assigned to val"
    )
    volumes.add_argument(
        "--split",
        choices=["train", "val", "test"],
        help="assign this split to every patient whose rows give none (test: an external "
        "set to evaluate a trained model on)",
    )
    volumes.add_argument("--json", action="store_true", help="print a machine-readable summary")


def register(commands: Commands) -> None:
    _register_synth(commands)
    _register_import_images(commands)
    _register_import_volumes(commands)

    ingest = add_command(commands, "ingest", cmd_ingest, "ingest new DICOM archives from the inbox")
    ingest.add_argument("--batch", help="only this batch folder (default: every batch)")
    ingest.add_argument(
        "--retry-rejected",
        action="store_true",
        help="read again the archives refused before, or with refused files or series (done "
        "by itself when the ingest settings changed since they were refused)",
    )
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
