"""`lungcls config | run | demo`: the settings, and the `retrain` Prefect flow in this process."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING

from lungcls.cli.common import Commands, add_command, settings_from
from lungcls.config import Settings, load_settings

if TYPE_CHECKING:
    from lungcls.pipeline import RetrainSummary


def cmd_config(args: argparse.Namespace) -> int:
    print(settings_from(args).to_yaml(), end="")
    return 0


def _run_retrain(
    args: argparse.Namespace, settings: Settings, force: bool = False
) -> RetrainSummary:
    """The `retrain` flow in this process (Prefect's ephemeral API unless PREFECT_API_URL
    points at a server), on the same settings the other commands read."""
    prefect_defaults(settings)
    if args.executor:  # the flow reads its settings again: hand the override over
        os.environ["LUNGCLS_RAY__EXECUTOR"] = args.executor
    from flows.retrain import retrain
    from lungcls.flow_parameters import RetrainParameters

    parameters = RetrainParameters(
        config_file=args.config, root=settings.root, batch=args.batch, force=force
    )
    summary = retrain(parameters)
    print("\n".join(summary.outcome_lines()))
    return summary


def cmd_run(args: argparse.Namespace) -> int:
    """Exit 4 when the candidate was not promoted: a scheduler's run is then not a success."""
    summary = _run_retrain(args, settings_from(args), force=args.force)
    return 0 if summary.outcome == "promoted" else 4


def cmd_demo(args: argparse.Namespace) -> int:
    from lungcls.ingest.deid import check_demo_root
    from lungcls.io.storage import Storage
    from lungcls.sources.demo import DEMO_PSEUDONYM_KEY, ensure_demo_batch

    demo_key = load_settings(args.config).pseudonym_key is None
    if demo_key:
        # Set for the flow too, which reads its settings again.
        os.environ["LUNGCLS_PSEUDONYM_KEY"] = DEMO_PSEUDONYM_KEY
        print("demo: pseudonyms use the public demo key (synthetic data only)")
    settings = settings_from(args)
    if demo_key:  # refused before the batch is written, not after (every stage checks too)
        check_demo_root(settings, Storage.from_settings(settings))
    ensure_demo_batch(settings)
    args.batch = None
    summary = _run_retrain(args, settings)
    if summary.outcome != "promoted":
        # The demo shows the pipeline working, and a gate refusing a model is part of it.
        print(
            f"demo: every stage ran; the promotion gate {summary.outcome} candidate "
            f"v{summary.candidate} — the report says which gate and why"
        )
    return 0


def prefect_defaults(settings: Settings) -> None:
    """Keep Prefect's state in the project's work folder, and offline, unless set already."""
    os.environ.setdefault("PREFECT_HOME", str(Path(settings.work_dir) / "prefect"))
    Path(os.environ["PREFECT_HOME"]).mkdir(parents=True, exist_ok=True)  # its SQLite lives here
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # The ephemeral API starts in 7-12 s here; give busy machines more than the default 20 s.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")


def register_config(commands: Commands) -> None:
    add_command(commands, "config", cmd_config, "print the resolved settings, secrets masked")


def register(commands: Commands) -> None:
    run = add_command(
        commands,
        "run",
        cmd_run,
        "run the `retrain` Prefect flow: ingest, build, train, evaluate, gate, promote "
        "(only what new data calls for)",
    )
    run.add_argument("--batch", help="only this inbox batch (default: every new archive)")
    run.add_argument(
        "--force", action="store_true", help="train and gate even when nothing new arrived"
    )

    add_command(
        commands,
        "demo",
        cmd_demo,
        "the `retrain` flow end to end on a synthetic batch (made if missing)",
    )
