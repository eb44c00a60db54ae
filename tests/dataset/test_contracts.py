"""Contracts: suites load from data_contracts/, failures are sorted into rows and batch."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from lungcls.dataset.contracts import CONTRACTS_DIR, ContractError, load_contract, validate
from lungcls.dataset.validation import TensorParameters
from lungcls.io.storage import Storage


def _frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "sample_id": ["a", "b", "c", "d"],
            "split": ["train", "train", "val", "val"],
            "label": [0, 1, 0, 1],
            "shape": ["1x4x4x4"] * 3 + ["1x2x2x2"],
            "split_label": ["train:0", "train:1", "val:0", "val:1"],
            "all_finite": [True, True, True, False],
            "t_min": [0.0, 0.0, 0.0, 0.0],
            "t_max": [1.0, 0.9, 0.8, 1.0],
            "t_mean": [0.4, 0.5, 0.3, 0.5],
            "t_std": [0.1, 0.2, 0.1, 0.1],
        }
    )


PARAMS = TensorParameters(expected_shapes=["1x4x4x4"], required_split_labels=["train:0", "val:1"])


def test_every_suite_file_loads_with_a_version() -> None:
    for folder in CONTRACTS_DIR.iterdir():
        if folder.is_dir():
            contract = load_contract(folder.name)
            assert contract.version.startswith("v") and len(contract.sha256) == 64
            assert contract.suite["expectations"]


def test_row_failures_name_expectation_and_value(tmp_path: Path) -> None:
    storage = Storage(str(tmp_path))
    result = validate(_frame(), load_contract("tensor"), PARAMS, storage, "run-1")
    assert not result.success and result.evaluated == 8
    assert set(result.row_failures) == {"d"}
    observed = {(f.expectation, f.column, f.observed) for f in result.row_failures["d"]}
    assert observed == {
        ("expect_column_values_to_be_in_set", "shape", "1x2x2x2"),
        ("expect_column_values_to_be_in_set", "all_finite", "False"),
    }
    saved = json.loads(storage.read_bytes(result.result_path))
    assert saved["statistics"]["evaluated_expectations"] == 8
    assert storage.exists("runs/run-1/validation/data_docs/tensor/index.html")


def test_batch_failure_and_too_many_rejections_stop_the_build() -> None:
    missing = PARAMS.model_copy(update={"required_split_labels": ["test:1"]})
    with pytest.raises(ContractError, match="test:1"):
        validate(_frame(), load_contract("tensor"), missing)
    with pytest.raises(ContractError, match="rejected 1 of 4 rows"):
        validate(_frame(), load_contract("tensor"), PARAMS, max_rejected_share=0.2)


def _copy_with(tmp_path: Path, expectations: list) -> Path:
    folder = tmp_path / "contracts" / "tensor"
    folder.mkdir(parents=True)
    suite = json.loads((CONTRACTS_DIR / "tensor" / "v1.json").read_text())
    suite["expectations"] = expectations
    (folder / "v1.json").write_text(json.dumps(suite))
    return folder.parent


def test_a_suite_that_checks_nothing_fails_loudly(tmp_path: Path) -> None:
    contract = load_contract("tensor", directory=_copy_with(tmp_path, []))
    with pytest.raises(ContractError, match="zero expectations"):
        validate(_frame(), contract, PARAMS)


def test_an_unknown_expectation_fails_loudly(tmp_path: Path) -> None:
    spec = [{"type": "expect_column_values_to_be_radiologist_approved", "kwargs": {"column": "x"}}]
    contract = load_contract("tensor", directory=_copy_with(tmp_path, spec))
    with pytest.raises(ContractError, match="radiologist_approved"):
        validate(_frame(), contract, PARAMS)


def test_unknown_version_is_named(tmp_path: Path) -> None:
    directory = tmp_path / "c"
    shutil.copytree(CONTRACTS_DIR, directory)
    with pytest.raises(ContractError, match="no version 'v9'"):
        load_contract("tensor", "v9", directory)
