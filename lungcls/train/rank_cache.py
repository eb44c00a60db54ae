"""One rank's share of a small dataset, kept in the worker after its first pass.

A dataset under `train.cache_max_mb` is materialised once in Ray's object store, so later
epochs read nothing from storage; yet each epoch still starts a new streaming split, whose
coordinator hands the ranks their rows in step. That start, and the wait for the slower rank
at its end, cost a fixed ~0.1-0.2 s per epoch (bench/train.py: 5-10 % of a 2 s epoch on
one to two workers), and the first batches of every epoch wait for it. After one full pass
the rank's rows are in this process already: later epochs reshuffle them here, seeded by
epoch, and never wait for data.

Each rank keeps the rows its first pass gave it (a fixed partition, as a DistributedSampler
without cross-rank reshuffling); the split is equal, so every rank steps the same number of
times, which DDP needs. A worker restarted after a failure streams its first epoch again.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import torch

from lungcls.train.loop import Batch


class RankCache:
    """The train and val rows of this rank, once a full pass has been seen (`enabled`)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.rows: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def batches(
        self,
        split: str,
        stream: Callable[[], Iterable[Batch]],
        batch_size: int,
        shuffle_seed: int | None = None,
    ) -> Iterator[Batch]:
        """The split's batches: from memory once cached (shuffled with `shuffle_seed`, in
        order without), else from `stream()`, keeping a copy when caching is on."""
        if split in self.rows:
            yield from _from_memory(*self.rows[split], batch_size, shuffle_seed)
            return
        xs: list[torch.Tensor] = []
        labels: list[torch.Tensor] = []
        for batch in stream():
            if self.enabled:
                xs.append(batch["x"].clone())  # Ray may hand out views of its own buffers
                labels.append(batch["label"].clone())
            yield batch
        if self.enabled and xs:  # only a pass that reached its end is kept
            self.rows[split] = (torch.cat(xs), torch.cat(labels))


def _from_memory(
    x: torch.Tensor, labels: torch.Tensor, batch_size: int, shuffle_seed: int | None
) -> Iterator[Batch]:
    order = (
        torch.arange(len(labels))
        if shuffle_seed is None
        else torch.randperm(len(labels), generator=torch.Generator().manual_seed(shuffle_seed))
    )
    for start in range(0, len(labels), batch_size):
        chosen = order[start : start + batch_size]
        yield {"x": x[chosen], "label": labels[chosen]}
