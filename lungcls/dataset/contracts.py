"""Data contracts: versioned Great Expectations suites from `data_contracts/`, run for real.

A suite file is GX 1.x suite JSON with `meta.version` and `meta.row_key`. `validate`
runs it in an ephemeral GX context on a pandas frame and sorts the outcome:

- row-level failures (column map expectations) become `RowFailure`s keyed by the row key,
  with the expectation's name and the observed value, for the caller to quarantine;
- batch-level failures, zero evaluated expectations, an unknown expectation type, or too
  large a share of rejected rows raise `ContractError`: the build must stop, loudly.

GX does not raise when data fails; `success` and the evaluated count are checked here.
Results are saved as JSON under `runs/<run>/validation/`, and Data Docs HTML beside them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import pandas as pd
from pydantic import BaseModel

from lungcls.errors import LungclsError
from lungcls.io.storage import Storage

# Package data (pyproject.toml): in a checkout `lungcls/data_contracts` links to the top-level
# `data_contracts/`, in an installed wheel it holds a copy; one lookup finds both.
CONTRACTS_DIR = Path(str(resources.files("lungcls") / "data_contracts"))


class ContractError(LungclsError):
    """A contract cannot be applied, or the data as a whole breaks it: the build stops."""


@dataclass(frozen=True)
class Contract:
    name: str
    version: str
    sha256: str
    row_key: str
    suite: dict[str, Any]


@dataclass(frozen=True)
class RowFailure:
    expectation: str
    column: str
    observed: str


@dataclass
class ContractResult:
    contract: Contract
    success: bool
    evaluated: int
    rows: int
    row_failures: dict[str, list[RowFailure]] = field(default_factory=dict)
    result_path: str = ""


def load_contract(name: str, version: str = "latest", directory: Path = CONTRACTS_DIR) -> Contract:
    """Read `data_contracts/<name>/<version>.json` (`latest`: the highest vN)."""
    folder = directory / name
    versions = sorted(folder.glob("v*.json"), key=lambda p: int(p.stem[1:]))
    if not versions:
        raise ContractError(f"no contract files in {folder}")
    path = versions[-1] if version == "latest" else folder / f"{version}.json"
    if not path.is_file():
        known = ", ".join(p.stem for p in versions)
        raise ContractError(f"contract {name} has no version {version!r} (known: {known})")
    raw = path.read_bytes()
    suite = json.loads(raw)
    meta = suite.get("meta", {})
    if meta.get("version") != path.stem or "row_key" not in meta:
        raise ContractError(f"{path}: meta.version must be {path.stem!r} and meta.row_key set")
    return Contract(name, path.stem, hashlib.sha256(raw).hexdigest(), meta["row_key"], suite)


# What a failed batch-level expectation reports, in the words of its result.
_BATCH_DETAIL_KEYS = ("observed_value", "partial_missing_list", "details")


def _gx():
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")  # no network, no telemetry
    import great_expectations as gx

    # GX pins some of its loggers at INFO; its chatter is not the user's business.
    for name in ("great_expectations", "great_expectations.data_context.types.base"):
        logging.getLogger(name).setLevel(logging.WARNING)
    return gx


def validate(
    frame: pd.DataFrame,
    contract: Contract,
    parameters: BaseModel,
    storage: Storage | None = None,
    run_id: str | None = None,
    max_rejected_share: float = 1.0,
    scratch_dir: str | None = None,
) -> ContractResult:
    """Validate `frame` against `contract`; save results and Data Docs when `storage` is given.

    `parameters` fills the suite's `$PARAMETER` references (one typed model per contract).
    `scratch_dir` holds the Data Docs while they are built (default: the system temp folder).
    """
    context, definition = _validation_definition(contract)
    result = definition.run(
        batch_parameters={"dataframe": frame},
        expectation_parameters=parameters.model_dump(mode="json"),
        result_format={
            "result_format": "COMPLETE",
            "unexpected_index_column_names": [contract.row_key],
        },
    )
    outcome = ContractResult(
        contract=contract,
        success=bool(result.success),
        evaluated=int(result.statistics["evaluated_expectations"]),
        rows=len(frame),
    )
    batch_failures = _sort_failures(result, outcome)
    if storage is not None and run_id is not None:
        outcome.result_path = _save(storage, run_id, contract, result, context, scratch_dir)
    _stop_if_broken(outcome, batch_failures, max_rejected_share)
    return outcome


def _validation_definition(contract: Contract) -> tuple[Any, Any]:
    """An ephemeral GX context holding the contract's suite, ready to run on a dataframe."""
    gx = _gx()
    from great_expectations.data_context.types.base import ProgressBarsConfig
    from great_expectations.expectations.expectation_configuration import (
        ExpectationConfiguration,
    )

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    suite = gx.ExpectationSuite(name=contract.name, meta=contract.suite.get("meta", {}))
    for spec in contract.suite.get("expectations", []):
        try:
            configuration = ExpectationConfiguration(
                type=spec["type"], kwargs=spec["kwargs"], meta=spec.get("meta")
            )
            suite.add_expectation_configuration(configuration)
        except Exception as error:
            raise ContractError(
                f"contract {contract.name} {contract.version}: cannot use expectation "
                f"{spec.get('type')!r}: {error}"
            ) from error
    suite = context.suites.add(suite)
    asset = context.data_sources.add_pandas("lungcls").add_dataframe_asset(contract.name)
    batch = asset.add_batch_definition_whole_dataframe("all")
    definition = context.validation_definitions.add(
        gx.ValidationDefinition(name=f"{contract.name}-{contract.version}", data=batch, suite=suite)
    )
    return context, definition


def _sort_failures(result: Any, outcome: ContractResult) -> list[str]:
    """Record row-level failures in `outcome`; return the batch-level ones, described."""
    row_key = outcome.contract.row_key
    batch_failures: list[str] = []
    for item in result.results:
        if item.success:
            continue
        config = item.expectation_config
        column = str(config.kwargs.get("column", ""))
        indexed = item.result.get("unexpected_index_list")
        if item.exception_info and item.exception_info.get("raised_exception"):
            batch_failures.append(f"{config.type}: {item.exception_info.get('exception_message')}")
        elif indexed is not None and outcome.rows:
            for entry in indexed:
                key = str(entry[row_key])
                observed = str(entry.get(column, entry.get(config.kwargs.get("column_A"), "")))
                failure = RowFailure(config.type, column, observed)
                outcome.row_failures.setdefault(key, []).append(failure)
        else:
            found = {k: item.result[k] for k in _BATCH_DETAIL_KEYS if item.result.get(k)}
            batch_failures.append(f"{config.type}({column}) {found}")
    return batch_failures


def _stop_if_broken(
    outcome: ContractResult, batch_failures: list[str], max_rejected_share: float
) -> None:
    """Raise when the data as a whole breaks the contract, or the contract checks nothing."""
    where = f" (results: {outcome.result_path})" if outcome.result_path else ""
    label = f"contract {outcome.contract.name} {outcome.contract.version}"
    if outcome.evaluated == 0:
        raise ContractError(f"{label} evaluated zero expectations: it checks nothing{where}")
    if batch_failures:
        raise ContractError(
            f"{label} failed for the data as a whole: {'; '.join(batch_failures)}{where}"
        )
    rejected = len(outcome.row_failures)
    if outcome.rows and rejected / outcome.rows > max_rejected_share:
        raise ContractError(
            f"{label} rejected {rejected} of {outcome.rows} rows, more than "
            f"contracts.max_rejected_share={max_rejected_share:.0%}{where}"
        )


def _save(
    storage: Storage,
    run_id: str,
    contract: Contract,
    result: Any,
    context: Any,
    scratch_dir: str | None,
) -> str:
    """Write the result JSON and the Data Docs site under `runs/<run>/validation/`."""
    base = f"runs/{run_id}/validation"
    rel = f"{base}/{contract.name}-{contract.version}.json"
    storage.write_atomic(rel, json.dumps(result.to_json_dict(), indent=2, default=str).encode())
    if scratch_dir:
        scratch_dir = str(Path(scratch_dir).resolve())  # GX wants absolute paths
        Path(scratch_dir).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="gx-docs-", dir=scratch_dir) as docs:
        site = {
            "class_name": "SiteBuilder",
            "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": docs},
        }
        context.add_data_docs_site("lungcls", site)
        context.build_data_docs(site_names=["lungcls"])
        for path in Path(docs).rglob("*"):
            if path.is_file():
                target = f"{base}/data_docs/{contract.name}/{path.relative_to(docs).as_posix()}"
                storage.write_atomic(target, path.read_bytes())
    return rel
