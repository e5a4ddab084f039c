"""Which training rows each process reads at each step: a deterministic, resumable order.

The training split is read as an endless stream of epochs; epoch ``e`` visits the rows in the
permutation ``epoch_permutation(n, seed, e)``, a pure function of (seed, epoch). A position in the
stream is ``(epoch, index)``: the rows of that epoch's permutation already consumed. So a checkpoint
needs only the position, and resuming reads exactly the rows the uninterrupted run would have read.

One optimizer step consumes ``global_batch_size`` consecutive rows of an epoch's permutation; the
last ``len % global_batch_size`` rows of each epoch are skipped (a different few each epoch), so a
step never straddles two epochs and never reads a row twice. Row ``j`` of the global batch belongs
to accumulation step ``a = j // (micro * world)``, process ``r = (j // micro) % world``: every
process reads a different slice, and the slices of one step tile the global batch once.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, default_collate


@dataclass(frozen=True)
class DataPosition:
    epoch: int = 0
    index: int = 0  # rows of this epoch's permutation already read

    def advanced(self, global_batch_size: int, dataset_size: int) -> "DataPosition":
        """The position after one more optimizer step (the next epoch if a full batch no longer fits)."""
        index = self.index + global_batch_size
        if index + global_batch_size > dataset_size:
            return DataPosition(self.epoch + 1, 0)
        return DataPosition(self.epoch, index)

    def to_dict(self) -> dict:
        return {"epoch": self.epoch, "index": self.index}


def epoch_permutation(dataset_size: int, seed: int, epoch: int) -> np.ndarray:
    """The visiting order of epoch ``epoch``: a function of (seed, epoch) only (numpy PCG64 seeded by
    the pair, stable across platforms and numpy versions)."""
    return np.random.default_rng([seed, epoch]).permutation(dataset_size)


@dataclass(frozen=True)
class BatchLayout:
    """How one global batch splits over accumulation steps and processes."""

    global_batch_size: int
    micro_batch_size: int
    world_size: int

    @property
    def accumulation_steps(self) -> int:
        return self.global_batch_size // (self.micro_batch_size * self.world_size)

    def micro_slice(self, accumulation_step: int, rank: int) -> slice:
        start = (accumulation_step * self.world_size + rank) * self.micro_batch_size
        return slice(start, start + self.micro_batch_size)


class StepIndexSampler:
    """Batch sampler for one process: yields, step after step, the ``accumulation_steps`` index
    lists (``micro_batch_size`` rows each) that this process reads, starting at ``start``."""

    def __init__(self, dataset_size: int, seed: int, layout: BatchLayout, rank: int, start: DataPosition):
        if dataset_size < layout.global_batch_size:
            raise ValueError(f"{dataset_size} rows is fewer than one global batch of {layout.global_batch_size}")
        self.dataset_size, self.seed, self.layout, self.rank, self.start = dataset_size, seed, layout, rank, start
        self._epoch: Optional[int] = None
        self._order: Optional[np.ndarray] = None

    def _order_of(self, epoch: int) -> np.ndarray:
        if epoch != self._epoch:
            self._epoch, self._order = epoch, epoch_permutation(self.dataset_size, self.seed, epoch)
        return self._order

    def global_batch(self, position: DataPosition) -> list[int]:
        """The dataset indices of the global batch that starts at ``position``."""
        return self._order_of(position.epoch)[position.index:position.index + self.layout.global_batch_size].tolist()

    def __iter__(self) -> Iterator[list[int]]:
        position = self.start
        while True:
            rows = self.global_batch(position)
            for a in range(self.layout.accumulation_steps):
                yield rows[self.layout.micro_slice(a, self.rank)]
            position = position.advanced(self.layout.global_batch_size, self.dataset_size)


def collate_rows(rows: list) -> dict:
    """Stack rows {"input_ids": [T], optional "valid": [T]}; lists become tensors."""
    batch = default_collate([{key: torch.as_tensor(value) for key, value in row.items()} for row in rows])
    batch["input_ids"] = torch.as_tensor(batch["input_ids"]).long()
    if "valid" in batch:
        batch["valid"] = torch.as_tensor(batch["valid"]).bool()
    return batch


def training_loader(dataset: Dataset, sampler: StepIndexSampler, num_workers: int, pin_memory: bool) -> DataLoader:
    """An endless loader over ``sampler``; workers prefetch, the order stays the sampler's."""
    return DataLoader(dataset, batch_sampler=sampler, collate_fn=collate_rows, num_workers=num_workers,
                      pin_memory=pin_memory, persistent_workers=False,
                      prefetch_factor=4 if num_workers else None)


def validation_batches(dataset: Dataset, micro_batch_size: int, num_batches: int, rank: int, world_size: int):
    """The same validation rows every time: the first ``num_batches * micro * world`` rows of the split
    (or all of it if shorter), strided over processes. Yields this process's micro batches."""
    total = min(len(dataset), num_batches * micro_batch_size * world_size)
    mine = list(range(rank, total, world_size))
    for start in range(0, len(mine), micro_batch_size):
        yield collate_rows([dataset[i] for i in mine[start:start + micro_batch_size]])
