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


def train_in_process(settings: Settings, steps: int, seed: int = 0) -> int:
    """Train a real model on a dataset version's train shards without Ray (full batch, AdamW)
    and publish it as a model version: for tests of what comes after training."""
    import numpy as np
    import torch

    from lungcls.datasets import load_manifest
    from lungcls.models import build_model
    from lungcls.registry import publish_model, serialise_model
    from lungcls.shards import iter_samples, tensor_from_row
    from lungcls.storage import Storage
    from lungcls.train import model_record

    storage = Storage.from_settings(settings)
    manifest = load_manifest(storage, settings.dataset.name)
    rows = list(
        iter_samples(storage, [s["path"] for s in manifest["shards"] if s["split"] == "train"])
    )
    x = torch.from_numpy(np.stack([tensor_from_row(r).astype(np.float32) for r in rows]))
    y = torch.tensor([float(r["label"]) for r in rows])
    torch.manual_seed(seed)
    model = build_model(settings.model, manifest["tensor"]["shape"], seed)
    optimiser = torch.optim.AdamW(model.parameters(), lr=3e-3)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    model.train()
    for _ in range(steps):
        optimiser.zero_grad()
        loss_fn(model(x), y).backward()
        optimiser.step()
    best = {"epoch": steps - 1, "val_auc": float("nan")}
    record = model_record(settings, manifest, f"test-{steps}-steps", [], best)
    return publish_model(
        storage, settings.model.name, serialise_model(model, record["tensor_shape"]), record
    )
