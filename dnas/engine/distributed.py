"""Data-parallel runs under ``torchrun``: process group set-up, gradient averaging, buffer and
metric synchronisation. A plain ``python -m dnas`` run is a world of one and skips all of it.

Training wraps the network in DistributedDataParallel. Search cannot: each search step makes
two partial backward passes (``backward(inputs=alphas)``, then ``inputs=weights``) through one
forward graph each, which DDP's reducer does not support (it waits for every parameter that the
forward reached). Search therefore averages the gradients of exactly the parameters a backward
pass updates, with one all-reduce of their flattened gradients, the same arithmetic DDP does.
"""

from __future__ import annotations

import atexit
import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

# Imported before any process group exists: torch.distributed.nn binds ``group.WORLD`` as its
# functions' default argument when first imported. Imported later (torch._dynamo imports it,
# e.g. on a meta-device forward), it keeps the group alive past destroy_process_group, and
# gloo's threads are then torn down by the interpreter's exit: a SIGABRT ("terminate called
# without an active exception"). Builds without distributed support lack it and need no care.
if dist.is_available():
    import torch.distributed.nn  # noqa: F401

from dnas.errors import AgreedError, DnasError, JoinError, user_error_line


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Only the main process writes files and logs."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def init_world(device: str) -> World:
    """Join the process group ``torchrun`` describes in the environment (gloo on CPU, nccl on
    CUDA); without ``WORLD_SIZE`` > 1 this is a 1-process world."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    if dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size(), int(os.environ["LOCAL_RANK"]))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device != "cpu" and torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(local_rank)
    try:
        dist.init_process_group("nccl" if use_cuda else "gloo")
    except (RuntimeError, ValueError) as exc:
        raise JoinError(f"cannot join the torchrun process group: {exc}") from None
    atexit.register(shutdown)  # leave together: a process gone early aborts the others' gloo
    return World(dist.get_rank(), dist.get_world_size(), local_rank)


def in_process_group() -> bool:
    """Whether this process has joined a torchrun process group (and has its threads)."""
    return dist.is_available() and dist.is_initialized()


def device_for(world: World, device: torch.device) -> torch.device:
    """Each process of a CUDA run takes the GPU of its local rank."""
    if world.distributed and device.type == "cuda":
        return torch.device("cuda", world.local_rank)
    return device


def average_gradients(params: list[nn.Parameter]) -> None:
    """All-reduce the mean of the gradients of ``params`` across the world (one flat buffer)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not dist.is_initialized() or not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def broadcast_state(module: nn.Module) -> None:
    """Give every process rank 0's parameters and buffers (start of a run, BN statistics)."""
    if not dist.is_initialized():
        return
    with torch.no_grad():
        for tensor in module.state_dict().values():
            dist.broadcast(tensor, 0)


def collective_device() -> torch.device:
    """Where a tensor for a collective must live: NCCL reduces CUDA tensors only, gloo CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def mean_over_world(values: dict[str, float]) -> dict[str, float]:
    """Each scalar averaged over the processes (epoch losses and costs)."""
    if not dist.is_initialized() or not values:
        return values
    keys = sorted(values)
    flat = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64,
                        device=collective_device())  # fmt: skip
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    return dict(zip(keys, flat.tolist(), strict=True))


def signal_over_world(signum: int | None) -> int | None:
    """The signal any process has received (the highest number), on every process: so all
    stop after the same step, not one at step k and another blocked in step k + 1's
    all-reduce (torchrun signals its processes one by one)."""
    if not dist.is_initialized():
        return signum
    flag = torch.tensor([signum or 0], dtype=torch.int64, device=collective_device())
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return int(flag.item()) or None


def gather_to_main(obj: Any) -> list[Any] | None:
    """Every process's ``obj`` in rank order on rank 0, None on the others (``[obj]`` alone)."""
    if not dist.is_initialized():
        return [obj]
    gathered = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(obj, gathered, dst=0)
    return gathered


def all_gather_object(obj: Any) -> list[Any]:
    """Every process's ``obj`` in rank order, on every process (``[obj]`` alone)."""
    if not dist.is_initialized():
        return [obj]
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def broadcast_object(obj: Any) -> Any:
    """Rank 0's value of ``obj`` on every process."""
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, 0)
    return box[0]


@contextlib.contextmanager
def failing_together() -> Iterator[None]:
    """A block with no collective inside that every process runs to its end: a user error
    (DnasError, OSError, a loader worker's) on any process is raised on every one, so that
    none goes on alone into a collective the others never reach (rank 0 alone takes a run
    directory's lock: the others waited on it for ever). Met alike everywhere, it is raised
    as it is; else as an :class:`AgreedError` naming what each process met. Either is marked
    ``agreed``."""
    failure: DnasError | None = None
    try:
        yield
    except (DnasError, OSError, RuntimeError) as exc:  # RuntimeError: a loader worker's
        line = user_error_line(exc)
        if line is None or not dist.is_initialized():
            raise
        failure = exc if isinstance(exc, DnasError) and line == str(exc) else DnasError(line)
    if not dist.is_initialized():
        return
    said = all_gather_object(None if failure is None else str(failure))
    if failure is not None and all(line == said[0] for line in said):
        failure.agreed = True
        raise failure
    if any(said):
        raise AgreedError(per_rank(said)) from failure


def per_rank(said: list[str | None]) -> str:
    """The processes' errors in one line, each after the ranks that met it."""
    ranks: dict[str, list[str]] = {}
    for rank, line in enumerate(said):
        if line is not None:
            ranks.setdefault(line, []).append(str(rank))
    return "; ".join(f"rank{'s' * (len(r) > 1)} {', '.join(r)}: {line}"
                     for line, r in ranks.items())  # fmt: skip


def wait_for_all() -> None:
    """Every process waits here for the others (one process does not)."""
    if dist.is_initialized():
        dist.barrier()


def shutdown(together: bool = True) -> None:
    """Leave the process group: after a barrier when the command succeeded (a process gone
    early aborts the others' last collective); at once when it failed, since the others may
    be waiting in a collective this process never reaches, and torchrun then stops them."""
    if dist.is_initialized():
        if together:
            with contextlib.suppress(RuntimeError):  # a process that failed late left without
                dist.barrier()  # it; torchrun reports that one, and this one's work is done
        dist.destroy_process_group()


def check_in_sync(module: nn.Module, what: str) -> None:
    """Fail loudly if the processes' parameters have drifted apart (they must stay identical):
    each compares a fixed random projection of all its parameters with rank 0's."""
    if not dist.is_initialized():
        return
    flat = torch.cat([p.detach().reshape(-1).double().cpu() for p in module.parameters()])
    probe = torch.randn(flat.numel(), generator=torch.Generator().manual_seed(0),
                        dtype=torch.float64)  # fmt: skip
    mine = torch.stack([flat @ probe, flat.abs().sum()]).to(collective_device())
    ranks = [torch.zeros_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(ranks, mine)
    if any(not torch.allclose(r, ranks[0], rtol=1e-9, atol=1e-9) for r in ranks):
        raise DnasError(f"{what}: the processes' parameters differ; the run is not data parallel")


class _GlobalBatchNorm(torch.autograd.Function):
    """Batch norm over the global batch: per-channel sums all-reduced in the forward pass, and
    the two gradient sums of the input gradient all-reduced in the backward pass."""

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, eps, momentum):  # noqa: ANN001
        dims = [0, *range(2, x.dim())]
        local = torch.cat([x.sum(dims), (x * x).sum(dims),
                           x.new_tensor([x.numel() / x.shape[1]])])  # fmt: skip
        dist.all_reduce(local)
        c = x.shape[1]
        count = local[-1]
        mean = local[:c] / count
        var = (local[c : 2 * c] / count - mean * mean).clamp_min(0)
        invstd = torch.rsqrt(var + eps)
        shape = [1, c] + [1] * (x.dim() - 2)
        xhat = (x - mean.view(shape)) * invstd.view(shape)
        with torch.no_grad():
            running_mean.mul_(1 - momentum).add_(momentum * mean)
            running_var.mul_(1 - momentum).add_(momentum * var * count / (count - 1).clamp_min(1))
        ctx.save_for_backward(xhat, weight, invstd, count)
        return xhat * weight.view(shape) + bias.view(shape)

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001
        xhat, weight, invstd, count = ctx.saved_tensors
        dims = [0, *range(2, grad.dim())]
        shape = [1, grad.shape[1]] + [1] * (grad.dim() - 2)
        grad_bias = grad.sum(dims)
        grad_weight = (grad * xhat).sum(dims)
        sums = torch.cat([grad_bias, grad_weight])
        dist.all_reduce(sums)
        c = grad.shape[1]
        mean_dy, mean_dy_xhat = sums[:c] / count, sums[c:] / count
        grad_x = (grad - mean_dy.view(shape) - xhat * mean_dy_xhat.view(shape)) * (
            weight * invstd
        ).view(shape)
        return grad_x, grad_weight, grad_bias, None, None, None, None


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics span every process (SyncBatchNorm for CPU/gloo,
    which torch's own does not support); in eval mode it is plain batch norm."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized()):
            return super().forward(x)
        self.num_batches_tracked.add_(1)
        return _GlobalBatchNorm.apply(x, self.weight, self.bias, self.running_mean,
                                      self.running_var, self.eps, self.momentum)  # fmt: skip


def sync_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """Every BatchNorm2d normalises over the global batch: torch's SyncBatchNorm on GPUs,
    :class:`GlobalBatchNorm2d` on CPU. Parameter and buffer names stay as they were."""
    if not dist.is_initialized():
        return module
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm2d and child.affine and child.momentum is not None:
            sync = GlobalBatchNorm2d(child.num_features, child.eps, child.momentum,
                                     child.affine, child.track_running_stats)  # fmt: skip
            sync.load_state_dict(child.state_dict())
            setattr(module, name, sync.to(child.weight.device))
        else:
            sync_batchnorm(child, device)
    return module
