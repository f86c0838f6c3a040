"""Single-path strategies: each weight step trains one sampled candidate per layer, so search
steps cost about as much as training one network.

- ``gumbel`` (FBNet's Gumbel-softmax, GDAS-style hard sampling): architecture steps sample one
  path per layer from softmax((alpha + g) / tau), tau annealed per architecture epoch; the
  forward pass trains only the sampled op, weighted by the straight-through one-hot
  ``hard - soft.detach() + soft``. The other candidates run without gradient ("probe") so that
  every path weight gets its exact straight-through gradient <dL/dy, o(x)>: the sampled op's
  own gradient <dL/dy, y> is exactly 0 wherever train-mode batch norm follows the layer.
- ``binary_gates`` (ProxylessNAS): weight steps run one path sampled from softmax(alpha);
  architecture steps sample two paths, run both, and pass the gradient through the two paths'
  renormalised probabilities with a straight-through binary gate. Only the two sampled alphas
  move, then are shifted so that their total probability is unchanged (ProxylessNAS' rescaling):
  the probabilities of the unsampled ops stay exactly as they were.
Both add the cost term on the expected cost of softmax(alpha), as DARTS does.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from dnas.engine.runtime import weight_step
from dnas.registry import STRATEGIES
from dnas.search.darts import DartsStrategy


@dataclass
class SinglePathOptions:
    """``search.single_path``: the Gumbel-softmax temperature, annealed per architecture epoch
    (warm-up epochs do not count) from ``tau_start`` by ``tau_decay`` (FBNet: 5.0, x0.956)."""

    tau_start: float = field(default=5.0, metadata={"min": 1e-3})
    tau_decay: float = field(default=0.956, metadata={"min": 0.0, "max": 1.0})
    tau_min: float = field(default=0.1, metadata={"min": 1e-3})


class _SinglePath(DartsStrategy):
    Options, options_key = SinglePathOptions, "single_path"
    probe = False  # run unsampled candidates without gradient in architecture steps
    trains_mixture = False  # sampled paths are trained, not the softmax mixture

    def temperature_at(self, epoch: int) -> float:
        """1: paths are sampled from softmax(alpha); ``tau`` is the relaxation's temperature."""
        return 1.0

    def new_epoch(self, epoch: int) -> None:
        super().new_epoch(epoch)
        sp = self.options
        arch_epoch = max(0, epoch - self.cfg.warmup_epochs)  # warm-up epochs do not anneal
        self.tau = max(sp.tau_min, sp.tau_start * sp.tau_decay**arch_epoch)

    def sample_one(self) -> tuple[list[Tensor], list[list[int]]]:
        """One path per layer from softmax(alpha), gate 1 (no gradient to alpha)."""
        weights, active = [], []
        for alpha in self.alphas:
            index = int(torch.multinomial(torch.softmax(alpha.detach(), -1), 1))
            weights.append(F.one_hot(torch.tensor(index), len(alpha)).to(alpha))
            active.append([index])
        return weights, active

    def step(
        self, train_batch: dict[str, Any], val_batch: dict[str, Any] | None
    ) -> dict[str, float]:
        stats = {} if val_batch is None else self.arch_step(val_batch)
        weights, active = self.sample_one()
        loss = weight_step(
            self.network, train_batch, self.task.loss, self.w_opt, self.weights,
            self.cfg.weight_optimizer.grad_clip, self.amp, path_weights=weights, active=active,
        )  # fmt: skip
        self.steps_done += 1
        stats["train/loss"] = float(loss)
        return stats

    @abstractmethod
    def relaxed_paths(self) -> tuple[list[Tensor], list[list[int]]]:
        """Path weights (differentiable in alpha) and the active paths for an arch step."""

    def arch_forward(self, batch: dict[str, Any]) -> Tensor:
        self.paths = self.relaxed_paths()
        weights, active = self.paths
        return self.amp.forward_loss(self.network, batch, self.task.loss, path_weights=weights,
                                     active=active, probe=self.probe)  # fmt: skip

    def end_epoch(self, epoch: int, val_loader: Any) -> dict[str, float]:
        stats = super().end_epoch(epoch, val_loader)
        stats["search/temperature"] = self.tau
        return stats


@STRATEGIES.register("gumbel")
class GumbelStrategy(_SinglePath):
    probe = True

    def relaxed_paths(self) -> tuple[list[Tensor], list[list[int]]]:
        weights, active = [], []
        for alpha in self.alphas:
            soft = F.gumbel_softmax(alpha, tau=self.tau, hard=False)
            index = int(soft.argmax())
            hard = F.one_hot(torch.tensor(index), len(alpha)).to(soft)
            weights.append(hard - soft.detach() + soft)
            active.append([index])
        return weights, active


@STRATEGIES.register("binary_gates")
class BinaryGateStrategy(_SinglePath):
    def relaxed_paths(self) -> tuple[list[Tensor], list[list[int]]]:
        weights, active = [], []
        for alpha in self.alphas:
            k = min(2, len(alpha))
            pair = torch.multinomial(torch.softmax(alpha.detach(), -1), k).tolist()
            renorm = torch.softmax(alpha[pair], -1)
            chosen = int(torch.multinomial(renorm.detach(), 1))
            gate = F.one_hot(torch.tensor(chosen), k).to(renorm)
            full = torch.zeros_like(alpha).index_put((torch.tensor(pair),),
                                                     gate - renorm.detach() + renorm)  # fmt: skip
            weights.append(full)
            active.append(pair)
        self.before = [alpha.detach().clone() for alpha in self.alphas]
        return weights, active

    def after_arch_step(self) -> None:
        """Keep the unsampled alphas, and shift the sampled pair by one constant so that
        logsumexp over the pair (their total probability mass) is what it was before."""
        with torch.no_grad():
            for alpha, old, pair in zip(self.alphas, self.before, self.paths[1], strict=True):
                index = torch.tensor(pair, device=alpha.device)
                new = alpha[index]
                alpha.copy_(old)
                alpha[index] = new + (old[index].logsumexp(0) - new.logsumexp(0))
