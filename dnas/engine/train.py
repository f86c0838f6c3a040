"""Training and evaluating a fixed architecture (paper Sec. 4: Adam, step schedule).

The run directory holds ``config.yaml``, ``log.txt``, ``checkpoints/`` (resume state, the newest
``checkpoint.keep_last`` kept), ``last.pt`` (written every epoch), ``best.pt`` (best validation
score), ``model.pt`` (final weights), ``results.json`` and TensorBoard ``tb/``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn
from torch.utils.data import DataLoader
from torch.utils.tensorboard import SummaryWriter

from dnas import checkpoint
from dnas.config import Experiment, config_hash
from dnas.engine import distributed
from dnas.engine.progress import Reporter, eta_text, start_run
from dnas.engine.runtime import (
    Amp,
    check_finite,
    pick_device,
    rng_state,
    seed_everything,
    set_rng_state,
    to_device,
    weight_step,
)
from dnas.engine.sampling import epoch_batches, make_loader, train_loader
from dnas.errors import ConfigError, DnasError
from dnas.files import write_text_atomic
from dnas.nn.network import Network
from dnas.nn.profile import count_macs, count_params, op_costs
from dnas.nn.remap import remap_into
from dnas.schema import to_dict
from dnas.space.graph import SearchSpace
from dnas.task import Metrics, Task, build_space, build_task

KIND = "dnas-train"


def build_fixed(exp: Experiment, arch_ref: str, task: Task) -> tuple[SearchSpace, Network]:
    """The architecture and its network; sizes are checked first on the meta device, so an
    absurd input size or width is a one-line error, not an attempt to allocate it."""
    arch = build_space(arch_ref, task, exp)
    if not arch.is_fixed:
        n = len(arch.searchable_layers)
        raise ConfigError(
            arch.source,
            "stages",
            f"{n} layers still have several candidate ops; "
            "this is a search space, derive an architecture first (dnas derive)",
        )
    try:
        op_costs(arch, exp.input_hw, task.num_outputs)
    except DnasError as exc:
        raise ConfigError(exp.source, "input_size", str(exc)) from None
    return arch, Network(arch, task.num_outputs)


def load_weights(net: Network, path: Path) -> None:
    """Load a state_dict or dnas checkpoint into ``net``; a mismatch is a one-line error."""
    try:
        net.load_state_dict(checkpoint.state_dict_of(checkpoint.load(path), path))
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise DnasError(f"{path}: weights do not fit {net.space.source} ({first})") from None


def model_size(net: Network, input_hw: tuple[int, int]) -> dict[str, int]:
    device = next(net.parameters()).device
    return {
        "params": count_params(net),
        "macs": count_macs(net, torch.zeros(1, net.space.in_channels, *input_hw, device=device)),
    }


@dataclass
class TrainProgress:
    """Where a training run is: ``step`` steps of epoch ``epoch`` done, the epoch's summed
    loss so far, and the best validation score yet (None before the first evaluation)."""

    epoch: int = 0
    step: int = 0
    global_step: int = 0
    loss_sum: float = 0.0
    best_score: float | None = None


class TrainRun:
    """The state a training checkpoint holds and restores."""

    def __init__(self, net: Network, opt: torch.optim.Optimizer, sched: Any, amp: Amp,
                 exp: Experiment, arch: SearchSpace) -> None:  # fmt: skip
        self.net, self.opt, self.sched, self.amp = net, opt, sched, amp
        self.exp, self.arch = exp, arch
        self.progress = TrainProgress()

    def state(self) -> dict[str, Any]:
        p = self.progress
        return {
            "kind": KIND, "epoch": p.epoch, "progress": vars(p).copy(),
            "model": self.net.state_dict(), "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict(), "scaler": self.amp.scaler.state_dict(),
            "rng": rng_state(), "arch": self.arch.to_dict(), "config": to_dict(self.exp),
            "config_hash": config_hash(self.exp),
        }  # fmt: skip

    def restore(self, ckpts: checkpoint.Checkpointer, force: bool, report: Reporter) -> None:
        found = ckpts.latest(KIND)
        if found is None:
            raise DnasError(f"{ckpts.directory}: no training checkpoint to resume from")
        state, path = found
        checkpoint.check_resumable(state, config_hash(self.exp), path, force)
        self.net.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        self.amp.scaler.load_state_dict(state["scaler"])
        self.progress = TrainProgress(**state["progress"])
        set_rng_state(state["rng"])
        p = self.progress
        report.line(f"resumed from {path}: epoch {p.epoch + 1}, step {p.step}")


def evaluate_on_main(task: Task, net: Network, loader: DataLoader, device: torch.device,
                     world: distributed.World) -> Metrics:  # fmt: skip
    """Rank 0 scores the whole validation split; every process gets its metrics."""
    metrics = task.evaluate(net, loader, device, None) if world.main else None
    return distributed.broadcast_object(metrics)


def run_train(
    exp: Experiment,
    arch_ref: str,
    out_dir: Path | str,
    init: Path | None = None,
    report: Reporter | None = None,
    resume: bool = False,
    force: bool = False,
) -> Metrics:
    """Train ``arch_ref`` into ``out_dir`` (with ``resume``: continue the run there); returns
    the last evaluation. Under ``torchrun`` every process calls this; only rank 0 writes."""
    out_dir = Path(out_dir)
    world, report = start_run(exp.device, out_dir, report)
    seed_everything(exp.seed)
    task = build_task(exp)
    arch, net = build_fixed(exp, arch_ref, task)
    if init is not None:
        load_weights(net, init)
    elif exp.remap_from:
        mapped = remap_into(net, Path(exp.remap_from))
        report.line(f"remapped {len(mapped)} convolutions from {exp.remap_from}")
    device = distributed.device_for(world, pick_device(exp.device))
    amp = Amp(device, exp.precision, exp.channels_last)
    amp.model(net.to(device))
    if exp.sync_batchnorm:
        distributed.sync_batchnorm(net, device)
    distributed.broadcast_state(net)
    cfg = exp.train
    params = net.weight_parameters()
    opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=cfg.milestones, gamma=cfg.gamma)
    run = TrainRun(net, opt, sched, amp, exp, arch)
    ckpts = checkpoint.Checkpointer(out_dir / "checkpoints", exp.checkpoint.keep_last,
                                    report.line)  # fmt: skip
    if resume:
        run.restore(ckpts, force, report)
    elif world.main:
        ckpts.clear()
        write_text_atomic(out_dir / "config.yaml", yaml.safe_dump(to_dict(exp), sort_keys=False))
    train_set = task.dataset("train", augment=True, seed=exp.seed)
    loader = train_loader(train_set, range(len(train_set)), cfg.batch_size, exp.workers,
                          exp.seed, world.rank, world.size)  # fmt: skip
    val_loader = make_loader(task.dataset("val", augment=False), cfg.batch_size, exp.workers)
    steps = min(len(loader), cfg.steps_per_epoch or len(loader))
    model: nn.Module = net
    if world.distributed:
        ids = [device.index] if device.type == "cuda" else None
        model = nn.parallel.DistributedDataParallel(net, device_ids=ids)
    p = run.progress
    writer = SummaryWriter(str(out_dir / "tb"), purge_step=p.epoch + 1) if world.main else None
    report.line(f"train: {arch.name}, {cfg.epochs} epochs x {steps} steps, device {device}"
                + (f", {world.size} processes" if world.distributed else ""))  # fmt: skip

    def save(name: str | None = None) -> None:
        if world.main:
            state = run.state()
            ckpts.save(state, p.global_step)
            if name:
                checkpoint.save_atomic(state, out_dir / name)

    metrics: Metrics | None = None
    for epoch in range(p.epoch, cfg.epochs):
        started = time.perf_counter()
        batches = zip(range(p.step, steps), epoch_batches(loader, epoch, p.step), strict=False)
        for _, batch in report.steps(batches, steps, p.step, f"epoch {epoch + 1}/{cfg.epochs}",
                                     lambda: {"loss": p.loss_sum / max(p.step, 1)}):  # fmt: skip
            loss = weight_step(model, to_device(batch, device), task.loss, opt, params, amp=amp)
            p.loss_sum += check_finite(loss, "training loss", p.global_step)
            p.step, p.global_step = p.step + 1, p.global_step + 1
            every = exp.checkpoint.every_steps
            if every and p.global_step % every == 0 and p.step < steps:
                save()
        mean_loss = distributed.mean_over_world({"loss": p.loss_sum / steps})["loss"]
        if writer is not None:
            writer.add_scalar("train/loss", mean_loss, epoch + 1)
            writer.add_scalar("lr", opt.param_groups[0]["lr"], epoch + 1)
        sched.step()
        p.epoch, p.step, p.loss_sum = epoch + 1, 0, 0.0
        line = f"epoch {epoch + 1}/{cfg.epochs}  train/loss {mean_loss:.5g}"
        best_now = False
        if (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs:
            metrics = evaluate_on_main(task, net, val_loader, device, world)
            if writer is not None:
                for key, value in metrics.values.items():
                    writer.add_scalar(f"val/{key}", value, epoch + 1)
            line += f"  val/{metrics.primary} {metrics.score:.2f}"
            best_now = p.best_score is None or metrics.score > p.best_score
            p.best_score = metrics.score if best_now else p.best_score
        if best_now:
            save("best.pt")
        save("last.pt")
        seconds = time.perf_counter() - started
        report.line(f"{line}  ({seconds:.0f} s, {eta_text(epoch + 1, cfg.epochs, seconds)})")
    if writer is not None:
        writer.close()
    distributed.check_in_sync(net, "train")
    if world.main:
        checkpoint.save_atomic(net.state_dict(), out_dir / "model.pt")
    if metrics is None:  # a resumed run that had already finished: score what it holds
        metrics = evaluate_on_main(task, net, val_loader, device, world)
    return metrics


def run_eval(
    exp: Experiment, arch_ref: str, weights: Path, out_dir: Path, save_vis: int = 0
) -> dict:
    """Evaluate trained weights on the validation split; writes ``results.json`` into out_dir.
    Under ``torchrun`` rank 0 evaluates and every process returns its results."""
    world = distributed.init_world(exp.device)
    results = _evaluate(exp, arch_ref, weights, out_dir, save_vis) if world.main else None
    return distributed.broadcast_object(results)


def _evaluate(exp: Experiment, arch_ref: str, weights: Path, out_dir: Path, save_vis: int) -> dict:
    task = build_task(exp)
    arch, net = build_fixed(exp, arch_ref, task)
    load_weights(net, weights)
    device = pick_device(exp.device)
    net.to(device)
    size = model_size(net, exp.input_hw)
    loader = make_loader(task.dataset("val", augment=False), exp.train.batch_size, exp.workers)
    metrics = task.evaluate(net, loader, device, out_dir, save_vis)
    results = {
        **metrics.values,  # the task's metric table, flat
        "primary_metric": metrics.primary,
        "architecture": str(Path(arch_ref).resolve()) if Path(arch_ref).exists() else arch_ref,
        "architecture_name": arch.name,
        "params": size["params"],
        "macs": size["macs"],
        "input_size": list(exp.input_hw),
        "weights": str(weights),
        "files": metrics.files,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out_dir / "results.json", json.dumps(results, indent=1))
    results["table"] = metrics.table
    return results
