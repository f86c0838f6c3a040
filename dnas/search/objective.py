"""The architecture loss of a search step: a task term and lambda times a cost term.

Forms (``cost_model.form``):

- ``relative`` (default): ``ln L_task + lambda * ln(C / C_ref)`` (the task term is computed
  as ``L_task / L_task.detach()``, which has the gradient of ``ln L_task``). Both terms are
  relative, so lambda is an elasticity: the search accepts a 1 % higher task loss for a
  1/lambda % lower cost, whatever the task, input size, heatmap sigma or cost unit. It is
  MnasNet's and FBNet's multiplicative form ``L_task * C^lambda`` written in log space.
- ``budget``: the same objective with lambda a Lagrange multiplier of the equality constraint
  ``C_derived = target``, adapted by dual ascent after every architecture step
  (``lambda += dual_lr * rho * v``; Boyd & Vandenberghe, Convex Optimization, Sec. 5.5; for
  NAS budgets cf. HardCoRe-NAS, Nayman et al. 2021). The violation
  ``v = d ln(C_argmax / target) + (1 - d) ln(C_expected / target)`` weighs the argmax net, the
  one being derived, by the decisiveness d (mean top op probability): while the probabilities
  are near-uniform the argmax is a tie-break that lags alpha, and the expected cost leads. ``rho``
  (a running mean of |grad task term| / |grad ln C| over alpha) is the lambda at which the two
  terms pull equally hard, so ``dual_lr`` is scale-free too: the fraction of that natural
  scale one step moves per unit of log-violation. lambda starts at 0 and is kept within
  +-4 rho (anti-windup: the argmax responds to alpha with a lag, and an unbounded integral
  would drive every layer to its cheapest op first). ``dnas.search.budget`` projects the end result.
- ``log``: the paper's Eq. 6, ``L_task + lambda * log_tau(C)``. Its lambda depends on the
  task loss's scale: it equals the relative form's lambda times ``L_task * ln(tau)``.
- ``hinge`` / ``power``: ``L_task`` plus a penalty on the cost above ``target`` only.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from dnas.config import CostConfig
from dnas.engine.distributed import mean_over_world
from dnas.errors import DnasError
from dnas.search.cost_model import CostTable

RELATIVE_FORMS = ("relative", "budget")
WINDUP = 4.0  # |lambda| <= WINDUP * rho in the budget form: the cost may pull at most 4x harder


def cost_loss(cost: Tensor, lam: float, tau: float) -> Tensor:
    """lambda * log_tau(cost) (Eq. 6). Its gradient lambda * c / (cost * ln tau) ignores units."""
    if tau <= 1.0:
        raise DnasError(f"cost tau must be > 1, got {tau}")
    return lam * torch.log(cost) / math.log(tau)


def budget_penalty(cost: Tensor, cfg: CostConfig) -> Tensor:
    """``hinge``: weight * max(0, cost/target - 1); ``power`` (MnasNet-like):
    weight * (max(1, cost/target)^beta - 1). Both are 0 at or below the target."""
    ratio = cost / cfg.target
    if cfg.form == "hinge":
        return cfg.weight * torch.relu(ratio - 1.0)
    return cfg.weight * (torch.clamp(ratio, min=1.0) ** cfg.beta - 1.0)


class ArchObjective:
    """The architecture loss for one cost configuration and table; holds the adapted lambda of
    the ``budget`` form (its state is checkpointed with the strategy)."""

    def __init__(self, cfg: CostConfig, table: CostTable) -> None:
        self.cfg, self.table = cfg, table
        self.lam = 0.0 if cfg.form == "budget" else cfg.weight  # a dual variable starts at 0
        self.rho: float | None = None  # budget: running |grad task| / |grad ln C|
        self.ref = cfg.target or table.uniform_cost()

    @property
    def adaptive(self) -> bool:
        return self.cfg.form == "budget"

    def __call__(self, task_loss: Tensor, cost: Tensor) -> tuple[Tensor, dict[str, float]]:
        """The loss to minimise over alpha and the scalars to log."""
        task_term, cost_term = task_loss, self.cost_term(cost)
        if self.cfg.form in RELATIVE_FORMS:
            # d ln L = dL / L, with L the loss over all processes' batches (torchrun): each
            # process's gradient of L_rank / L is then averaged into exactly dL / L
            scale = mean_over_world({"loss": task_loss.item()})["loss"]
            if scale < 0:  # ln L: a negative loss (a plugin's) would blow alpha up; a batch
                # with nothing to score (loss 0) steps on the cost alone; NaN: check_finite's
                raise DnasError(f"cost_model.form {self.cfg.form} takes the logarithm of the "
                                f"task loss, which is {scale:.4g} here: it needs a task loss "
                                "of 0 or more (forms log, hinge and power take any)")  # fmt: skip
            task_term = task_loss / max(scale, 1e-12)
        stats = {"arch/task_loss": task_loss.item(), "arch/cost_loss": cost_term.item(),
                 "arch/expected_cost": cost.item(), "arch/lambda": self.lam}  # fmt: skip
        return task_term + cost_term, stats

    def cost_term(self, cost: Tensor) -> Tensor:
        """The cost part of the architecture loss, a function of the expected cost alone."""
        form = self.cfg.form
        if form in RELATIVE_FORMS:
            return self.lam * torch.log(cost / self.ref)
        if form == "log":
            return cost_loss(cost, self.lam, self.cfg.tau)
        return budget_penalty(cost, self.cfg)

    def task_gradients(self, grads: list[Tensor], cost: float,
                       log_cost_grads: list[Tensor]) -> list[Tensor]:  # fmt: skip
        """The task term's part of a step's gradient on alpha: ``grads`` less the cost term's,
        which by the chain rule is d(cost term)/dC * C * d ln C / d alpha."""
        c = torch.tensor(float(cost), dtype=torch.float64, requires_grad=True)
        (slope,) = torch.autograd.grad(self.cost_term(c), c, allow_unused=True)
        factor = 0.0 if slope is None else float(slope) * float(cost)
        return [g.float() - factor * lc.float()
                for g, lc in zip(grads, log_cost_grads, strict=True)]  # fmt: skip

    def observe(self, argmax_cost: float, expected_cost: float, decided: float,
                task: list[Tensor], cost_grads: list[Tensor]) -> None:  # fmt: skip
        """Dual ascent on lambda after an architecture step (``budget`` form only), given the
        argmax and expected costs, the decisiveness, the step's task gradient on alpha
        (:meth:`task_gradients`) and the gradient of ln(expected cost) on alpha. A step whose
        gradients are not finite (fp16: the gradient scaler skipped it) is ignored, so lambda
        never becomes NaN."""
        if not self.adaptive or not all(bool(torch.isfinite(g).all()) for g in task):
            return
        cost_norm = float(torch.sqrt(sum((c.float() ** 2).sum() for c in cost_grads)))
        task_norm = float(torch.sqrt(sum((t**2).sum() for t in task)))
        ratio = task_norm / max(cost_norm, 1e-12)
        self.rho = ratio if self.rho is None else 0.9 * self.rho + 0.1 * ratio
        target = self.cfg.target
        violation = decided * math.log(argmax_cost / target)
        violation += (1 - decided) * math.log(expected_cost / target)
        step = self.cfg.dual_lr * self.rho * violation
        bound = WINDUP * self.rho  # anti-windup: the argmax lags alpha, so cap the integral
        self.lam = min(max(self.lam + step, -bound), bound)

    def state_dict(self) -> dict[str, float | None]:
        return {"lambda": self.lam, "rho": self.rho}

    def load_state_dict(self, state: dict[str, float | None]) -> None:
        self.lam, self.rho = float(state["lambda"]), state["rho"]
