"""The search loop: one loop for every strategy (DARTS, single-path, random search, ...).

Splits the task's training set into a weight split and an architecture split (paper: 80/20,
the validation set is never used during search), then drives the strategy's lifecycle and
writes the run directory: ``config.yaml``, ``log.txt``, ``checkpoints/`` (resume state, the
newest ``checkpoint.keep_last`` kept), ``search.pt`` (the state after the latest epoch, read by
``dnas derive``), ``search.json`` (per-layer op probabilities, the chosen ops, expected cost)
and TensorBoard logs in ``tb/``.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from torch import nn
from torch.utils.data import Subset
from torch.utils.tensorboard import SummaryWriter

from dnas.checkpoint import Checkpointer, check_resumable, save_atomic
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
)
from dnas.engine.runtime import to_device as move
from dnas.engine.sampling import epoch_batches, make_loader, stream, train_loader
from dnas.errors import ConfigError, DnasError
from dnas.files import write_text_atomic
from dnas.nn.network import Network
from dnas.nn.remap import remap_into
from dnas.registry import STRATEGIES
from dnas.schema import to_dict
from dnas.search.cost_model import CostTable, get_cost_model
from dnas.search.strategy import Strategy
from dnas.space.choices import decisiveness, entropies
from dnas.task import build_space, build_task

KIND = "dnas-search"


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


def check_target(exp: Experiment, table: CostTable) -> None:
    """A budget target must lie within the space's cost range, else no net can meet it."""
    target, (low, high) = exp.cost_model.target, table.cost_range()
    if exp.cost_model.form == "budget" and not low <= target <= high:
        raise ConfigError(exp.source, "cost_model.target",
                          f"{target:g} {table.unit} is outside this space's range "
                          f"{low:.4g}..{high:.4g} {table.unit} at input "
                          f"{exp.input_hw[0]}x{exp.input_hw[1]}")  # fmt: skip


def format_stats(stats: dict[str, float]) -> str:
    return "  ".join(f"{k} {v:.5g}" for k, v in stats.items())


@dataclass
class Position:
    """Where a search is: ``step`` steps of epoch ``epoch`` done, ``global_step`` in all, and
    ``arch_batches`` architecture batches consumed (the architecture split's stream)."""

    epoch: int = 0
    step: int = 0
    global_step: int = 0
    arch_batches: int = 0


class SearchRun:
    """One search in ``out_dir``: set-up, optional resume, the epoch loop, the result."""

    def __init__(self, exp: Experiment, out_dir: Path, report: Reporter,
                 world: distributed.World) -> None:  # fmt: skip
        self.exp, self.out_dir, self.report, self.world = exp, out_dir, report, world
        seed_everything(exp.seed)
        self.task = build_task(exp)
        self.space = build_space(exp.space, self.task, exp)
        if self.space.is_fixed:
            raise ConfigError(exp.source, "space", f"{self.space.source} has no searchable layer")
        self.device = distributed.device_for(world, pick_device(exp.device))
        self.amp = Amp(self.device, exp.precision, exp.channels_last)
        self.amp.sync_grads = world.distributed
        self.strategy = build_strategy(exp, self.amp)
        try:
            cost_model = get_cost_model(exp.cost_model.type, exp.cost_model)
        except DnasError as exc:
            raise ConfigError(exp.source, "cost_model.type", str(exc)) from None
        self.table = cost_model.table(self.space, exp.input_hw, self.task.num_outputs)
        check_target(exp, self.table)
        self.make_loaders()
        network = Network(self.space, self.task.num_outputs)
        if exp.remap_from:
            mapped = remap_into(network, Path(exp.remap_from))
            report.line(f"remapped {len(mapped)} convolutions from {exp.remap_from}")
        self.strategy.prepare = self.prepare
        self.strategy.adapt_search_space(self.prepare(network.to(self.device)), self.task,
                                         self.table, self.device)  # fmt: skip
        self.position = Position()
        self.sums: dict[str, float] = {}  # the epoch's stats so far, and how many arch steps
        self.arch_steps = 0
        self.checkpoints = Checkpointer(out_dir / "checkpoints", exp.checkpoint.keep_last,
                                        report.line)  # fmt: skip

    def make_loaders(self) -> None:
        exp, world = self.exp, self.world
        train = self.task.dataset("train", augment=True, seed=exp.seed)
        plain = self.task.dataset("train", augment=False, seed=exp.seed)
        self.w_idx, self.a_idx = split_indices(len(train), exp.search.arch_fraction, exp.seed)
        bs, workers = exp.search.batch_size, exp.workers
        self.weight_loader = train_loader(train, self.w_idx, bs, workers, exp.seed,
                                          world.rank, world.size)  # fmt: skip
        self.arch_loader = train_loader(train, self.a_idx, bs, workers, exp.seed + 1,
                                        world.rank, world.size)  # fmt: skip
        self.score_loader = make_loader(Subset(plain, self.a_idx), bs, workers)
        per_epoch = len(self.weight_loader)
        self.steps = min(per_epoch, exp.search.steps_per_epoch or per_epoch)

    # -- checkpoints -------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        return {
            "kind": KIND,
            "epoch": self.position.epoch,  # epochs finished when ``position.step`` is 0
            "position": asdict(self.position),
            "sums": dict(self.sums),
            "arch_steps": self.arch_steps,
            "space": self.space.to_dict(),
            "arch_probs": self.strategy.arch_probs(),
            "choices": self.strategy.get_final_architecture(),
            "strategy": self.strategy.get_checkpointables(),
            "scaler": self.amp.scaler.state_dict(),
            "rng": rng_state(),
            "config": to_dict(self.exp),
            "config_hash": config_hash(self.exp),
        }

    def save(self, end_of_epoch: bool) -> None:
        if not self.world.main:
            return
        state = self.state()
        self.checkpoints.save(state, self.position.global_step)
        if end_of_epoch:
            save_atomic(state, self.out_dir / "search.pt")

    def resume(self, force: bool) -> None:
        """Continue from the newest readable checkpoint (an older one if the newest is broken)."""
        found = self.checkpoints.latest(KIND)
        if found is None:
            raise DnasError(f"{self.out_dir / 'checkpoints'}: no search checkpoint to resume from")
        state, path = found
        check_resumable(state, config_hash(self.exp), path, force)
        self.position = Position(**state["position"])
        if self.position.step:  # mid-epoch: the epoch had begun when the state was saved
            self.strategy.new_epoch(self.position.epoch)
        self.strategy.load_checkpointables(state["strategy"])
        self.amp.scaler.load_state_dict(state["scaler"])
        self.sums, self.arch_steps = dict(state["sums"]), state["arch_steps"]
        set_rng_state(state["rng"])
        p = self.position
        self.report.line(f"resumed from {path}: epoch {p.epoch + 1}, step {p.step}")

    # -- the loop ----------------------------------------------------------------------------

    def run(self) -> dict:
        exp, strategy, report = self.exp, self.strategy, self.report
        writer = SummaryWriter(str(self.out_dir / "tb"), purge_step=self.position.epoch + 1) \
            if self.world.main else None  # fmt: skip
        report.line(
            f"search: {self.space.name}, {len(self.space.searchable_layers)} searchable layers, "
            f"strategy {exp.search.strategy}, {strategy.num_epochs} epochs x {self.steps} steps, "
            f"{len(self.w_idx)}/{len(self.a_idx)} weight/arch items, device {self.device}"
            + (f", {self.world.size} processes" if self.world.distributed else "")
        )
        arch_batches = stream(self.arch_loader, self.position.arch_batches)
        every = exp.checkpoint.every_steps
        for epoch in range(self.position.epoch, strategy.num_epochs):
            started = time.perf_counter()
            if self.position.step == 0:
                strategy.new_epoch(epoch)
                self.sums, self.arch_steps = {}, 0
            start = self.position.step
            batches = epoch_batches(self.weight_loader, epoch, start)
            for _, batch in self.report.steps(
                zip(range(start, self.steps), batches, strict=False), self.steps, start,
                f"epoch {epoch + 1}/{strategy.num_epochs}", self.running_stats,
            ):  # fmt: skip
                self.one_step(batch, arch_batches)
                if every and self.position.global_step % every == 0 \
                        and self.position.step < self.steps:  # fmt: skip
                    self.save(end_of_epoch=False)
            self.end_epoch(epoch, writer, time.perf_counter() - started)
        if writer is not None:
            writer.close()
        return self.result()

    def one_step(self, batch: dict, arch_batches) -> None:
        val = None
        if self.strategy.wants_arch_batch():
            val = move(next(arch_batches), self.device)
            self.position.arch_batches += 1
            self.arch_steps += 1
        stats = self.strategy.step(move(batch, self.device), val)
        for key, value in stats.items():
            value = check_finite(value, key, self.position.global_step)
            self.sums[key] = self.sums.get(key, 0.0) + value
        self.position.step += 1
        self.position.global_step += 1

    def running_stats(self) -> dict[str, float]:
        return {"loss": self.sums.get("train/loss", 0.0) / max(self.position.step, 1)}

    def epoch_stats(self) -> dict[str, float]:
        """Means over the epoch's steps; architecture-step stats over the steps that had one."""
        stats = {
            key: total / max(self.arch_steps if key.startswith("arch/") else self.position.step, 1)
            for key, total in self.sums.items()
        }
        return distributed.mean_over_world(stats)

    def prepare(self, network: nn.Module) -> nn.Module:
        """A new network of this run, already on its device, made ready for its processes:
        batch norm over the global batch (``sync_batchnorm``) and rank 0's initial weights
        everywhere (NCCL broadcasts device tensors)."""
        if self.exp.sync_batchnorm:
            network = distributed.sync_batchnorm(network, self.device)
        distributed.broadcast_state(network)
        return network

    def end_epoch(self, epoch: int, writer: SummaryWriter | None, seconds: float) -> None:
        stats = self.epoch_stats()
        for model in self.strategy.trained_models():  # rank 0's BN statistics everywhere
            distributed.broadcast_state(model)
        stats.update(self.strategy.end_epoch(epoch, self.score_loader))
        if writer is not None:
            for key, value in stats.items():
                writer.add_scalar(key, value, epoch + 1)
            self.log_pictures(writer, epoch + 1)
        total = self.strategy.num_epochs
        self.report.line(f"epoch {epoch + 1}/{total}  {format_stats(stats)}  "
                         f"({seconds:.0f} s, {eta_text(epoch + 1, total, seconds)})")  # fmt: skip
        self.position = Position(epoch + 1, 0, self.position.global_step,
                                 self.position.arch_batches)  # fmt: skip
        self.save(end_of_epoch=True)

    def log_pictures(self, writer: SummaryWriter, epoch: int) -> None:
        """Per-layer op entropy, the op-probability heat map and the argmax architecture."""
        from dnas.vis import plot

        probs = self.strategy.arch_probs()
        for layer, value in entropies(probs).items():
            writer.add_scalar(f"entropy/{layer}", value, epoch)
        figure = plot.op_probability_figure(probs, plot.candidates_of(self.space), epoch=epoch)
        writer.add_image("search/op_probabilities", plot.figure_to_array(figure), epoch,
                         dataformats="HWC")  # fmt: skip
        arch = self.space.with_choices(self.strategy.get_final_architecture())
        writer.add_image("search/architecture",
                         plot.figure_to_array(plot.architecture_figure(arch)), epoch,
                         dataformats="HWC")  # fmt: skip

    def result(self) -> dict:
        for model in self.strategy.trained_models():
            distributed.check_in_sync(model, "search")
        choices, probs = self.strategy.get_final_architecture(), self.strategy.arch_probs()
        argmax = self.strategy.argmax_architecture()
        cost = self.exp.cost_model
        result = {
            "space": self.space.name,
            "strategy": self.exp.search.strategy,
            "cost_metric": self.table.metric,
            "cost_unit": self.table.unit,
            "cost_form": cost.form,
            "target": cost.target,
            "final_cost": self.table.of_choices(choices),
            "argmax_cost": self.table.of_choices(argmax),
            "projected_layers": sum(choices[n] != argmax[n] for n in choices),
            "decisiveness": decisiveness(probs),
            "choices": choices,
            "arch_probs": probs,
            "checkpoint": str(self.out_dir / "search.pt"),
        }
        result.update(self.strategy.result_extras())
        self.report.line(summary_line(result))
        if self.world.main:
            write_text_atomic(self.out_dir / "search.json", json.dumps(result, indent=1))
        return result


def summary_line(result: dict) -> str:
    """The search's closing figures: derived cost (against the target) and decisiveness."""
    unit, cost = result["cost_unit"], result["final_cost"]
    text = f"derived architecture cost: {cost:.4g} {unit}"
    if result["target"] is not None:
        off = 100 * (cost / result["target"] - 1)
        text += f" (target {result['target']:.4g} {unit}, {off:+.1f} %"
        if moved := result["projected_layers"]:
            text += f"; argmax {result['argmax_cost']:.4g}, {moved} layer{'s' * (moved > 1)} "
            text += "moved into the band"
        text += ")"
    return text + f"; decisiveness (mean top op probability) {result['decisiveness']:.3f}"


def run_search(exp: Experiment, out_dir: Path | str, report: Reporter | None = None,
               resume: bool = False, force: bool = False) -> dict:  # fmt: skip
    """Run (or with ``resume`` continue) a whole search into ``out_dir``; returns the content
    of ``search.json``. Under ``torchrun`` every process calls this; only rank 0 writes."""
    out_dir = Path(out_dir)
    world, report = start_run(exp.device, out_dir, report)
    run = SearchRun(exp, out_dir, report, world)
    if resume:
        run.resume(force)
    elif world.main:
        run.checkpoints.clear()
        write_text_atomic(out_dir / "config.yaml", yaml.safe_dump(to_dict(exp), sort_keys=False))
    return run.run()
