"""The `lungcls` command line: one subcommand per stage, all reading the same settings.

    lungcls config                      print the resolved settings (secrets masked)
    lungcls synth --batch demo-001      write a synthetic batch of CT archives into the inbox
    lungcls import-images SRC --batch B --positive CLASS   image folders -> a DICOM batch
    lungcls import-volumes SRC --batch B  NIfTI/MetaImage/NRRD volumes -> a DICOM batch
    lungcls ingest [--batch B] [--json] ingest new archives into the series store
    lungcls dataset build|list|show     versioned, validated, patient-split datasets
    lungcls train [--resume]            train a CNN with Ray Train; publish a candidate model
    lungcls tune [--trials N]           hyperparameter search (Ray Tune, ASHA); publish the best
    lungcls evaluate [--model V]        metrics with CIs, operating point, plots, report
    lungcls promote | rollback          the gated champion alias, with a logged decision
    lungcls predict PATH | --batch B    score new series with the champion
    lungcls drift --batch B             how a batch differs from the champion's training data
    lungcls monitor [--batch B]         the champion on each new batch (external tests)
    lungcls run [--batch B] [--force]   the `retrain` Prefect flow: every stage, only what is new
    lungcls demo                        `retrain` end to end on a synthetic batch
    lungcls gc [--apply]                list (dry run) or delete the files no committed record names
    lungcls erase --patient P | --archive PATH | --report   erase data, refuse it from now on
    lungcls pseudonym PATIENT_ID        a patient's pseudonym (the key holder; prints only it)

Global options go before the subcommand: `lungcls --root s3://bucket/lungcls ingest`.
Exit status: 0 when the command ran (quarantined input included), 2 for bad usage or
configuration, 1 when storage or another service could not be used, 3 when the data as a
whole breaks a contract (the build stops; nothing is published), 4 when a candidate was
rejected by the promotion gate.
"""

from __future__ import annotations

import argparse
import atexit
import logging
import os
import sys
from typing import NoReturn

from botocore.exceptions import BotoCoreError, ClientError
from pydantic import ValidationError

from lungcls.cli import data, erase, gc, model, monitor, pipeline
from lungcls.config import ConfigError
from lungcls.errors import LungclsError
from lungcls.io.storage import StorageError

log = logging.getLogger("lungcls")


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
    # In the order the data flows; each module adds its own commands and their options.
    registers = (
        pipeline.register_config,
        data.register,
        model.register,
        monitor.register,
        pipeline.register,
    )
    for register in (*registers, gc.register, erase.register):
        register(commands)
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


def run() -> NoReturn:
    """The `lungcls` command: `main`, then an exit that native thread pools cannot abort.

    pyarrow's C++ thread pools can still hold a joinable worker while the interpreter tears
    itself down; std::terminate then aborts a run that finished its work (exit -6,
    "terminate called without an active exception", apache/arrow#34314). So the exit
    handlers (Prefect's temporary server, Ray) run here, the output is flushed, and the
    process leaves before the native destructors run.
    """
    code = main()
    atexit._run_exitfuncs()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
