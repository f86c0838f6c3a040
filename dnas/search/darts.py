"""DARTS-style differentiable search with the cost-aware loss (EfficientPose, Sec. 3.2).

Warm-up epochs train weights only; afterwards each step first updates the architecture
parameters on an architecture-split batch (the task term plus lambda times the cost term of
``dnas.search.objective``, Adam), then the weights on a weight-split batch (task loss,
``search.weight_optimizer``: SGD as the paper, or Adam; cosine lr). First-order, as the paper.

The mixture weights are p = softmax(alpha / T) (Eq. 2 at T = 1, the default). ``search.darts``
may anneal T geometrically over the architecture epochs (ASAP, Noy et al., AISTATS 2020; SNAS,
Xie et al., ICLR 2019): as T falls the mixture the super net trains approaches the one-hot net
that is derived from it, which closes DARTS' discretisation gap (the argmax of a barely
decided mixture is not the net that was trained; Wang et al., ICLR 2021).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from dnas.engine.runtime import adam, load_optimizer_state, search_weight_optimizer, weight_step
from dnas.nn.network import Network
from dnas.registry import STRATEGIES
from dnas.search.budget import start_on_budget
from dnas.search.cost_model import CostTable
from dnas.search.evidence import GradientEvidence
from dnas.search.gap import discretisation_gap
from dnas.search.objective import ArchObjective
from dnas.search.strategy import Strategy
from dnas.space.choices import decisiveness, entropies
from dnas.task import Task


@dataclass
class DartsOptions:
    """``search.darts``: the softmax temperature T of p = softmax(alpha / T), annealed
    geometrically from ``temperature_start`` at the first architecture epoch to
    ``temperature_end`` at the last (warm-up epochs stay at the start value), so the schedule
    does not depend on the number of epochs. 1 and 1: the paper's Eq. 2 throughout."""

    temperature_start: float = field(default=1.0, metadata={"min": 1e-3, "max": 1e3})
    temperature_end: float = field(default=1.0, metadata={"min": 1e-3, "max": 1e3})


def annealed_temperature(start: float, end: float, arch_epoch: int, arch_epochs: int) -> float:
    """start * (end / start) ** (e / (E - 1)) at architecture epoch e of E (0-based): start at
    the first, end at the last, a constant ratio per epoch in between; start before e = 0."""
    if arch_epoch <= 0 or arch_epochs <= 1:
        return start
    return start * (end / start) ** (min(arch_epoch, arch_epochs - 1) / (arch_epochs - 1))


@STRATEGIES.register("darts")
class DartsStrategy(Strategy):
    Options, options_key = DartsOptions, "darts"
    trains_mixture = True  # the super net trains the softmax mixture (its gap is measured)

    def adapt_search_space(
        self, network: Network, task: Task, table: CostTable, device: torch.device
    ) -> None:
        self.network, self.task, self.table = self.amp.model(network), task, table
        self.device, self.gap = device, None
        self.objective = ArchObjective(self.cost_cfg, table)
        network.set_drop_path(self.cfg.drop_path, device)
        w, a = self.cfg.weight_optimizer, self.cfg.arch_optimizer
        self.weights = network.weight_parameters()
        self.alphas = network.arch_parameters()
        network.temperature = self.temperature_at(0)
        if self.cfg.arch_init == "budget":
            start_on_budget(self.alphas, network.searchable, table, self.cost_cfg.target,
                            network.temperature)  # fmt: skip
        self.w_opt = search_weight_optimizer(self.weights, w)
        self.a_opt = adam(self.alphas, a.lr, a.betas, a.weight_decay)
        self.w_sched = torch.optim.lr_scheduler.CosineAnnealingLR(
            self.w_opt, T_max=max(self.num_epochs, 1), eta_min=0.0
        )
        self.steps_done = 0
        # the task gradient's evidence: this epoch's architecture steps, and all of them
        self.evidence, self.run_evidence = GradientEvidence(), GradientEvidence()
        self.noise_epochs: list[bool] = []  # per architecture epoch: was its gradient noise

    @property
    def num_epochs(self) -> int:
        return self.cfg.warmup_epochs + self.cfg.epochs

    @property
    def warming_up(self) -> bool:
        return self.epoch < self.cfg.warmup_epochs

    def temperature_at(self, epoch: int) -> float:
        """T of the mixture p = softmax(alpha / T) in ``epoch``, from ``search.darts`` (read
        by section, so a subclass with ``Options`` of its own still has its temperature)."""
        opts = self.cfg.options.get("darts") or DartsOptions()
        arch_epoch = epoch - self.cfg.warmup_epochs
        return annealed_temperature(opts.temperature_start, opts.temperature_end, arch_epoch,
                                    self.cfg.epochs)  # fmt: skip

    def new_epoch(self, epoch: int) -> None:
        super().new_epoch(epoch)
        self.evidence.reset()
        self.network.temperature = self.temperature_at(epoch)

    def expected_cost(self) -> torch.Tensor:
        return self.table.expected(self.network.searchable, self.network.arch_probs())

    def arch_forward(self, batch: dict[str, Any]) -> Any:
        """The task loss of an architecture batch through the relaxed super net (Eq. 3)."""
        return self.amp.forward_loss(self.network, batch, self.task.loss)

    def arch_step(self, batch: dict[str, Any]) -> dict[str, float]:
        """One Adam step on alpha; then the objective sees the derived net's cost (budget)."""
        self.network.train()
        self.a_opt.zero_grad(set_to_none=True)
        cost = self.expected_cost()
        cost_grads = list(torch.autograd.grad(torch.log(cost), self.alphas))  # at this alpha
        loss, stats = self.objective(self.arch_forward(batch), self.expected_cost())
        self.amp.step(loss, self.a_opt, self.alphas, update=False)  # weight_step updates
        scale = self.amp.scaler.get_scale() if self.amp.scaler.is_enabled() else 1.0
        grads = [a.grad / scale if a.grad is not None else torch.zeros_like(a)
                 for a in self.alphas]  # fmt: skip
        task = self.objective.task_gradients(grads, float(cost.detach()), cost_grads)
        self.evidence.add(task)
        self.run_evidence.add(task)
        self.after_arch_step()
        if self.objective.adaptive:
            with torch.no_grad():
                expected = float(self.expected_cost())
            argmax_cost = self.table.of_choices(self.argmax_architecture())
            self.objective.observe(argmax_cost, expected, decisiveness(self.arch_probs()), task,
                                   cost_grads)  # fmt: skip
        return stats

    def after_arch_step(self) -> None:
        """Hook for strategies that post-process alpha after the optimiser step."""

    def wants_arch_batch(self) -> bool:
        return not self.warming_up and self.steps_done % self.cfg.arch_every == 0

    def step(
        self, train_batch: dict[str, Any], val_batch: dict[str, Any] | None
    ) -> dict[str, float]:
        stats = {} if val_batch is None else self.arch_step(val_batch)
        loss = weight_step(
            self.network, train_batch, self.task.loss, self.w_opt, self.weights,
            self.cfg.weight_optimizer.grad_clip, self.amp, forwards=self.weight_forwards(),
        )  # fmt: skip
        self.steps_done += 1
        stats["train/loss"] = float(loss)
        return stats

    def weight_forwards(self) -> list[dict[str, Any]] | None:
        """The forward passes of the next weight step (``weight_step``'s ``forwards``); None:
        one pass of the whole mixture."""
        return None

    @torch.no_grad()
    def end_epoch(self, epoch: int, val_loader: Any) -> dict[str, float]:
        lr = self.w_opt.param_groups[0]["lr"]
        self.w_sched.step()
        probs = self.arch_probs()
        entropy = entropies(probs)
        if self.trains_mixture and epoch == self.num_epochs - 1 and not self.warming_up:
            self.gap = discretisation_gap(self.network, val_loader, self.amp, self.task.loss,
                                          self.device, self.get_final_architecture())  # fmt: skip
        gap = {} if self.gap is None else {f"search/{k}": v for k, v in self.gap.items()}
        evidence = self.evidence.summary()
        if evidence is not None:
            gap["search/gradient_evidence"] = evidence["significant"]
            self.noise_epochs.append(evidence["noise"])
        return {
            **gap,
            "search/expected_cost": float(self.expected_cost()),
            "search/derived_cost": self.table.of_choices(self.get_final_architecture()),
            "search/mean_entropy": sum(entropy.values()) / max(len(entropy), 1),
            "search/decisiveness": decisiveness(probs),
            "search/lambda": self.objective.lam,
            **(
                {"search/mixture_temperature": self.network.temperature}
                if self.trains_mixture
                else {}
            ),  # a single path has no mixture to anneal
            **({"search/rho": self.objective.rho} if self.objective.rho is not None else {}),
            "lr/weights": lr,
        }

    def result_extras(self) -> dict[str, Any]:
        """The final lambda and, for a mixture search, its temperature and discretisation gap
        at the end."""
        return {"lambda": self.objective.lam,
                "gradient_evidence": self.gradient_evidence(),
                **({"mixture_temperature": self.network.temperature} if self.trains_mixture
                   else {}),
                **({} if self.gap is None else {"discretisation_gap": self.gap})}  # fmt: skip

    def gradient_evidence(self) -> dict[str, Any] | None:
        """The t-test of every architecture step's task gradient against noise
        (:class:`~dnas.search.evidence.GradientEvidence`), with how many architecture epochs'
        gradients were noise on their own; None before 3 steps."""
        summary = self.run_evidence.summary()
        if summary is None:
            return None
        return summary | {"arch_epochs": len(self.noise_epochs),
                          "noise_epochs": sum(self.noise_epochs)}  # fmt: skip

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
            "objective": self.objective.state_dict(),
            "drop_path_rng": self.network.drop_path_rng_state(),
            "evidence": self.evidence.state_dict(),
            "run_evidence": self.run_evidence.state_dict(),
            "noise_epochs": list(self.noise_epochs),
        }

    def load_checkpointables(self, state: dict[str, Any]) -> None:
        self.network.load_state_dict(state["model"])
        load_optimizer_state(self.w_opt, state["weight_optimizer"], "search.weight_optimizer.type")
        load_optimizer_state(self.a_opt, state["arch_optimizer"])
        self.w_sched.load_state_dict(state["weight_scheduler"])
        self.steps_done = state["steps_done"]
        self.objective.load_state_dict(state["objective"])
        self.network.set_drop_path_rng_state(state["drop_path_rng"])
        if "evidence" in state:  # checkpoints before 2026-12-02 hold no evidence
            self.evidence.load_state_dict(state["evidence"])
            self.run_evidence.load_state_dict(state["run_evidence"])
        self.noise_epochs = list(state.get("noise_epochs", []))  # none before 2026-12-04
