"""The project as a wheel: installed without -e (as in a container), it still has its data
contracts and its command line.

The wheel is built from a copy of the sources and installed, without dependencies, into a
fresh virtual environment; the dependencies come from this environment's site-packages on
PYTHONPATH. A .pth file is not processed for PYTHONPATH entries, so this checkout's editable
install stays out, and everything runs from a folder outside the repository.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# What the wheel is built from (pyproject.toml's readme is README.md).
SOURCES = ["pyproject.toml", "README.md", "lungcls", "flows", "data_contracts"]

CHECK = """
import json, lungcls
from lungcls.dataset.contracts import CONTRACTS_DIR, load_contract
contracts = {name: load_contract(name) for name in ("series_metadata", "tensor")}
print(json.dumps({
    "package": lungcls.__file__,
    "contracts_dir": str(CONTRACTS_DIR),
    "contracts": {name: [c.version, c.sha256] for name, c in contracts.items()},
}))
"""


def _run(command: list[str], cwd: Path, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{command}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtual environment with the project's wheel installed; returns its folder."""
    base = tmp_path_factory.mktemp("packaging")
    source = base / "source"
    source.mkdir()
    for name in SOURCES:
        path = REPO / name
        if path.is_dir():
            # symlinks=True: the copy keeps lungcls/data_contracts a link, as in a checkout.
            ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
            shutil.copytree(path, source / name, symlinks=True, ignore=ignore)
        else:
            shutil.copy2(path, source / name)
    wheels = base / "wheels"
    build = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"]
    _run([*build, "-w", str(wheels), str(source)], cwd=base)
    (wheel,) = wheels.glob("lungcls-*.whl")
    venv = base / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=base)
    install = [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install"]
    _run([*install, "-q", "--no-deps", str(wheel)], cwd=base)
    return venv


def _environment() -> dict[str, str]:
    """This environment's packages for the dependencies, nothing of lungcls's settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LUNGCLS_")}
    env["PYTHONPATH"] = os.pathsep.join(
        dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    )
    return env


@pytest.mark.slow
def test_installed_wheel_loads_its_contracts_and_runs(installed: Path, tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere"  # not the repository: nothing found beside the sources
    outside.mkdir()
    python = installed / "bin" / "python"
    found = json.loads(_run([str(python), "-c", CHECK], cwd=outside, env=_environment()))

    site = installed.resolve()
    assert Path(found["package"]).resolve().is_relative_to(site), found["package"]
    contracts_dir = Path(found["contracts_dir"])
    assert contracts_dir.resolve().is_relative_to(site) and not contracts_dir.is_symlink()
    for name, (version, sha256) in found["contracts"].items():
        shipped = REPO / "data_contracts" / name / f"{version}.json"
        assert sha256 == hashlib.sha256(shipped.read_bytes()).hexdigest(), name
    latest = {
        name: max(int(p.stem[1:]) for p in (REPO / "data_contracts" / name).glob("v*.json"))
        for name in found["contracts"]
    }
    assert {name: int(v[1:]) for name, (v, _) in found["contracts"].items()} == latest

    usage = _run([str(installed / "bin" / "lungcls"), "--help"], cwd=outside, env=_environment())
    assert "import-images" in usage and "synth" in usage
