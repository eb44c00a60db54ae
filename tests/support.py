"""Helpers the tests share (fixtures live in conftest.py)."""

from __future__ import annotations

from pathlib import Path

from lungcls.config import Settings

REAL_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
TEST_KEY = "test-pseudonym-key-0123456789"


def make_settings(root: str | Path, tmp_path: Path, **overrides: object) -> Settings:
    """Settings for one test: its own root and work dir, in-process execution by default."""
    values: dict[str, object] = {
        "root": str(root),
        "pseudonym_key": TEST_KEY,
        "work_dir": str(tmp_path / "work"),
        "ray": {"executor": "local"},
    }
    values.update(overrides)
    return Settings(**values)


def small_ct_series(index: int, n_slices: int = 4, size: int = 16, seed: int = 7) -> list:
    """A tiny but complete CT series (pydicom datasets) with fake identifiers."""
    import numpy as np

    from lungcls.phantom import centered_geometry
    from lungcls.synth import SCANNERS, ct_datasets, fake_identity, scan_identity

    rng = np.random.default_rng([seed, index])
    geometry = centered_geometry((n_slices, size, size), (2.0, 1.5, 1.5))
    hu = rng.normal(-800, 50, size=(n_slices, size, size))
    patient = fake_identity(rng, index)
    scan = scan_identity(rng, seed, index)
    return ct_datasets(hu, geometry, patient, scan, SCANNERS[index % len(SCANNERS)], seed)
