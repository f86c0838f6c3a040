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

Which paths the weight steps train is ``search.single_path.weight_sampling``: ``alpha`` (FBNet,
ProxylessNAS: the ones the architecture prefers), ``uniform`` (SPOS, Guo et al., ECCV 2020) or
``fair`` (FairNAS' strict fairness, Chu et al., ICCV 2021). The last two keep the super net's
training independent of alpha, so a search cannot confirm its own early draws by training
the ops it happens to prefer more than the others.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from dnas.registry import STRATEGIES
from dnas.search.darts import DartsStrategy


@dataclass
class SinglePathOptions:
    """``search.single_path``: the Gumbel-softmax temperature, annealed per architecture epoch
    (warm-up epochs do not count) from ``tau_start`` by ``tau_decay`` (FBNet: 5.0, x0.956)."""

    tau_start: float = field(default=5.0, metadata={"min": 1e-3})
    tau_decay: float = field(default=0.956, metadata={"min": 0.0, "max": 1.0})
    tau_min: float = field(default=0.1, metadata={"min": 1e-3})
    # the paths weight steps train: ``alpha`` (sampled from softmax(alpha)), ``uniform`` (one
    # path drawn uniformly), ``fair`` (every candidate of every layer once, gradients summed)
    weight_sampling: str = field(
        default="alpha", metadata={"choices": ["alpha", "uniform", "fair"]}
    )


Paths = tuple[list[Tensor], list[list[int]]]  # one-hot path weights and active ops, per layer


def one_path(probs: list[Tensor]) -> Paths:
    """One op per layer drawn from ``probs``, gate 1 (no gradient to alpha)."""
    weights, active = [], []
    for p in probs:
        index = int(torch.multinomial(p, 1))
        weights.append(F.one_hot(torch.tensor(index), len(p)).to(p))
        active.append([index])
    return weights, active


def fair_paths(alphas: list[Tensor]) -> list[Paths]:
    """FairNAS' strict fairness: m = the most candidates of any layer paths, built from one
    random permutation of each layer's candidates (repeated where a layer has fewer), so each
    candidate of an m-candidate layer is in exactly one of them."""
    m = max(len(a) for a in alphas)
    orders = [torch.cat([torch.randperm(len(a)) for _ in range(-(-m // len(a)))])[:m]
              for a in alphas]  # fmt: skip
    return [([F.one_hot(order[k], len(a)).to(a.detach()) for a, order in zip(alphas, orders,
                                                                              strict=True)],
             [[int(order[k])] for order in orders]) for k in range(m)]  # fmt: skip


WEIGHT_SAMPLING: dict[str, Callable[[list[Tensor]], list[Paths]]] = {
    "alpha": lambda alphas: [one_path([torch.softmax(a.detach(), -1) for a in alphas])],
    "uniform": lambda alphas: [one_path([torch.ones_like(a.detach()) for a in alphas])],
    "fair": fair_paths,
}


class _SinglePath(DartsStrategy):
    Options, options_key = SinglePathOptions, "single_path"
    probe = False  # run unsampled candidates without gradient in architecture steps
    trains_mixture = False  # sampled paths are trained, not the softmax mixture

    def temperature_at(self, epoch: int) -> float:
        """1: paths are sampled from softmax(alpha); ``tau`` is the relaxation's temperature."""
        return 1.0

    @property
    def single_path(self) -> SinglePathOptions:
        """``search.single_path``, read by section (as DARTS reads ``search.darts``), so a
        subclass with ``Options`` of its own keeps the temperature and weight sampling."""
        return self.cfg.options.get("single_path") or SinglePathOptions()

    def weight_paths(self) -> list[Paths]:
        """The paths the next weight step trains (``weight_sampling``)."""
        return WEIGHT_SAMPLING[self.single_path.weight_sampling](self.alphas)

    def weight_forwards(self) -> list[dict[str, Any]]:
        return [{"path_weights": w, "active": a} for w, a in self.weight_paths()]

    @abstractmethod
    def relaxed_paths(self) -> Paths:
        """Path weights (differentiable in alpha) and the active paths for an arch step."""

    def arch_forward(self, batch: dict[str, Any]) -> Tensor:
        self.paths = self.relaxed_paths()
        weights, active = self.paths
        return self.amp.forward_loss(self.network, batch, self.task.loss, path_weights=weights,
                                     active=active, probe=self.probe)  # fmt: skip


@STRATEGIES.register("gumbel")
class GumbelStrategy(_SinglePath):
    probe = True

    def new_epoch(self, epoch: int) -> None:
        super().new_epoch(epoch)
        sp = self.single_path
        arch_epoch = max(0, epoch - self.cfg.warmup_epochs)  # warm-up epochs do not anneal
        self.tau = max(sp.tau_min, sp.tau_start * sp.tau_decay**arch_epoch)

    def end_epoch(self, epoch: int, val_loader: Any) -> dict[str, float]:
        stats = super().end_epoch(epoch, val_loader)
        stats["search/temperature"] = self.tau  # of the relaxation; binary gates have none
        return stats

    def relaxed_paths(self) -> Paths:
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
    def relaxed_paths(self) -> Paths:
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
