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
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn
from torch.utils.data import Subset
from torch.utils.tensorboard import SummaryWriter

from dnas.config import FORM_KEYS, CostConfig, Experiment
from dnas.engine import distributed
from dnas.engine.loop import EpochLoop
from dnas.engine.progress import Reporter
from dnas.engine.runtime import Amp
from dnas.engine.runtime import to_device as move
from dnas.engine.sampling import epoch_batches, make_loader, stream, train_loader
from dnas.engine.train import check_head_output
from dnas.errors import ConfigError, DnasError
from dnas.files import write_text_atomic
from dnas.nn.network import Network
from dnas.nn.remap import remap_into
from dnas.registry import STRATEGIES, check_concrete
from dnas.search.budget import COST_RTOL
from dnas.search.cost_model import CostTable, configured_cost_model
from dnas.search.derive import derived_cost_line, target_part
from dnas.search.strategy import Strategy
from dnas.space.choices import decisiveness, entropies, probability_problem
from dnas.space.graph import SearchSpace
from dnas.task import Task, build_space, dataset_of

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
    check_concrete(cls, "strategy", exp.search.strategy)
    strategy = cls(exp.search, exp.cost_model, amp)
    strategy.source = exp.source
    return strategy


def within_range(target: float, table: CostTable) -> bool:
    """Whether ``target`` lies within the space's cost range. Its ends are float sums: a target
    equal to one as ``dnas cost`` prints it (whole MACs) may differ from it in the last digits,
    so they are matched to ``COST_RTOL``."""
    low, high = table.cost_range()
    slack = COST_RTOL * max(abs(low), abs(high))
    return low - slack <= target <= high + slack


def range_texts(value: float, low: float, high: float) -> tuple[str, str]:
    """``value`` and the range ``low..high``, printed to as few significant digits (4 or more)
    as show where ``value`` lies against the ends (55.61 is not shown inside 8.23..55.61)."""
    for digits in range(4, 17):
        v, lo, hi = (float(f"{x:.{digits}g}") for x in (value, low, high))
        if (v < lo) == (value < low) and (v > hi) == (value > high):
            break
    return f"{value:.{digits}g}", f"{low:.{digits}g}..{high:.{digits}g}"


def check_target(exp: Experiment, table: CostTable) -> None:
    """A budget target must lie within the space's cost range, else no net can meet it."""
    target = exp.cost_model.target
    if exp.cost_model.form == "budget" and not within_range(target, table):
        shown, span = range_texts(target, *table.cost_range())
        raise ConfigError(exp.source, "cost_model.target",
                          f"{shown} {table.unit} is outside this space's range {span} "
                          f"{table.unit} at input {exp.input_hw[0]}x{exp.input_hw[1]}")  # fmt: skip


def penalty_warning(cost: CostConfig, table: CostTable) -> str | None:
    """One line when a ``hinge`` or ``power`` target lies outside the space's cost range: below
    it every net pays the penalty, above it none does and the search ignores cost."""
    if cost.form not in ("hinge", "power") or cost.target is None:
        return None
    if within_range(cost.target, table):
        return None
    low, high = table.cost_range()
    effect = ("every net of the space costs more" if cost.target < low
              else "no net of the space costs more, so the cost term never acts")  # fmt: skip
    shown, span = range_texts(cost.target, low, high)
    return (f"cost_model.target {shown} {table.unit} is outside this space's range {span} "
            f"{table.unit}: {effect}")  # fmt: skip


def unused_cost_keys(exp: Experiment) -> str | None:
    """One line naming the ``cost_model`` keys set (away from their defaults) that its form
    does not read: a ``target`` under ``form: relative`` reads as a budget but sets none."""
    cost, defaults = exp.cost_model, CostConfig()
    used = set(FORM_KEYS[cost.form]) | ({"target"} if exp.search.arch_init == "budget" else set())
    unused = [key for key in dict.fromkeys(k for keys in FORM_KEYS.values() for k in keys)
              if key not in used and getattr(cost, key) != getattr(defaults, key)]  # fmt: skip
    if not unused:
        return None
    named = [f"cost_model.{key} {getattr(cost, key):g} (read by form "
             f"{', '.join(f for f, keys in FORM_KEYS.items() if key in keys)})"
             for key in unused]  # fmt: skip
    hint = "; form: budget searches for that cost" if "target" in unused else ""
    verb = "is" if len(named) == 1 else "are"
    return f"{' and '.join(named)} {verb} not read by form {cost.form}{hint}"


def search_table(exp: Experiment, task: Task) -> tuple[SearchSpace, CostTable]:
    """The space a search of ``exp`` runs over (its head settled) and its cost table."""
    space = build_space(exp.space, task, exp)
    table = configured_cost_model(exp.cost_model, exp.source).table(space, exp.input_hw,
                                                                    task.num_outputs)  # fmt: skip
    return space, table


class SearchRun(EpochLoop):
    """One search in ``out_dir``: the strategy's steps on the weight split, with a batch of the
    architecture split whenever the strategy wants one; ``search.pt`` after every epoch."""

    kind, name = KIND, "search"
    outputs = (*EpochLoop.outputs, "search.pt", "search.json")

    def setup(self) -> None:
        exp = self.exp
        self.space, self.table = search_table(exp, self.task)
        check_head_output(self.space, self.task)
        if self.space.is_fixed:
            raise ConfigError(exp.source, "space", f"{self.space.source} has no searchable layer")
        self.amp.sync_grads = self.world.distributed
        self.strategy = build_strategy(exp, self.amp)
        check_target(exp, self.table)
        for warning in (penalty_warning(exp.cost_model, self.table), unused_cost_keys(exp)):
            if warning:
                self.report.line(f"warning: {warning}")
        self.make_loaders()
        network = Network(self.space, self.task.num_outputs)
        if exp.remap_from:
            mapped = remap_into(network, Path(exp.remap_from))
            self.report.line(f"remapped {len(mapped)} convolutions from {exp.remap_from}")
        self.strategy.prepare = self.prepare
        self.strategy.adapt_search_space(self.prepare(network), self.task, self.table,
                                         self.device)  # fmt: skip
        for note in self.strategy.notes:
            self.report.line(f"warning: {note}")
        self.probs()  # a strategy plugin's mistake is one line now, not after the search
        if self.num_epochs < 1:  # else it "ends" at once and writes no search.pt
            raise ConfigError(exp.source, "search.epochs",
                              f"the search would run no epoch (search.warmup_epochs "
                              f"{exp.search.warmup_epochs} + search.epochs {exp.search.epochs}); "
                              "give at least one")  # fmt: skip
        self.arch_batches = 0  # architecture batches consumed (the architecture split's stream)
        self.arch_steps = 0  # architecture steps in this epoch
        self.arch_stream: Iterator[dict] | None = None
        self.drawn: dict[str, Any] = {}  # what the last TensorBoard pictures showed

    def probs(self) -> dict[str, list[float]]:
        """The strategy's op probabilities, checked against the space: one line naming the
        strategy when they are not one distribution per searchable layer."""
        probs = self.strategy.arch_probs()
        if problem := probability_problem(probs, self.space):
            cls = type(self.strategy)
            raise DnasError(f"strategy {self.exp.search.strategy!r} ({cls.__module__}."
                            f"{cls.__qualname__}): arch_probs(): {problem}")  # fmt: skip
        return probs

    def make_loaders(self) -> None:
        exp, world = self.exp, self.world
        train = dataset_of(self.task, "train", augment=True, seed=exp.seed)
        plain = dataset_of(self.task, "train", augment=False, seed=exp.seed)
        self.w_idx, self.a_idx = split_indices(len(train), exp.search.arch_fraction, exp.seed)
        bs, workers = exp.search.batch_size, exp.workers
        self.weight_loader = train_loader(train, self.w_idx, bs, workers, exp.seed,
                                          world.rank, world.size)  # fmt: skip
        self.arch_loader = train_loader(train, self.a_idx, bs, workers, exp.seed + 1,
                                        world.rank, world.size)  # fmt: skip
        self.score_loader = make_loader(Subset(plain, self.a_idx), bs, workers)
        per_epoch = len(self.weight_loader)
        self.steps = min(per_epoch, exp.search.steps_per_epoch or per_epoch)

    # -- the loop's hooks --------------------------------------------------------------------

    @property
    def num_epochs(self) -> int:
        return self.strategy.num_epochs

    def header(self) -> str:
        exp = self.exp
        return (
            f"search: {self.space.name}, {len(self.space.searchable_layers)} searchable layers, "
            f"strategy {exp.search.strategy}, {self.num_epochs} epochs x {self.steps} steps, "
            f"{len(self.w_idx)}/{len(self.a_idx)} weight/arch items, device {self.device}"
            + (f", {self.world.size} processes" if self.world.distributed else "")
            + f"\n{cost_line(exp.cost_model, self.table)}"
        )

    def batches(self, epoch: int, start: int) -> Iterator[dict]:
        if self.arch_stream is None:  # one stream for the run, from where a resume left it
            self.arch_stream = stream(self.arch_loader, self.arch_batches)
        return epoch_batches(self.weight_loader, epoch, start)

    def begin_epoch(self, epoch: int) -> None:
        self.strategy.new_epoch(epoch)
        self.arch_steps = 0

    def step(self, batch: dict) -> dict[str, float]:
        val = None
        if self.strategy.wants_arch_batch():
            val = move(next(self.arch_stream), self.device)
            self.arch_batches += 1
            self.arch_steps += 1
        return self.strategy.step(move(batch, self.device), val)

    def epoch_means(self) -> dict[str, float]:
        """Architecture-step stats average over the steps that had one."""
        stats = {
            key: total / max(self.arch_steps if key.startswith("arch/") else self.position.step, 1)
            for key, total in self.sums.items()
        }
        return distributed.mean_over_world(stats)

    def end_epoch(self, epoch: int, stats: dict[str, float]) -> dict[str, float]:
        self.probs()  # on every process: a refusal on rank 0 alone would leave the others waiting
        for model in self.strategy.trained_models():  # rank 0's BN statistics everywhere
            distributed.broadcast_state(model)
        return self.strategy.end_epoch(epoch, self.score_loader)

    def files_after_epoch(self) -> list[str]:
        return ["search.pt"]

    def models(self) -> list[nn.Module]:
        return self.strategy.trained_models()

    def write_pictures(self, writer: SummaryWriter, epoch: int) -> None:
        """Per-layer op entropy every epoch; the op-probability heat map and the derived
        architecture when they differ from the last ones drawn (a picture takes a second or
        more, and warm-up epochs leave the probabilities as they were), unless the experiment
        says ``pictures: false``."""
        probs = self.strategy.arch_probs()  # checked at the epoch's end (rank 0 alone draws)
        for layer, value in entropies(probs).items():
            writer.add_scalar(f"entropy/{layer}", value, epoch)
        if not self.exp.pictures:
            return
        from dnas.vis import plot  # here: matplotlib adds most of a second to a start

        shown = {layer: [round(p, 3) for p in values] for layer, values in probs.items()}
        choices = self.strategy.get_final_architecture()  # boxed: what dnas derive would write
        if (shown, choices) != (self.drawn.get("probs"), self.drawn.get("choices")):
            figure = plot.op_probability_figure(probs, plot.candidates_of(self.space), epoch,
                                                choices)  # fmt: skip
            writer.add_image("search/op_probabilities", plot.figure_to_array(figure), epoch,
                             dataformats="HWC")  # fmt: skip
        if choices != self.drawn.get("choices"):
            figure = plot.architecture_figure(self.space.with_choices(choices))
            writer.add_image("search/architecture", plot.figure_to_array(figure), epoch,
                             dataformats="HWC")  # fmt: skip
        self.drawn = {"probs": shown, "choices": choices}

    def state(self) -> dict[str, Any]:
        return {
            "num_epochs": self.num_epochs,  # dnas derive warns on an incomplete search
            "arch_batches": self.arch_batches,
            "arch_steps": self.arch_steps,
            "space": self.space.to_dict(),
            "cost_table": self.table.digest(),  # a resume refuses another table's costs
            "arch_probs": self.probs(),  # a step checkpoint's too, so derive can trust it
            "choices": (choices := self.strategy.get_final_architecture()),
            "final_cost": self.table.of_choices(choices),  # dnas derive warns off the band
            "band": self.strategy.cost_band(),
            "cost_unit": self.table.unit,
            "gradient_evidence": self.strategy.gradient_evidence(),  # dnas derive warns on noise
            "strategy": self.strategy.get_checkpointables(),
        }

    def load_state(self, state: dict[str, Any]) -> None:
        recorded = state.get("cost_table")  # checkpoints before 2026-12-05 did not record it
        if recorded is not None and recorded != self.table.digest() and not self.force:
            where = self.table.key.get("table", f"the {self.table.metric} table")
            raise ConfigError(self.exp.source, "cost_model",
                              f"the costs of {where} differ from those this search started "
                              "with; pass --force to resume with them")  # fmt: skip
        self.strategy.load_checkpointables(state["strategy"])
        # before 2026-12-01 the architecture stream's position was part of ``position``
        self.arch_batches = state.get("arch_batches", state["position"].get("arch_batches", 0))
        self.arch_steps = state["arch_steps"]

    def finish(self) -> dict:
        choices, probs = self.strategy.get_final_architecture(), self.probs()
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
            "band": list(band) if (band := self.strategy.cost_band()) else None,
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


def cost_line(cost: CostConfig, table: CostTable) -> str:
    """What the search trades against: the cost model, the table's origin (for a latency
    table, where and how it was measured), the form and its target or weight."""
    where = ", ".join(f"{k} {v}" for k, v in table.key.items() if k in ("table", "measured"))
    low, high = table.cost_range()
    aim = f"target {cost.target:g} {table.unit}" if cost.target is not None else ""
    if cost.form != "budget":
        aim = ", ".join(x for x in (f"weight {cost.weight:g}", aim) if x)
    return (
        f"cost: {table.metric} ({where or cost.type}), form {cost.form}, {aim}; the space "
        f"spans {low:.4g}..{high:.4g} {table.unit}"
    )


def summary_line(result: dict) -> str:
    """The search's closing figures: derived cost (against the target) and decisiveness."""
    unit, cost = result["cost_unit"], result["final_cost"]
    if aim := target_part(cost, unit, result["target"], result["cost_form"]):
        if moved := result["projected_layers"]:
            aim += f"; argmax {result['argmax_cost']:.4g}, {moved} layer{'s' * (moved > 1)} "
            aim += "moved into the band"
        low, high = result.get("band") or (-math.inf, math.inf)
        if not low <= cost <= high:  # the projection found no net there
            aim += (f"; no net of this space costs within the band {low:.6g}..{high:.6g} "
                    f"{unit}, the nearest ({cost:.6g}) was taken")  # fmt: skip
    text = derived_cost_line(cost, unit, aim, result["decisiveness"])
    if evidence := result.get("gradient_evidence"):
        text += (f"; gradient evidence {evidence['significant']:.1%} of alpha entries with "
                 f"|t| > 2 (noise alone {evidence['under_noise']:.1%}"
                 f"{', indistinguishable' if evidence['noise'] else ''})")  # fmt: skip
        if evidence.get("arch_epochs"):  # epochs of at least 3 architecture steps
            text += (
                f", noise in {evidence['noise_epochs']} of {evidence['arch_epochs']} "
                "architecture epochs"
            )
    return text


def run_search(exp: Experiment, out_dir: Path | str, report: Reporter | None = None,
               resume: bool = False, force: bool = False) -> dict:  # fmt: skip
    """Run (or with ``resume`` continue) a whole search into ``out_dir``; returns the content
    of ``search.json``. Under ``torchrun`` every process calls this; only rank 0 writes."""
    return SearchRun(exp, out_dir, report, resume, force).run()
