"""Random-search baseline (paper Table 3): sample architectures, short-train each, keep the best.

Each sampled architecture (uniform per layer, optionally rejected above a cost budget) is built
from scratch as a fixed net, trained ``epochs_per_arch`` epochs on the weight split with the
search's SGD settings, and scored by its task loss on the architecture split (lower is better).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from dnas.cost_model import CostTable
from dnas.errors import DnasError
from dnas.network import Network
from dnas.registry import STRATEGIES
from dnas.runtime import to_device, weight_step
from dnas.strategy import Strategy
from dnas.task import Task


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


@STRATEGIES.register("random")
class RandomSearchStrategy(Strategy):
    def adapt_search_space(
        self, network: Network, task: Task, table: CostTable, device: torch.device
    ) -> None:
        self.network, self.task, self.table, self.device = network, task, table, device
        self.layers = network.space.searchable_layers
        self.rng = np.random.default_rng(int(torch.initial_seed()) % 2**32)
        self.history: list[dict[str, Any]] = []
        self.best: dict[str, Any] | None = None
        self.choices: dict[str, str] = {}

    @property
    def num_epochs(self) -> int:
        return self.cfg.random.samples * self.cfg.random.epochs_per_arch

    def sample(self) -> dict[str, str]:
        """Uniform op per layer; with a budget, rejection-sample until the cost is within it."""
        budget = self.cfg.random.budget
        for _ in range(self.cfg.random.max_tries):
            choices = {
                lay.name: lay.candidates[self.rng.integers(len(lay.candidates))]
                for lay in self.layers
            }
            if budget is None or self.table.of_choices(choices) <= budget:
                return choices
        cheapest = self.table.fixed + sum(min(ops.values()) for ops in self.table.layers.values())
        raise DnasError(
            f"search.random.budget: no architecture within {budget} {self.table.unit} in "
            f"{self.cfg.random.max_tries} samples (the cheapest costs {cheapest:.3f})"
        )

    def new_epoch(self, epoch: int) -> None:
        super().new_epoch(epoch)
        per_arch = self.cfg.random.epochs_per_arch
        if epoch % per_arch:
            return
        self.build(self.sample())

    def build(self, choices: dict[str, str]) -> None:
        """A fresh net of ``choices`` with its optimiser and schedule."""
        self.choices = choices
        arch = self.network.space.with_choices(choices)
        self.model = self.amp.model(Network(arch, self.task.num_outputs).to(self.device))
        w = self.cfg.weight_optimizer
        self.params = self.model.weight_parameters()
        self.opt = torch.optim.SGD(
            self.params, lr=w.lr, momentum=w.momentum, weight_decay=w.weight_decay
        )
        self.sched = torch.optim.lr_scheduler.CosineAnnealingLR(
            self.opt, T_max=self.cfg.random.epochs_per_arch
        )

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
        if (epoch + 1) % self.cfg.random.epochs_per_arch:
            return {}
        val_loss = mean_loss(self.model, self.task, val_loader, self.device)
        entry = {"choices": self.choices, "val_loss": val_loss,
                 "cost": self.table.of_choices(self.choices)}  # fmt: skip
        self.history.append(entry)
        if self.best is None or val_loss < self.best["val_loss"]:
            self.best = entry
        return {"random/val_loss": val_loss, "random/cost": entry["cost"],
                "random/best_val_loss": self.best["val_loss"]}  # fmt: skip

    def arch_probs(self) -> dict[str, list[float]]:
        """One-hot on the best architecture so far (the current one before any is scored)."""
        choices = self.best["choices"] if self.best else self.choices
        return {
            lay.name: [float(op == choices.get(lay.name)) for op in lay.candidates]
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
            self.opt.load_state_dict(state["optimizer"])
            self.sched.load_state_dict(state["scheduler"])
