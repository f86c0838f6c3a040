"""DARTS-style differentiable search with the cost-aware loss (EfficientPose, Sec. 3.2).

Warm-up epochs train weights only; afterwards each step first updates the architecture
parameters on an architecture-split batch (task loss + weight * log_tau(expected cost), Adam),
then the weights on a weight-split batch (task loss, SGD, cosine lr). First-order, as the paper.
"""

from __future__ import annotations

from typing import Any

import torch

from dnas.cost_model import CostTable, cost_penalty
from dnas.network import Network
from dnas.registry import STRATEGIES
from dnas.runtime import weight_step
from dnas.strategy import Strategy
from dnas.task import Task


@STRATEGIES.register("darts")
class DartsStrategy(Strategy):
    def adapt_search_space(
        self, network: Network, task: Task, table: CostTable, device: torch.device
    ) -> None:
        self.network, self.task, self.table = self.amp.model(network), task, table
        network.set_drop_path(self.cfg.drop_path)
        w, a = self.cfg.weight_optimizer, self.cfg.arch_optimizer
        self.weights = network.weight_parameters()
        self.alphas = network.arch_parameters()
        self.w_opt = torch.optim.SGD(
            self.weights, lr=w.lr, momentum=w.momentum, weight_decay=w.weight_decay
        )
        self.a_opt = torch.optim.Adam(
            self.alphas, lr=a.lr, betas=tuple(a.betas), weight_decay=a.weight_decay
        )
        self.w_sched = torch.optim.lr_scheduler.CosineAnnealingLR(
            self.w_opt, T_max=max(self.num_epochs, 1), eta_min=0.0
        )
        self.steps_done = 0

    @property
    def num_epochs(self) -> int:
        return self.cfg.warmup_epochs + self.cfg.epochs

    @property
    def warming_up(self) -> bool:
        return self.epoch < self.cfg.warmup_epochs

    def expected_cost(self) -> torch.Tensor:
        return self.table.expected(self.network.searchable, self.network.arch_probs())

    def arch_step(self, batch: dict[str, Any]) -> dict[str, float]:
        self.network.train()
        self.a_opt.zero_grad(set_to_none=True)
        task_loss = self.amp.forward_loss(self.network, batch, self.task.loss)
        penalty = cost_penalty(self.expected_cost(), self.cost_cfg)
        self.amp.step(task_loss + penalty, self.a_opt, self.alphas)
        return {"arch/task_loss": task_loss.item(), "arch/cost_loss": penalty.item()}

    def wants_arch_batch(self) -> bool:
        return not self.warming_up and self.steps_done % self.cfg.arch_every == 0

    def step(
        self, train_batch: dict[str, Any], val_batch: dict[str, Any] | None
    ) -> dict[str, float]:
        stats = {} if val_batch is None else self.arch_step(val_batch)
        loss = weight_step(
            self.network, train_batch, self.task.loss, self.w_opt, self.weights,
            self.cfg.weight_optimizer.grad_clip, self.amp,
        )  # fmt: skip
        self.steps_done += 1
        stats["train/loss"] = float(loss)
        return stats

    @torch.no_grad()
    def end_epoch(self, epoch: int, val_loader: Any) -> dict[str, float]:
        lr = self.w_opt.param_groups[0]["lr"]
        self.w_sched.step()
        probs = self.network.arch_probs()
        entropy = torch.stack([-(p * p.clamp_min(1e-12).log()).sum() for p in probs]).mean()
        return {
            "search/expected_cost": float(self.expected_cost()),
            "search/mean_entropy": float(entropy),
            "lr/weights": lr,
        }

    def arch_probs(self) -> dict[str, list[float]]:
        with torch.no_grad():
            probs = self.network.arch_probs()
        return {n: p.tolist() for n, p in zip(self.network.searchable, probs, strict=True)}

    def get_checkpointables(self) -> dict[str, Any]:
        return {
            "model": self.network.state_dict(),
            "weight_optimizer": self.w_opt.state_dict(),
            "arch_optimizer": self.a_opt.state_dict(),
            "weight_scheduler": self.w_sched.state_dict(),
            "steps_done": self.steps_done,
        }

    def load_checkpointables(self, state: dict[str, Any]) -> None:
        self.network.load_state_dict(state["model"])
        self.w_opt.load_state_dict(state["weight_optimizer"])
        self.a_opt.load_state_dict(state["arch_optimizer"])
        self.w_sched.load_state_dict(state["weight_scheduler"])
        self.steps_done = state["steps_done"]
