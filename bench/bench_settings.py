"""The settings of the real-data benchmarks: a config file, a root of their own, `--set`.

`real_iqothnccd.py` and `real_lidc.py` read `configs/<data>.yaml` (what a user passes with
`--config`), put it on a root and work folder of the benchmark's own with a fixed public
pseudonym key and Ray on 2 CPUs, and apply `--set section.key=JSON` overrides on top.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from lungcls.config import Settings, load_settings

Overrides = dict[str, dict[str, Any]]


def add_set_option(parser: argparse.ArgumentParser, example: str) -> None:
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=JSON",
        help=f"override a setting of the config, e.g. {example} (repeatable)",
    )


def parsed_overrides(items: list[str]) -> Overrides:
    """`["train.epochs=20", ...]` -> `{"train": {"epochs": 20}, ...}`."""
    overrides: Overrides = {}
    for item in items:
        name, value = item.split("=", 1)
        section, key = name.split(".", 1)
        overrides.setdefault(section, {})[key] = json.loads(value)
    return overrides


def bench_settings(root: Path, work: Path, config: str, key: str, overrides: Overrides) -> Settings:
    """`config` on `root` (state in `work`), with `overrides` on top of its sections."""
    base = load_settings(config)
    values: dict[str, Any] = {
        "root": str(root),
        "work_dir": str(work),
        "pseudonym_key": key,
        "ray": {**base.ray.model_dump(), "num_cpus": 2},
    }
    for section, entries in overrides.items():
        values[section] = {**getattr(base, section).model_dump(), **entries}
    return load_settings(config, **values)
