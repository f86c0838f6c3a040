"""Run-time plumbing shared by search, train and eval: device, seeds, loaders, one weight step."""

from __future__ import annotations

import contextlib
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


_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class Amp:
    """Precision and memory format of a run (experiment keys ``precision``, ``channels_last``):
    autocast around forward passes, a gradient scaler for fp16, channels-last tensors."""

    def __init__(self, device: torch.device, precision: str = "fp32",
                 channels_last: bool = False) -> None:  # fmt: skip
        self.device, self.precision, self.channels_last = device, precision, channels_last
        self.scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=_DTYPES[self.precision])

    def model(self, model: nn.Module) -> nn.Module:
        return model.to(memory_format=torch.channels_last) if self.channels_last else model

    def input(self, x: Tensor) -> Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def forward_loss(self, model: nn.Module, batch: dict[str, Any],
                     loss_fn: Callable[[Tensor, dict[str, Any]], Tensor],
                     **forward_kwargs: Any) -> Tensor:  # fmt: skip
        """The task loss of one batch, the forward pass under autocast, the loss in fp32."""
        with self.autocast():
            output = model(self.input(batch["input"]), **forward_kwargs)
        return loss_fn(output.float(), batch)

    def step(self, loss: Tensor, optimizer: torch.optim.Optimizer, params: list[nn.Parameter],
             grad_clip: float = 0.0) -> None:  # fmt: skip
        """Backward into ``params`` only, optional clipping, optimiser step (fp16: scaled)."""
        self.scaler.scale(loss).backward(inputs=params)
        if grad_clip > 0:
            self.scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(params, grad_clip)
        self.scaler.step(optimizer)
        self.scaler.update()


def weight_step(
    model: nn.Module,
    batch: dict[str, Any],
    loss_fn: Callable[[Tensor, dict[str, Any]], Tensor],
    optimizer: torch.optim.Optimizer,
    params: list[nn.Parameter],
    grad_clip: float = 0.0,
    amp: Amp | None = None,
    **forward_kwargs: Any,
) -> Tensor:
    """One optimisation step of ``params`` on the task loss (search warm-up, DARTS, training)."""
    amp = amp or Amp(batch["input"].device)
    model.train()
    optimizer.zero_grad(set_to_none=True)
    loss = amp.forward_loss(model, batch, loss_fn, **forward_kwargs)
    amp.step(loss, optimizer, params, grad_clip)
    return loss.detach()
