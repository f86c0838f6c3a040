"""Training and evaluating a fixed architecture (paper Sec. 4: Adam, step schedule).

The run directory holds ``config.yaml``, ``last.pt`` (written every epoch), ``best.pt`` (best
validation score), ``model.pt`` (final weights), ``results.json`` and TensorBoard ``tb/``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import torch
import yaml
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from dnas import checkpoint
from dnas.config import Experiment
from dnas.errors import ConfigError, DnasError
from dnas.network import Network
from dnas.profile import count_macs, count_params
from dnas.remap import remap_into
from dnas.runtime import (
    Amp,
    check_finite,
    make_loader,
    pick_device,
    seed_everything,
    to_device,
    weight_step,
)
from dnas.schema import to_dict
from dnas.search_space import SearchSpace
from dnas.task import Metrics, Task, build_space, build_task


def build_fixed(exp: Experiment, arch_ref: str, task: Task) -> tuple[SearchSpace, Network]:
    arch = build_space(arch_ref, task, exp)
    if not arch.is_fixed:
        n = len(arch.searchable_layers)
        raise ConfigError(
            arch.source,
            "stages",
            f"{n} layers still have several candidate ops; "
            "this is a search space, derive an architecture first (dnas derive)",
        )
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


def run_train(
    exp: Experiment,
    arch_ref: str,
    out_dir: Path,
    init: Path | None = None,
    log: Callable[[str], None] = print,
) -> Metrics:
    seed_everything(exp.seed)
    task = build_task(exp)
    arch, net = build_fixed(exp, arch_ref, task)
    if init is not None:
        load_weights(net, init)
    elif exp.remap_from:
        mapped = remap_into(net, Path(exp.remap_from))
        log(f"remapped {len(mapped)} convolutions from {exp.remap_from}")
    device = pick_device(exp.device)
    amp = Amp(device, exp.precision, exp.channels_last)
    amp.model(net.to(device))
    cfg = exp.train
    train_loader = make_loader(
        task.dataset("train", augment=True, seed=exp.seed),
        cfg.batch_size,
        True,
        exp.workers,
        exp.seed,
    )
    val_loader = make_loader(
        task.dataset("val", augment=False), cfg.batch_size, False, exp.workers, exp.seed
    )
    params = net.weight_parameters()
    opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=cfg.milestones, gamma=cfg.gamma)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(exp), sort_keys=False))
    writer = SummaryWriter(str(out_dir / "tb"))
    steps = min(len(train_loader), cfg.steps_per_epoch or len(train_loader))
    log(f"train: {arch.name}, {cfg.epochs} epochs x {steps} steps, device {device}")

    best: Metrics | None = None
    metrics: Metrics | None = None
    step = 0
    for epoch in range(cfg.epochs):
        started = time.perf_counter()
        total = 0.0
        batches = zip(range(steps), train_loader, strict=False)
        for _, batch in tqdm(
            batches, total=steps, desc=f"epoch {epoch + 1}", leave=False, disable=None
        ):
            loss = weight_step(net, to_device(batch, device), task.loss, opt, params, amp=amp)
            total += check_finite(loss, "training loss", step)
            step += 1
        writer.add_scalar("train/loss", total / steps, epoch + 1)
        writer.add_scalar("lr", opt.param_groups[0]["lr"], epoch + 1)
        sched.step()
        line = f"epoch {epoch + 1}/{cfg.epochs}  train/loss {total / steps:.5g}"
        state = {"kind": "dnas-train", "epoch": epoch + 1, "model": net.state_dict(),
                 "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                 "arch": arch.to_dict(), "config": to_dict(exp)}  # fmt: skip
        if (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs:
            metrics = task.evaluate(net, val_loader, device, None)
            for key, value in metrics.values.items():
                writer.add_scalar(f"val/{key}", value, epoch + 1)
            line += f"  val/{metrics.primary} {metrics.score:.2f}"
            if best is None or metrics.score > best.score:
                best = metrics
                checkpoint.save_atomic(state, out_dir / "best.pt")
        checkpoint.save_atomic(state, out_dir / "last.pt")
        log(f"{line}  ({time.perf_counter() - started:.0f} s)")
    writer.close()
    checkpoint.save_atomic(net.state_dict(), out_dir / "model.pt")
    assert metrics is not None
    return metrics


def run_eval(
    exp: Experiment, arch_ref: str, weights: Path, out_dir: Path, save_vis: int = 0
) -> dict:
    """Evaluate trained weights on the validation split; writes ``results.json`` into out_dir."""
    task = build_task(exp)
    arch, net = build_fixed(exp, arch_ref, task)
    load_weights(net, weights)
    device = pick_device(exp.device)
    net.to(device)
    size = model_size(net, exp.input_hw)
    loader = make_loader(
        task.dataset("val", augment=False), exp.train.batch_size, False, exp.workers, exp.seed
    )
    metrics = task.evaluate(net, loader, device, out_dir, save_vis)
    results = {
        **metrics.values,  # the task's metric table, flat (pose: Head .. Ankle, Mean, Mean@0.1)
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
    (out_dir / "results.json").write_text(json.dumps(results, indent=1))
    results["table"] = metrics.table
    return results
