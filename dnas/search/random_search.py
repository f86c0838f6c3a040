"""Random-search baseline (paper Table 3): sample architectures, short-train each, keep the best.

Each sampled architecture (uniform per layer, optionally rejected above a cost budget) is built
from scratch as a fixed net, trained ``epochs_per_arch`` epochs on the weight split with the
search's weight optimiser, and scored by its task loss on the architecture split (lower is
better).
By default the baseline gets the compute of the DARTS search the same config describes
(:func:`matched_epochs`), the "same total cost" comparison of the paper's Table 3.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from dnas.config import MAX_EPOCHS, MAX_STEPS, SearchConfig
from dnas.engine.runtime import (
    load_optimizer_state,
    search_weight_optimizer,
    to_device,
    weight_step,
)
from dnas.errors import DnasError
from dnas.nn.network import Network
from dnas.registry import STRATEGIES
from dnas.search.budget import sample_within
from dnas.search.cost_model import CostTable
from dnas.search.strategy import Strategy
from dnas.space.choices import uniform_choices
from dnas.task import Task


@dataclass
class RandomSearchOptions:
    """``search.random``: N architectures, each short-trained, best kept.
    ``epochs_per_arch: null`` gives the baseline the compute of the configured DARTS search
    (:func:`matched_epochs`), the comparison Table 3 makes."""

    samples: int = field(default=50, metadata={"min": 1, "max": MAX_EPOCHS})
    epochs_per_arch: int | None = field(default=None, metadata={"min": 1, "max": MAX_EPOCHS})
    budget: float | None = field(default=None, metadata={"min": 0.0})
    max_tries: int = field(default=10000, metadata={"min": 1, "max": MAX_STEPS})


@torch.no_grad()
def mean_loss(
    model: torch.nn.Module, task: Task, loader: DataLoader, device: torch.device
) -> float:
    model.eval()
    total, count = 0.0, 0
    for batch in loader:
        batch = to_device(batch, device)
        n = len(batch["input"])
        total += float(task.loss(model(batch["input"]), batch)) * n
        count += n
    return total / max(count, 1)


def matched_epochs(cfg: SearchConfig, table: CostTable, samples: int) -> int:
    """Epochs per sampled net that spend what the configured DARTS search spends, in units of
    the cost table: each DARTS epoch runs the super net (every candidate, cost
    ``fixed + sum_l sum_o c_lo``) once per weight batch, plus once per ``arch_every`` weight
    batches in the architecture epochs; a sampled net costs the uniform expectation; the
    budget is shared by ``samples`` nets."""
    supernet = table.fixed + sum(sum(ops.values()) for ops in table.layers.values())
    passes = cfg.warmup_epochs + cfg.epochs * (1 + 1 / cfg.arch_every)
    return max(1, round(passes * supernet / table.uniform_cost() / samples))


@STRATEGIES.register("random")
class RandomSearchStrategy(Strategy):
    Options, options_key = RandomSearchOptions, "random"

    def adapt_search_space(
        self, network: Network, task: Task, table: CostTable, device: torch.device
    ) -> None:
        self.network, self.task, self.table, self.device = network, task, table, device
        self.layers = network.space.searchable_layers
        self.rng = np.random.default_rng(int(torch.initial_seed()) % 2**32)
        self.history: list[dict[str, Any]] = []
        self.best: dict[str, Any] | None = None
        self.choices: dict[str, str] = {}
        opts = self.options
        self.per_arch = opts.epochs_per_arch or matched_epochs(self.cfg, table, opts.samples)
        band = self.cost_cfg.band()
        if band and opts.budget is not None and band[0] > opts.budget:
            raise DnasError(f"search.random.budget: {opts.budget:g} {table.unit} lies below the "
                            f"band {band[0]:.4g}..{band[1]:.4g} of cost_model.target; raise "
                            "it or leave it out")  # fmt: skip

    @property
    def num_epochs(self) -> int:
        return self.options.samples * self.per_arch

    def sample(self) -> dict[str, str]:
        """A random op per layer: uniform; with ``search.random.budget`` rejection-sampled to
        cost at most that; with a ``budget`` cost form drawn inside its band
        (:func:`dnas.search.budget.sample_within`), below ``search.random.budget`` too."""
        band, cap = self.cost_cfg.band(), self.options.budget or float("inf")
        if band is None:
            for _ in range(self.options.max_tries):
                choices = uniform_choices(self.layers, self.rng)
                if self.table.of_choices(choices) <= cap:
                    return choices
        elif choices := sample_within(self.table, self.rng, band[0], min(band[1], cap),
                                      self.options.max_tries):  # fmt: skip
            return choices
        low, high = (band[0], min(band[1], cap)) if band else (0.0, cap)
        key = "search.random.budget" if band is None else "cost_model.target"
        cheapest, dearest = self.table.cost_range()
        raise DnasError(
            f"{key}: no architecture costs {low:.4g}..{high:.4g} {self.table.unit} in "
            f"{self.options.max_tries} samples (the space spans {cheapest:.4g}..{dearest:.4g})"
        )

    def new_epoch(self, epoch: int) -> None:
        super().new_epoch(epoch)
        if epoch % self.per_arch:
            return
        self.build(self.sample())

    def build(self, choices: dict[str, str]) -> None:
        """A fresh net of ``choices`` with its optimiser and schedule."""
        self.choices = choices
        arch = self.network.space.with_choices(choices)
        model = self.prepare(Network(arch, self.task.num_outputs).to(self.device))
        self.model = self.amp.model(model)
        self.params = self.model.weight_parameters()
        self.opt = search_weight_optimizer(self.params, self.cfg.weight_optimizer)
        self.sched = torch.optim.lr_scheduler.CosineAnnealingLR(self.opt, T_max=self.per_arch)

    def wants_arch_batch(self) -> bool:
        return False  # candidates are scored on the whole architecture split at epoch ends

    def step(
        self, train_batch: dict[str, Any], val_batch: dict[str, Any] | None
    ) -> dict[str, float]:
        loss = weight_step(
            self.model, train_batch, self.task.loss, self.opt, self.params,
            self.cfg.weight_optimizer.grad_clip, self.amp,
        )  # fmt: skip
        return {"train/loss": float(loss)}

    def end_epoch(self, epoch: int, val_loader: DataLoader) -> dict[str, float]:
        self.sched.step()
        if (epoch + 1) % self.per_arch:
            return {}
        val_loss = mean_loss(self.model, self.task, val_loader, self.device)
        entry = {"choices": self.choices, "val_loss": val_loss,
                 "cost": self.table.of_choices(self.choices)}  # fmt: skip
        self.history.append(entry)
        if self.best is None or val_loss < self.best["val_loss"]:
            self.best = entry
        return {"random/val_loss": val_loss, "random/cost": entry["cost"],
                "random/best_val_loss": self.best["val_loss"]}  # fmt: skip

    def trained_models(self) -> list[torch.nn.Module]:
        return [self.model] if self.choices else []

    def result_extras(self) -> dict[str, Any]:
        return {"candidates": self.history}

    def arch_probs(self) -> dict[str, list[float]]:
        """One-hot on the best architecture so far (the current one before any is scored;
        uniform, as the draws are, before any is drawn)."""
        choices = self.best["choices"] if self.best else self.choices
        if not choices:
            return {lay.name: [1 / len(lay.candidates)] * len(lay.candidates)
                    for lay in self.layers}  # fmt: skip
        return {
            lay.name: [float(op == choices[lay.name]) for op in lay.candidates]
            for lay in self.layers
        }

    def get_checkpointables(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "history": self.history,
            "best": self.best,
            "rng": self.rng.bit_generator.state,
            "choices": self.choices,
        }
        if self.choices:
            state.update(model=self.model.state_dict(), optimizer=self.opt.state_dict(),
                         scheduler=self.sched.state_dict())  # fmt: skip
        return state

    def load_checkpointables(self, state: dict[str, Any]) -> None:
        self.history, self.best = state["history"], state["best"]
        self.rng.bit_generator.state = state["rng"]
        if state["choices"]:
            self.build(state["choices"])
            self.model.load_state_dict(state["model"])
            load_optimizer_state(self.opt, state["optimizer"], "search.weight_optimizer.type")
            self.sched.load_state_dict(state["scheduler"])
