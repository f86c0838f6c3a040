"""Loader workers: how they start and end. Forked in one process, spawned under torchrun;
each ties its life to the process that started it and leaves stop signals sent to the run's
process group to the run, which acts on them at a step boundary."""

from __future__ import annotations

import ctypes
import multiprocessing
import multiprocessing.context
import os
import pickle
import signal
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from dnas.engine import distributed
from dnas.errors import DnasError

PR_SET_PDEATHSIG = 1  # prctl(2)


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
