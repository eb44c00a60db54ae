"""The rank cache: the first pass streams and keeps a copy, later passes come from memory."""

from __future__ import annotations

import torch

from lungcls.train.rank_cache import RankCache


def _stream(calls: list[int], rows: int = 10, batch: int = 4):
    def stream():
        calls.append(1)
        x = torch.arange(rows, dtype=torch.float32).reshape(rows, 1)
        for start in range(0, rows, batch):
            yield {"x": x[start : start + batch], "label": x[start : start + batch, 0] % 2}

    return stream


def test_later_passes_come_from_memory_with_every_row_once() -> None:
    calls: list[int] = []
    cache = RankCache(enabled=True)
    first = list(cache.batches("train", _stream(calls), 4, shuffle_seed=1))
    assert [len(b["label"]) for b in first] == [4, 4, 2] and calls == [1]
    for seed in (2, 3):
        later = list(cache.batches("train", _stream(calls), 4, shuffle_seed=seed))
        assert calls == [1]  # nothing streamed again
        assert [len(b["label"]) for b in later] == [4, 4, 2]  # the same steps: DDP needs it
        rows = torch.cat([b["x"][:, 0] for b in later])
        assert sorted(rows.tolist()) == list(range(10))
        assert torch.equal(torch.cat([b["label"] for b in later]), rows % 2)  # rows stay whole
    orders = [
        torch.cat([b["x"][:, 0] for b in cache.batches("train", _stream(calls), 4, seed)])
        for seed in (2, 2, 3)
    ]
    assert torch.equal(orders[0], orders[1]) and not torch.equal(orders[0], orders[2])


def test_without_a_seed_the_order_is_kept() -> None:
    cache = RankCache(enabled=True)
    list(cache.batches("val", _stream([]), 4))
    again = torch.cat([b["x"][:, 0] for b in cache.batches("val", _stream([]), 4)])
    assert again.tolist() == list(range(10))


def test_disabled_or_unfinished_passes_stream_every_time() -> None:
    calls: list[int] = []
    off = RankCache(enabled=False)
    for _ in range(2):
        list(off.batches("train", _stream(calls), 4, shuffle_seed=0))
    assert calls == [1, 1] and not off.rows
    on = RankCache(enabled=True)
    next(iter(on.batches("train", _stream(calls), 4, shuffle_seed=0)))  # abandoned
    assert not on.rows
