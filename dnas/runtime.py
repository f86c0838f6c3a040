"""Run-time plumbing shared by search, train and eval: device, seeds, loaders, one weight step."""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from dnas.errors import DnasError


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise DnasError(
            f"device: unknown device {name!r} (expected auto, cpu, cuda, cuda:N)"
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DnasError(f"device: {name!r} requested but CUDA is not available")
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _seed_worker(worker_id: int) -> None:
    info = torch.utils.data.get_worker_info()
    if hasattr(info.dataset, "rng"):
        info.dataset.rng = np.random.default_rng(torch.initial_seed() % 2**32)


def make_loader(
    dataset: Dataset, batch_size: int, shuffle: bool, workers: int, seed: int
) -> DataLoader:
    """A seeded DataLoader; training loaders drop the last partial batch (BN needs > 1 sample)."""
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        drop_last=shuffle and len(dataset) > batch_size,
        num_workers=workers,
        worker_init_fn=_seed_worker if workers else None,
        generator=generator,
        persistent_workers=workers > 0,
    )


def forever(loader: DataLoader) -> Iterator[Any]:
    """Iterate a loader endlessly (a new epoch each pass), without caching batches."""
    while True:
        yield from loader


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {
        k: v.to(device, non_blocking=True) if isinstance(v, Tensor) else v for k, v in batch.items()
    }


def check_finite(value: Tensor | float, what: str, step: int) -> float:
    """The value as a float; a NaN or infinity stops the run with a one-line error."""
    out = float(value)
    if not math.isfinite(out):
        raise DnasError(f"non-finite {what} ({out}) at step {step}; lower the learning rate")
    return out


def weight_step(
    model: nn.Module,
    batch: dict[str, Any],
    loss_fn: Callable[[Tensor, dict[str, Any]], Tensor],
    optimizer: torch.optim.Optimizer,
    params: list[nn.Parameter],
    grad_clip: float = 0.0,
    **forward_kwargs: Any,
) -> Tensor:
    """One optimisation step of ``params`` on the task loss (search warm-up, DARTS, training)."""
    model.train()
    optimizer.zero_grad(set_to_none=True)
    loss = loss_fn(model(batch["input"], **forward_kwargs), batch)
    loss.backward(inputs=params)
    if grad_clip > 0:
        nn.utils.clip_grad_norm_(params, grad_clip)
    optimizer.step()
    return loss.detach()
