"""A training data order that is a pure function of (seed, epoch, position): resumable mid-epoch,
the same with any number of loader workers, and shardable across distributed ranks.

Each epoch's order is a seeded permutation; each item's augmentation is drawn from a generator
seeded by (seed, epoch, index), so a resumed run, a run with 4 workers and the ranks of a
distributed run all see exactly the items (and augmentations) an uninterrupted 1-process run
would.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from dnas.engine.workers import Loader, WorkerStart, worker_start
from dnas.errors import DnasError


class KeyedDataset(Dataset):
    """Items addressed by ``(epoch, index)``; the wrapped dataset's ``rng`` (the augmentation
    generator, by convention of the task plugins) is re-seeded from (seed, epoch, index)."""

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> Any:
        epoch, index = key
        if hasattr(self.dataset, "rng"):
            self.dataset.rng = np.random.default_rng([self.seed, epoch, index])
        return self.dataset[index]


class EpochBatches(Sampler[list[tuple[int, int]]]):
    """Batches of ``(epoch, index)`` keys over ``indices``: a seeded permutation per epoch, the
    last partial batch dropped, this rank's share (every ``world``-th item) of each global
    batch, starting at batch ``start`` of the epoch set by :meth:`set_position`."""

    def __init__(self, indices: Sequence[int], batch_size: int, seed: int,
                 rank: int = 0, world: int = 1) -> None:  # fmt: skip
        if batch_size % world:
            raise DnasError(f"batch size {batch_size} is not divisible by {world} processes")
        self.indices = np.asarray(indices, dtype=np.int64)
        self.batch_size, self.seed, self.rank, self.world = batch_size, seed, rank, world
        full = len(self.indices) // batch_size
        self.num_batches = full if full else 1  # a set smaller than one batch: one short batch
        self.epoch, self.start = 0, 0

    def set_position(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def __len__(self) -> int:
        return self.num_batches

    def order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(self.indices)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        order = self.order(self.epoch)
        for b in range(self.start, self.num_batches):
            chunk = order[b * self.batch_size : (b + 1) * self.batch_size]
            yield [(self.epoch, int(i)) for i in chunk[self.rank :: self.world]]


def train_loader(dataset: Dataset, indices: Sequence[int], batch_size: int, workers: int,
                 seed: int, rank: int = 0, world: int = 1) -> DataLoader:  # fmt: skip
    """A loader over ``dataset[indices]`` in the resumable order; ``batch_size`` is global."""
    sampler = EpochBatches(indices, batch_size, seed, rank, world)
    return Loader(
        KeyedDataset(dataset, seed),
        batch_sampler=sampler,
        num_workers=workers,
        multiprocessing_context=worker_start(dataset, workers),
        worker_init_fn=WorkerStart(os.getpid(), reseed=False) if workers else None,
        persistent_workers=workers > 0,
        generator=torch.Generator().manual_seed(seed),  # never draw from the global RNG
    )


def make_loader(dataset: Dataset, batch_size: int, workers: int,
                items: range | None = None) -> DataLoader:  # fmt: skip
    """A loader for scoring: every item once, in order (only ``items``, where given; its
    ``dataset`` is still the whole split, as under a distributed sampler)."""
    return Loader(
        dataset,
        batch_size=batch_size,
        sampler=items,
        shuffle=False,
        num_workers=workers,
        multiprocessing_context=worker_start(dataset, workers),
        worker_init_fn=WorkerStart(os.getpid(), reseed=True) if workers else None,
        persistent_workers=workers > 0,
        generator=torch.Generator().manual_seed(0),
    )


def epoch_batches(loader: DataLoader, epoch: int, start: int = 0) -> Iterator[Any]:
    """The batches of ``epoch`` of a :func:`train_loader`, from batch ``start`` on."""
    loader.batch_sampler.set_position(epoch, start)
    return iter(loader)


def stream(loader: DataLoader, position: int) -> Iterator[Any]:
    """A :func:`train_loader`'s batches endlessly, epoch after epoch, from global ``position``
    (batches already consumed); the architecture split is read this way."""
    per_epoch = len(loader.batch_sampler)
    epoch, start = divmod(position, per_epoch)
    while True:
        yield from epoch_batches(loader, epoch, start)
        epoch, start = epoch + 1, 0
