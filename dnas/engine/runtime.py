"""Run-time plumbing shared by search, train and eval: device, seeds, loaders, one weight step."""

from __future__ import annotations

import contextlib
import math
import platform
import random
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from dnas.config import WeightOptimizer
from dnas.engine.distributed import average_gradients
from dnas.errors import ConfigError, DnasError


def pick_device(name: str, source: str = "") -> torch.device:
    """The torch device a config's ``device`` names; a ConfigError at ``source``'s key
    ``device`` where it is unknown or absent here."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(source, "device", f"unknown device {name!r} (expected auto, cpu, "
                          "cuda, cuda:N)") from None  # fmt: skip
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(source, "device", f"{name!r} requested but CUDA is not available")
    return device


# /proc/cpuinfo keys that tell CPUs of one name apart: x86's family and model, ARM's implementer
# and part (ARM boards give no model name; Graviton 2 and 3 differ only in their part)
CPU_DETAIL = ("cpu family", "model", "CPU implementer", "CPU part")


def device_name(device: torch.device, cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The GPU's name, or the CPU's model name with what tells CPUs of that name apart, from
    ``cpuinfo`` (``CPU_DETAIL``): cloud VMs that all read "AMD EPYC" differ in family and
    model, and 2x in speed. Without ``cpuinfo`` (macOS, Windows), the platform's processor;
    another device (mps, xpu), its type."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type != "cpu":  # mps, xpu, ...: not the host CPU; torch names no model for them
        return device.type
    fallback = platform.processor() or platform.machine() or "cpu"
    try:
        lines = cpuinfo.read_text(errors="replace").splitlines()
    except OSError:
        return fallback
    fields: dict[str, list[str]] = {}
    for line in lines:  # each core repeats them; big.LITTLE cores differ: every distinct value
        key, _, value = line.partition(":")
        seen = fields.setdefault(key.strip(), [])
        if value.strip() and value.strip() not in seen:
            seen.append(value.strip())
    # x86's "model name", POWER's "cpu" ("POWER9 (architected), altivec supported")
    name = "/".join(fields.get("model name") or fields.get("cpu") or [fallback])
    detail = [f"{key} {'/'.join(fields[key])}" for key in CPU_DETAIL if fields.get(key)]
    return f"{name} ({', '.join(detail)})" if detail else name


def machine_record(device: torch.device) -> dict[str, Any]:
    """What a benchmark ran on, for its JSON: the platform, the device's name
    (``device_name``), torch and its CPU threads."""
    return {"platform": platform.platform(), "device": device_name(device),
            "torch": torch.__version__, "threads": torch.get_num_threads()}  # fmt: skip


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """The python, numpy and torch (CPU and CUDA) global generators' states, as plain data and
    tensors (a checkpoint loads them with ``weights_only=True``)."""
    numpy_state = np.random.get_state(legacy=False)
    numpy_state["state"]["key"] = torch.from_numpy(numpy_state["state"]["key"].astype(np.int64))
    state = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    numpy_state = dict(state["numpy"])
    key = numpy_state["state"]["key"].numpy().astype(np.uint32)
    numpy_state["state"] = {**numpy_state["state"], "key": key}
    np.random.set_state(numpy_state)
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


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
        self.sync_grads = False  # distributed search: average gradients across processes

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
        loss = loss_fn(output.float(), batch)
        if not isinstance(loss, Tensor) or loss.numel() != 1:  # a task plugin's mistake
            got = tuple(loss.shape) if isinstance(loss, Tensor) else type(loss).__name__
            owner = getattr(loss_fn, "__self__", None)  # the task whose bound method it is
            name = getattr(owner, "name", None)
            where = (f"task {name!r} ({type(owner).__module__}.{type(owner).__qualname__}): "
                     "loss()" if name else "the task's loss")  # fmt: skip
            raise DnasError(f"{where} must return one value (the batch's mean), got {got}")
        return loss.reshape(())  # a (1,) loss as a scalar: the step sums into a scalar

    def step(self, loss: Tensor, optimizer: torch.optim.Optimizer, params: list[nn.Parameter],
             grad_clip: float = 0.0, update: bool = True) -> None:  # fmt: skip
        """Backward into ``params`` only, optional clipping, optimiser step (fp16: scaled).
        ``update=False`` leaves the scale update to a later step of the same iteration: the
        gradient scaler must update once per iteration, after every optimiser stepped."""
        self.backward(loss, params)
        self.apply(optimizer, params, grad_clip, update)

    def backward(self, loss: Tensor, params: list[nn.Parameter]) -> None:
        """Accumulate the (fp16: scaled) gradient of ``loss`` into ``params`` only."""
        self.scaler.scale(loss).backward(inputs=params)

    def apply(self, optimizer: torch.optim.Optimizer, params: list[nn.Parameter],
              grad_clip: float = 0.0, update: bool = True) -> None:  # fmt: skip
        """The optimiser step on the accumulated gradients (see :meth:`step`)."""
        if self.sync_grads:
            average_gradients(params)
        if grad_clip > 0:
            self.scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(params, grad_clip)
        self.scaler.step(optimizer)
        if update:
            self.scaler.update()


def adam(params: Sequence[Tensor], lr: float, betas: Sequence[float] = (0.9, 0.999),
         weight_decay: float = 0.0) -> torch.optim.Adam:  # fmt: skip
    """Adam on the multi-tensor (``foreach``) kernels, which torch uses by default only on CUDA:
    on fp32 weights (``dnas`` keeps them fp32; autocast lowers only the compute) the same
    updates bit for bit, and 1.7-2.3x quicker steps on CPU (a super net has ~1500 tensors)."""
    return torch.optim.Adam(params, lr=lr, betas=tuple(betas), weight_decay=weight_decay,
                            foreach=True)  # fmt: skip


def search_weight_optimizer(params: list[nn.Parameter],
                            cfg: WeightOptimizer) -> torch.optim.Optimizer:  # fmt: skip
    """The search's optimiser of operating weights: SGD with momentum (paper Sec. 4.1) or Adam,
    both on the multi-tensor kernels (``adam``)."""
    if cfg.type == "adam":
        return adam(params, cfg.lr, cfg.betas, cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum,
                           weight_decay=cfg.weight_decay, foreach=True)  # fmt: skip


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict[str, Any],
                         key: str | None = None) -> None:  # fmt: skip
    """Restore a checkpoint's optimiser state, refusing in one line one of another kind (a
    resumed run whose config changed ``key``, e.g. SGD's momentum buffers into Adam; no check
    without ``key``). The kind is told by Adam's ``betas``, not by the whole set of group keys,
    which torch versions extend. The kernels stay this optimiser's own: torch would take the
    checkpoint's ``foreach`` too (None in checkpoints written before ``adam``)."""
    groups = state.get("param_groups") or []
    if key and groups and ("betas" in groups[0]) != ("betas" in optimizer.param_groups[0]):
        raise DnasError(f"{key}: the checkpoint holds the state of another optimiser than "
                        f"{type(optimizer).__name__}; resume with the run's own {key}")  # fmt: skip
    optimizer.load_state_dict(state)
    for group in optimizer.param_groups:
        group["foreach"] = optimizer.defaults.get("foreach")


def weight_step(
    model: nn.Module,
    batch: dict[str, Any],
    loss_fn: Callable[[Tensor, dict[str, Any]], Tensor],
    optimizer: torch.optim.Optimizer,
    params: list[nn.Parameter],
    grad_clip: float = 0.0,
    amp: Amp | None = None,
    forwards: Sequence[dict[str, Any]] | None = None,
    **forward_kwargs: Any,
) -> Tensor:
    """One optimisation step of ``params`` on the task loss (search warm-up, DARTS, training).
    ``forwards``: the keyword arguments of several forward passes on the same batch, whose
    mean loss is stepped on, their gradients accumulated one pass at a time (FairNAS' strict
    fairness); default: one pass with ``forward_kwargs``."""
    amp = amp or Amp(batch["input"].device)
    model.train()
    optimizer.zero_grad(set_to_none=True)
    passes = forwards or [forward_kwargs]
    total = torch.zeros((), device=batch["input"].device)
    for kwargs in passes:
        loss = amp.forward_loss(model, batch, loss_fn, **kwargs) / len(passes)
        amp.backward(loss, params)
        total += loss.detach()
    amp.apply(optimizer, params, grad_clip)
    return total


@torch.no_grad()
def mean_loss(model: nn.Module, batches: Iterable[dict[str, Any]], amp: Amp,
              loss_fn: Callable[[Tensor, dict[str, Any]], Tensor], device: torch.device,
              **forward_kwargs: Any) -> float:  # fmt: skip
    """The task loss over ``batches``, weighted by batch size, forward passes as a training
    step makes them (``Amp.forward_loss``), in the mode ``model`` is in."""
    total, count = 0.0, 0
    for batch in batches:
        batch = to_device(batch, device)
        n = len(batch["input"])
        total += n * float(amp.forward_loss(model, batch, loss_fn, **forward_kwargs))
        count += n
    return total / max(count, 1)
