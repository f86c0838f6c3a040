"""The search loop: one loop for every strategy (DARTS, random search, ...).

Splits the task's training set into a weight split and an architecture split (paper: 80/20,
the validation set is never used during search), then drives the strategy's lifecycle and
writes the run directory: ``config.yaml``, ``search.pt`` (checkpoint), ``search.json``
(per-layer op probabilities, the chosen ops, expected cost) and TensorBoard scalars in ``tb/``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import yaml
from torch.utils.data import Subset
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from dnas.checkpoint import save_atomic
from dnas.config import Experiment
from dnas.cost_model import get_cost_model
from dnas.errors import ConfigError, DnasError
from dnas.network import Network
from dnas.registry import STRATEGIES
from dnas.remap import remap_into
from dnas.runtime import (
    Amp,
    check_finite,
    forever,
    make_loader,
    pick_device,
    seed_everything,
    to_device,
)
from dnas.schema import to_dict
from dnas.strategy import Strategy
from dnas.task import build_space, build_task


def split_indices(n: int, arch_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """A seeded random (weights, architecture) split of ``n`` training items."""
    order = np.random.default_rng(seed).permutation(n)
    n_arch = max(1, round(arch_fraction * n))
    if n - n_arch < 1:
        raise DnasError(f"training set has {n} items: too few to split {arch_fraction:.0%}")
    return sorted(order[n_arch:].tolist()), sorted(order[:n_arch].tolist())


def build_strategy(exp: Experiment, amp: Amp) -> Strategy:
    try:
        cls = STRATEGIES.get(exp.search.strategy)
    except DnasError as exc:
        raise ConfigError(exp.source, "search.strategy", str(exc)) from None
    return cls(exp.search, exp.cost_model, amp)


def format_stats(stats: dict[str, float]) -> str:
    return "  ".join(f"{k} {v:.5g}" for k, v in stats.items())


def run_search(exp: Experiment, out_dir: Path, log: Callable[[str], None] = print) -> dict:
    """Run a whole search into ``out_dir``; returns the content of ``search.json``."""
    seed_everything(exp.seed)
    task = build_task(exp)
    space = build_space(exp.space, task, exp)
    if space.is_fixed:
        raise ConfigError(exp.source, "space", f"{space.source} has no searchable layer")
    device = pick_device(exp.device)
    strategy = build_strategy(exp, Amp(device, exp.precision, exp.channels_last))
    try:
        cost_model = get_cost_model(exp.cost_model.type, exp.cost_model)
    except DnasError as exc:
        raise ConfigError(exp.source, "cost_model.type", str(exc)) from None
    table = cost_model.table(space, exp.input_hw, task.num_outputs)

    train_full = task.dataset("train", augment=True, seed=exp.seed)
    plain_full = task.dataset("train", augment=False, seed=exp.seed)
    w_idx, a_idx = split_indices(len(train_full), exp.search.arch_fraction, exp.seed)
    bs, workers = exp.search.batch_size, exp.workers
    weight_loader = make_loader(Subset(train_full, w_idx), bs, True, workers, exp.seed)
    arch_loader = make_loader(Subset(train_full, a_idx), bs, True, workers, exp.seed + 1)
    score_loader = make_loader(Subset(plain_full, a_idx), bs, False, workers, exp.seed)

    network = Network(space, task.num_outputs)
    if exp.remap_from:
        mapped = remap_into(network, Path(exp.remap_from))
        log(f"remapped {len(mapped)} convolutions from {exp.remap_from}")
    network.to(device)
    strategy.adapt_search_space(network, task, table, device)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(exp), sort_keys=False))
    writer = SummaryWriter(str(out_dir / "tb"))
    steps = min(len(weight_loader), exp.search.steps_per_epoch or len(weight_loader))
    log(f"search: {space.name}, {len(space.searchable_layers)} searchable layers, strategy "
        f"{exp.search.strategy}, {strategy.num_epochs} epochs x {steps} steps, "
        f"{len(w_idx)}/{len(a_idx)} weight/arch items, device {device}")  # fmt: skip

    arch_batches = forever(arch_loader)
    global_step = 0
    for epoch in range(strategy.num_epochs):
        started = time.perf_counter()
        strategy.new_epoch(epoch)
        sums: dict[str, float] = {}
        batches = zip(range(steps), weight_loader, strict=False)
        for _, batch in tqdm(
            batches, total=steps, desc=f"epoch {epoch + 1}", leave=False, disable=None
        ):
            stats = strategy.step(to_device(batch, device), to_device(next(arch_batches), device))
            for key, value in stats.items():
                sums[key] = sums.get(key, 0.0) + check_finite(value, key, global_step)
            global_step += 1
        epoch_stats = {k: v / steps for k, v in sums.items()}
        epoch_stats.update(strategy.end_epoch(epoch, score_loader))
        for key, value in epoch_stats.items():
            writer.add_scalar(key, value, epoch + 1)
        elapsed = time.perf_counter() - started
        epoch_stats["time/epoch_s"] = elapsed
        log(f"epoch {epoch + 1}/{strategy.num_epochs}  {format_stats(epoch_stats)}")
        save_atomic(
            {
                "kind": "dnas-search",
                "epoch": epoch + 1,
                "space": space.to_dict(),
                "arch_probs": strategy.arch_probs(),
                "strategy": strategy.get_checkpointables(),
                "config": to_dict(exp),
            },
            out_dir / "search.pt",
        )
    writer.close()

    choices = strategy.get_final_architecture()
    result = {
        "space": space.name,
        "strategy": exp.search.strategy,
        "cost_metric": table.metric,
        "cost_unit": table.unit,
        "final_cost": table.of_choices(choices),
        "choices": choices,
        "arch_probs": strategy.arch_probs(),
        "checkpoint": str(out_dir / "search.pt"),
    }
    (out_dir / "search.json").write_text(json.dumps(result, indent=1))
    return result
