"""Random-search baseline (paper Table 3): sample architectures, short-train each, keep the best.

Each sampled architecture (uniform per layer, optionally rejected above a cost budget) is built
from scratch as a fixed net, trained ``epochs_per_arch`` epochs on the weight split with the
search's weight optimiser, and scored by its task loss on the architecture split (lower is
better).
By default the baseline gets the compute of the DARTS search the same config describes
(:func:`matched_epochs`), the "same total cost" comparison of the paper's Table 3.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from dnas.config import MAX_EPOCHS, MAX_STEPS, SearchConfig, band_around
from dnas.engine.runtime import (
    load_optimizer_state,
    mean_loss,
    search_weight_optimizer,
    weight_step,
)
from dnas.errors import ConfigError
from dnas.nn.network import Network
from dnas.registry import STRATEGIES
from dnas.search.budget import BandSampler
from dnas.search.cost_model import CostTable
from dnas.search.strategy import Strategy
from dnas.space.choices import uniform_choices
from dnas.task import Task

PROBE, MAX_PROBE = 20_000, 1_000_000  # draws testing a band: max_tries, within these bounds
LANDED = 20  # draws expected in the band per max_tries: a draw then fails with odds e^-20
REDRAWS = 1000  # draws of trained nets before a sample may repeat one
MIN_WIDENED = 1e-3  # the first tolerance a band of no draws is widened to (0.1 % of the target)


@dataclass
class RandomSearchOptions:
    """``search.random``: N architectures, each short-trained, best kept.
    ``epochs_per_arch: null`` gives the baseline the compute of the configured DARTS search
    (:func:`matched_epochs`), the comparison Table 3 makes."""

    samples: int = field(default=50, metadata={"min": 1, "max": MAX_EPOCHS})
    epochs_per_arch: int | None = field(default=None, metadata={"min": 1, "max": MAX_EPOCHS})
    budget: float | None = field(default=None, metadata={"min": 0.0})
    max_tries: int = field(default=10000, metadata={"min": 1, "max": MAX_STEPS})


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
        self.sampler, self.band = self.plan_draws()
        self.check_variety()

    def plan_draws(self) -> tuple[BandSampler | None, tuple[float, float] | None]:
        """How the architectures are drawn, checked before the first epoch on a probe of
        draws (its own generator: the draws themselves stay those of the seed): the sampler
        (None: uniform per layer) and the band every draw lies in. Under ``form: budget`` the
        draws come from the maximum-entropy distribution centred on the target, inside its
        band; a band too narrow for draws to land in (``tolerance: 0``) is widened around the
        target until they do, as a budget search takes the nearest net. A cap
        (``search.random.budget``) alone keeps uniform draws unless too few cost that little."""
        table, opts, unit = self.table, self.options, self.table.unit
        cheapest, dearest = table.cost_range()
        cap = math.inf if opts.budget is None else opts.budget
        band = self.cost_cfg.band()
        if band is not None and cap < band[0]:
            raise ConfigError(self.source, "search.random.budget",
                              f"{opts.budget:g} {unit} lies below the band {band[0]:.4g}.."
                              f"{band[1]:.4g} of cost_model.target; raise it or leave it "
                              "out")  # fmt: skip
        if cap < cheapest:
            raise ConfigError(self.source, "search.random.budget",
                              f"{opts.budget:g} {unit} lies below the space's cheapest net "
                              f"({cheapest:.4g} {unit}); raise it or leave it out")  # fmt: skip
        if band is None:
            if opts.budget is None or self.lands(uniform := BandSampler(table, 0, cap, False)):
                return None, None if opts.budget is None else (cheapest, cap)
            rate = self.landing(uniform)
            self.notes.append(f"search.random.budget: {rate:.2%} of uniform draws cost at "
                              f"most {cap:g} {unit}, too few; drawing from the maximum-entropy "
                              f"distribution centred on {cheapest:.4g}..{cap:g} "
                              "instead")  # fmt: skip
            tilted = BandSampler(table, cheapest, cap)
            return self.checked(tilted, "search.random.budget")
        low, high = band[0], min(band[1], cap)
        target, tolerance = self.cost_cfg.target, self.cost_cfg.tolerance
        while not self.lands(sampler := BandSampler(table, low, high)):
            if low <= cheapest and high >= min(dearest, cap):
                return self.checked(sampler, "cost_model.target")
            tolerance = max(2 * tolerance, MIN_WIDENED)  # within the space's range (and cap)
            low, high = band_around(target, tolerance)
            low, high = max(low, cheapest), min(high, dearest, cap)
        if (low, high) != (band[0], min(band[1], cap)):
            self.notes.append(f"cost_model.tolerance: too few random draws land within "
                              f"{band[0]:.6g}..{min(band[1], cap):.6g} {unit}; drawing within "
                              f"{low:.6g}..{high:.6g} {unit} ({100 * tolerance:g} % of the "
                              "target), as near as random draws come")  # fmt: skip
        return sampler, (low, high)

    def check_variety(self) -> None:
        """How many different architectures the draws hold (all of the space's without a
        band, else those a probe of the band finds), with a note when that is fewer than
        ``samples``: candidates are drawn anew until they differ from those trained."""
        if self.band is None:
            self.variety = math.prod(len(layer.candidates) for layer in self.layers)
        else:
            probe = self.sampler or BandSampler(self.table, 0.0, self.band[1], tilted=False)
            self.variety = probe.distinct(np.random.default_rng(0), self.probe_size())
        if self.variety < self.options.samples:
            where = "" if self.band is None else (f" costing {self.band[0]:.4g}..{self.band[1]:.4g}"
                                                  f" {self.table.unit}")  # fmt: skip
            self.notes.append(f"search.random.samples: {self.options.samples}, but the draws "
                              f"find only {self.variety} different architectures{where}; some "
                              "will be trained more than once")  # fmt: skip

    def probe_size(self) -> int:
        """Draws in a probe of the band: ``max_tries``, within PROBE..MAX_PROBE."""
        return max(PROBE, min(self.options.max_tries, MAX_PROBE))

    def landing(self, sampler: BandSampler) -> float:
        """The fraction of a probe of draws (a fixed generator of its own) in the band."""
        return sampler.acceptance(np.random.default_rng(0), self.probe_size())

    def lands(self, sampler: BandSampler) -> bool:
        """Whether enough draws land in the sampler's band that a draw of ``max_tries`` tries
        all but never fails (``LANDED`` expected to land)."""
        return self.landing(sampler) * self.options.max_tries >= LANDED

    def checked(self, sampler: BandSampler, key: str) -> tuple[BandSampler, tuple[float, float]]:
        """The last resort's sampler, or a one-line error when even its draws do not land."""
        if self.lands(sampler):
            return sampler, (sampler.low, sampler.high)
        rate = self.landing(sampler)
        cheapest, dearest = self.table.cost_range()
        raise ConfigError(self.source, key,
                          f"only {rate:.3%} of random draws cost {sampler.low:.4g}.."
                          f"{sampler.high:.4g} {self.table.unit} (the space spans "
                          f"{cheapest:.4g}..{dearest:.4g}); raise search.random.max_tries or "
                          "widen the budget")  # fmt: skip

    def cost_band(self) -> tuple[float, float] | None:
        """Under ``form: budget``, the band the draws lie in (the widened one where widened)."""
        return self.band if self.cost_cfg.band() is not None else None

    @property
    def num_epochs(self) -> int:
        return self.options.samples * self.per_arch

    def sample(self) -> dict[str, str]:
        """An architecture not trained yet, drawn as :meth:`draw` draws (NNI's deduplication):
        a repeat only after ``REDRAWS`` draws of nets already trained, or once as many nets
        are trained as :meth:`check_variety` found."""

        def key(choices: dict[str, str]) -> tuple[str, ...]:
            return tuple(choices[layer.name] for layer in self.layers)

        trained = {key(entry["choices"]) for entry in self.history}
        for _ in range(REDRAWS if len(trained) < self.variety else 1):  # else: all are trained
            choices = self.draw()
            if key(choices) not in trained:
                break
        return choices

    def draw(self) -> dict[str, str]:
        """A random op per layer, as :meth:`plan_draws` settled: uniform, or from its sampler
        inside its band."""
        tries = self.options.max_tries
        for _ in range(tries if self.sampler is None else 0):
            choices = uniform_choices(self.layers, self.rng)
            if self.band is None or self.table.of_choices(choices) <= self.band[1]:
                return choices
        if self.sampler is not None and (choices := self.sampler.draw(self.rng, tries)):
            return choices
        low, high = self.band or (0.0, math.inf)
        raise ConfigError(self.source, "search.random.max_tries",
                          f"no architecture costing {low:.4g}..{high:.4g} {self.table.unit} in "
                          f"{tries} draws; raise it")  # fmt: skip

    def get_final_architecture(self) -> dict[str, str]:
        """The best candidate as drawn (inside the draw band): never a projection, which would
        be a net that no candidate trained."""
        return self.argmax_architecture()

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
        self.model.eval()
        val_loss = mean_loss(self.model, val_loader, self.amp, self.task.loss, self.device)
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
