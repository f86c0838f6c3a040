"""A training data order that is a pure function of (seed, epoch, position): resumable mid-epoch,
the same with any number of loader workers, and shardable across distributed ranks.

Each epoch's order is a seeded permutation; each item's augmentation is drawn from a generator
seeded by (seed, epoch, index), so a resumed run, a run with 4 workers and the ranks of a
distributed run all see exactly the items (and augmentations) an uninterrupted 1-process run
would.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import multiprocessing.context
import os
import pickle
import signal
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from dnas.engine import distributed
from dnas.errors import DnasError

PR_SET_PDEATHSIG = 1  # prctl(2)


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


def worker_start(dataset: Dataset, workers: int) -> multiprocessing.context.BaseContext | None:
    """How loader workers start: forked (the default), but spawned once this process is in a
    torchrun process group. The group's C++ threads may hold Python's thread lock at the
    moment of a fork, and then the worker deadlocks in its first instruction (Python 3.11;
    seen under load as a torchrun run that waited for ever for its first batch). A spawned
    worker is a fresh interpreter (exec right after the fork, no Python code between), still
    this process's child, so it exits when the process dies (a fork server's workers outlived
    a killed process). It runs the main module again, so a script that runs dnas under
    torchrun needs ``if __name__ == "__main__":`` (``python -m dnas`` has it), and it gets the
    dataset pickled: one that cannot be is a one-line error here, not a traceback at the first
    batch."""
    if workers == 0 or not distributed.in_process_group():
        return None
    try:
        pickle.dumps(dataset)
    except (pickle.PicklingError, TypeError, AttributeError) as exc:
        name = type(getattr(dataset, "dataset", dataset)).__name__
        raise DnasError(f"dataset {name}: cannot be sent to loader workers under torchrun "
                        f"({exc}); make it picklable, or set workers: 0") from None  # fmt: skip
    return multiprocessing.get_context("spawn")


STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}


class Loader(DataLoader):
    """A DataLoader whose workers leave the run's process group (:class:`WorkerStart`): a stop
    signal to the whole group (Ctrl-C, or torchrun, which signals each process's group) is the
    run's to act on at a step boundary. A spawned worker, a fresh interpreter, died of it, and
    its process failed mid-step with 'DataLoader worker killed by signal' instead of stopping
    with a checkpoint. The workers start with the stop signals held (this process holds them
    while it starts them; the mask survives exec), so one that came meanwhile is dropped by the
    worker and acted on here once they have started."""

    def __iter__(self) -> Iterator[Any]:
        if self.num_workers == 0 or not hasattr(signal, "pthread_sigmask"):
            return super().__iter__()
        held = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            return super().__iter__()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, held)


@dataclass(frozen=True)
class WorkerStart:
    """What each loader worker runs first: it ties its life to the process that started it,
    leaves stop signals sent to the run's process group to the run (:class:`Loader`; one sent
    to the worker itself, as multiprocessing's exit sends SIGTERM, still ends it), and an
    unkeyed loader's worker (``reseed``) draws its own augmentation generator."""

    parent: int
    reseed: bool

    def __call__(self, worker_id: int) -> None:
        die_with(self.parent)
        if hasattr(os, "setpgid") and hasattr(signal, "pthread_sigmask"):
            os.setpgid(0, 0)
            for signum in STOP_SIGNALS:  # drop one sent to the group while this worker started
                signal.signal(signum, signal.SIG_IGN)
            signal.signal(signal.SIGINT, signal.default_int_handler)  # not the run's handlers
            signal.signal(signal.SIGTERM, leave)  # (a forked worker inherits them)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
        info = torch.utils.data.get_worker_info()
        if self.reseed and hasattr(info.dataset, "rng"):
            info.dataset.rng = np.random.default_rng(torch.initial_seed() % 2**32)


def leave(signum: int, frame: Any) -> None:
    """A worker's SIGTERM (multiprocessing's exit ends the workers it still holds with one):
    exit 0, so the process's watch on its workers does not take it for a crash."""
    os._exit(0)


def die_with(parent: int) -> None:
    """End this worker when ``parent`` dies (Linux: the kernel's parent-death signal), and at
    once if it already has. torch's watchdog reads the parent only once the worker has
    started, so a spawned worker (seconds to start) whose process was killed meanwhile
    waited for ever."""
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:
        os._exit(1)


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
