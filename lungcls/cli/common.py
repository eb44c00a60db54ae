"""What every command shares: the settings it runs on, and how it registers itself."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from lungcls.config import Settings, load_settings
from lungcls.io.records import Part

Commands = Any  # argparse's private _SubParsersAction: what `add_subparsers` returns
Handler = Callable[[argparse.Namespace], int]


def settings_from(args: argparse.Namespace) -> Settings:
    """The settings of one command: --config/--root/--executor over the usual sources."""
    overrides: dict[str, object] = {}
    if args.root:
        overrides["root"] = args.root
    settings = load_settings(args.config, **overrides)
    if args.executor:  # set after loading: the rest of the ray section stays as configured
        settings.ray.executor = args.executor
    return settings


def add_command(commands: Commands, name: str, handler: Handler, help_: str) -> Any:
    """A subcommand whose `--help` repeats its one-line purpose."""
    sub = commands.add_parser(name, help=help_, description=help_)
    sub.set_defaults(handler=handler)
    return sub


def show(record: Part, as_json: bool, lines: list[str]) -> int:
    """Print a command's result: the whole record as JSON, or its lines for people."""
    print(record.to_json().decode() if as_json else "\n".join(lines))
    return 0
