"""Claim first, commit last, verify on read: version numbers, shards, weights, checkpoints."""

from __future__ import annotations

import shutil
import threading
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch

from lungcls.dataset.shards import Sample, iter_samples, verify_shards, write_shard
from lungcls.io.integrity import IntegrityError
from lungcls.io.storage import Storage
from lungcls.io.versions import CLAIM, claim_version, committed_versions
from lungcls.registry.store import load_model, load_record, publish_model, serialise_model
from tests.support import OLD_ROOT


def test_racing_writers_claim_distinct_numbers_that_are_never_reused(
    local_or_s3: Storage,
) -> None:
    # A folder left by a writer killed before lungcls claimed numbers, and one claimed by a
    # writer killed before its commit: both numbers stay taken.
    local_or_s3.write_atomic("models/m/v1/model.pt", b"leftover")
    local_or_s3.create(f"models/m/v2/{CLAIM}", b"{}")
    claimed: list[int] = []
    start = threading.Barrier(6)

    def claim() -> None:
        start.wait()
        for _ in range(3):
            claimed.append(claim_version(local_or_s3, "models/m", f"run-{uuid.uuid4().hex}"))

    threads = [threading.Thread(target=claim) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(claimed) == list(range(3, 21))  # 18 claims, 18 numbers, none reused
    assert committed_versions(local_or_s3, "models/m", "model.json") == []
    assert local_or_s3.read_bytes("models/m/v1/model.pt") == b"leftover"  # nothing removed


def _shard(storage: Storage) -> tuple[str, object]:
    tensor = np.zeros((1, 2, 2, 2), dtype=np.float16)
    sample = Sample.from_tensor(
        tensor,
        "float16",
        sample_id="s-1",
        preprocess_hash="h",
        series_id="s-1",
        patient_id="p-1",
        split="train",
        label=1,
        batch="b",
        archive_id="archive-" + "a" * 24,
        manufacturer=None,
        slice_thickness_mm=1.0,
        nodule_diameter_mm=None,
    )
    rel = "datasets/d/v1/shards/train-00000.parquet"
    return rel, write_shard(storage, rel, [sample])


def test_a_tampered_shard_is_refused_by_name(local_or_s3: Storage) -> None:
    rel, shard = _shard(local_or_s3)
    assert [s.sample_id for s in iter_samples(local_or_s3, [shard])] == ["s-1"]
    verify_shards(local_or_s3, [shard])
    local_or_s3.write_atomic(rel, local_or_s3.read_bytes(rel)[:-1] + b"\x00")
    with pytest.raises(IntegrityError, match=r"train-00000\.parquet does not match the SHA-256"):
        list(iter_samples(local_or_s3, [shard]))
    other = shard.model_copy(update={"path": "datasets/d/v1/shards/train-copy.parquet"})
    local_or_s3.write_atomic(other.path, b"not the shard")
    with pytest.raises(IntegrityError, match=r"train-copy\.parquet"):
        verify_shards(local_or_s3, [other])


@pytest.fixture
def old_root(tmp_path: Path) -> Storage:
    shutil.copytree(OLD_ROOT, tmp_path / "root")
    return Storage(str(tmp_path / "root"))


def test_published_weights_are_hashed_and_a_tampered_file_is_refused(old_root: Storage) -> None:
    old = load_record(old_root, "lung-nodule-cnn", 1)
    assert old.files == {}  # written before files were hashed: still loads, unverified
    model = load_model(old_root, old)
    files = serialise_model(model, old.tensor_shape)
    version = publish_model(old_root, "lung-nodule-cnn", files, old.model_copy())
    record = load_record(old_root, "lung-nodule-cnn", version)
    assert version == 2 and set(record.files) == {"model.pt", "model.ts"}
    again = load_model(old_root, record)
    assert all(
        torch.equal(a, b)
        for a, b in zip(model.state_dict().values(), again.state_dict().values(), strict=True)
    )

    # Someone overwrites the committed weights (another trainer, a hand copy, a tamperer).
    old_root.write_atomic(
        f"{record.folder}/model.pt", old_root.read_bytes(f"{old.folder}/model.pt")[:-8]
    )
    with pytest.raises(IntegrityError, match=r"lung-nodule-cnn/v2/model\.pt does not match"):
        load_model(old_root, record)


class _Payload:
    """Not a tensor nor a plain value: unpickling it would run this class's code."""

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (print, ("code ran on the worker",))


def test_a_checkpoint_holding_code_is_refused(tmp_path: Path) -> None:
    from ray.train import Checkpoint

    from lungcls.train.worker import CHECKPOINT_FILE, load_checkpoint

    plain = tmp_path / "plain"
    plain.mkdir()
    torch.save(
        {"model": {"w": torch.ones(2)}, "optimizer": {}, "state": {"epoch": 1}},
        plain / CHECKPOINT_FILE,
    )
    assert load_checkpoint(Checkpoint.from_directory(str(plain)))["state"]["epoch"] == 1

    hostile = tmp_path / "hostile"
    hostile.mkdir()
    torch.save({"model": _Payload()}, hostile / CHECKPOINT_FILE)
    with pytest.raises(Exception, match="Weights only load failed"):
        load_checkpoint(Checkpoint.from_directory(str(hostile)))
