"""Scoring a net on a task's validation split, with every process of a torchrun world.

A task that implements ``predict`` and ``score`` (:func:`dnas.task.scores_in_slices`) is scored
as mmpose and mmengine do it: each process predicts one contiguous slice of the split (its
loader samples the slice; ``loader.dataset`` is the whole split), rank 0 gathers the slices in
order and scores them, so each process predicts 1/N of the split and none waits in a
collective while rank 0 predicts the rest (gloo gives up after 30 minutes). A task with its
own ``evaluate`` is scored by rank 0 alone. Every process gets the metrics, or the error any
of them met.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset

from dnas.engine import distributed
from dnas.engine.distributed import World
from dnas.engine.sampling import make_loader
from dnas.task import Metrics, Task, checked_metrics, evaluate, scores_in_slices


def slice_of(length: int, world: World) -> range:
    """The items of a split of ``length`` that process ``world.rank`` predicts: contiguous,
    in rank order, sizes differing by at most one."""
    return range(length * world.rank // world.size, length * (world.rank + 1) // world.size)


class SplitScorer:
    """Scores nets on one split (the loader of this process's slice is built once and kept,
    with its workers, from one evaluation to the next)."""

    def __init__(self, task: Task, dataset: Dataset, batch_size: int, workers: int,
                 world: World) -> None:  # fmt: skip
        self.task, self.dataset, self.world = task, dataset, world
        self.in_slices = world.distributed and scores_in_slices(task)
        self.items = slice_of(len(dataset), world) if self.in_slices else range(len(dataset))
        self.loader = make_loader(dataset, batch_size, workers, self.items)

    def __call__(self, model: nn.Module, device: torch.device, out_dir: Path | None,
                 save_vis: int = 0) -> Metrics:  # fmt: skip
        """``model``'s metrics on the split, on every process; files (``out_dir``, pictures of
        the first ``save_vis`` items) are written by rank 0."""
        if not self.in_slices:
            with distributed.failing_together():
                metrics = evaluate(self.task, model, self.loader, device, out_dir, save_vis) \
                    if self.world.main else None  # fmt: skip
            return distributed.broadcast_object(metrics)
        keep = max(0, save_vis - self.items.start)
        with distributed.failing_together():  # a broken item in one slice: every process says it
            part = self.task.predict(model, self.loader, device, keep) if self.items else None
        parts = distributed.gather_to_main((len(self.items), part))
        with distributed.failing_together():
            metrics = self.score([p for n, p in parts if n], out_dir, save_vis) \
                if self.world.main else None  # fmt: skip
        return distributed.broadcast_object(metrics)

    def score(self, parts: list, out_dir: Path | None, save_vis: int) -> Metrics:
        return checked_metrics(self.task, self.task.score(self.dataset, parts, out_dir, save_vis))
