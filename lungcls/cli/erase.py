"""`lungcls erase | pseudonym`: a patient's or an archive's data removed on request, and how
the key holder finds a patient's pseudonym (see lungcls.retention.erasure)."""

from __future__ import annotations

import argparse

from lungcls.cli.common import Commands, add_command, settings_from, show
from lungcls.config import ConfigError


def cmd_erase(args: argparse.Namespace) -> int:
    from lungcls.io.storage import Storage
    from lungcls.retention.erasure import erase_archive, erase_patient
    from lungcls.retention.erasure_log import erasure_log

    settings = settings_from(args)
    if args.report:
        report = erasure_log(Storage.from_settings(settings))
        return show(report, args.json, report.lines())
    if args.patient:
        outcome = erase_patient(settings, args.patient, args.by, args.reason)
    else:
        outcome = erase_archive(settings, args.archive, args.by, args.reason)
    return show(outcome, args.json, [f"erasure #{outcome.seq} done", *outcome.lines()])


def cmd_pseudonym(args: argparse.Namespace) -> int:
    from lungcls.ingest.deid import KEY_FINGERPRINT_PATH, pseudonym, pseudonym_key
    from lungcls.io.storage import Storage

    settings = settings_from(args)
    storage = Storage.from_settings(settings)
    # Never the side effects of a first use (a generated key, a recorded fingerprint): a
    # pseudonym under a key this root never used names nobody here.
    if not storage.exists(KEY_FINGERPRINT_PATH):
        raise ConfigError(
            f"{storage.root_url} has no pseudonym key recorded yet (nothing was ingested): "
            "no patient has a pseudonym here"
        )
    print(pseudonym(pseudonym_key(settings, storage), "patient", args.patient_id))
    return 0


def register(commands: Commands) -> None:
    erase = add_command(
        commands,
        "erase",
        cmd_erase,
        "remove a patient's or an archive's data from the root, refuse it from now on, "
        "and publish dataset versions without it",
    )
    what = erase.add_mutually_exclusive_group(required=True)
    what.add_argument(
        "--patient",
        metavar="PSEUDONYM",
        help="the patient's pseudonym (patient-…; `lungcls pseudonym PATIENT_ID` finds it)",
    )
    what.add_argument("--archive", metavar="PATH", help="an inbox archive, path under the root")
    what.add_argument("--report", action="store_true", help="show every erasure and its outcome")
    erase.add_argument(
        "--by",
        metavar="NAME",
        help="who asks, recorded in the log (default: the OS user name; no patient names)",
    )
    erase.add_argument(
        "--reason",
        metavar="TEXT",
        default="",
        help="why, recorded in the log (no patient identifiers)",
    )
    erase.add_argument("--json", action="store_true", help="print a machine-readable record")

    found = add_command(
        commands,
        "pseudonym",
        cmd_pseudonym,
        "print a patient's pseudonym on this root (needs the pseudonym key; prints nothing else)",
    )
    found.add_argument("patient_id", metavar="PATIENT_ID", help="the patient ID as in DICOM")
