"""`lungcls gc [--apply] [--grace-hours H] [--json]`: list, then delete, the files no committed
record names (see lungcls.retention.gc)."""

from __future__ import annotations

import argparse

from lungcls.cli.common import Commands, add_command, settings_from, show
from lungcls.config import ConfigError


def cmd_gc(args: argparse.Namespace) -> int:
    from lungcls.io.storage import Storage
    from lungcls.retention.gc import apply_gc, plan_gc

    settings = settings_from(args)
    if args.grace_hours is not None:
        if args.grace_hours < 0:
            raise ConfigError(f"--grace-hours {args.grace_hours:g}: must be 0 or more")
        settings.storage.gc_grace_hours = args.grace_hours
    storage = Storage.from_settings(settings)
    plan = plan_gc(storage, settings)
    if not args.apply:
        return show(plan, args.json, plan.summary_lines())
    result = apply_gc(storage, plan)
    return show(result, args.json, result.summary_lines())


def register(commands: Commands) -> None:
    gc = add_command(
        commands,
        "gc",
        cmd_gc,
        "list (dry run) or delete with --apply the files no committed record names: "
        "leftovers of killed runs, superseded series, old checkpoints, expired cache entries",
    )
    gc.add_argument("--apply", action="store_true", help="delete them (default: only list)")
    gc.add_argument(
        "--grace-hours",
        type=float,
        help="keep files written less than this long ago (default: storage.gc_grace_hours, 24)",
    )
    gc.add_argument("--json", action="store_true", help="print the plan or result as JSON")
