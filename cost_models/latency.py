"""Measured latency lookup tables (FBNet-style) and the ``latency`` cost model.

``build_lut`` times, in the chosen runtime (``cost_models.runtimes``: eager PyTorch or ONNX
Runtime), every candidate op of every searchable layer at its exact input shape, every fixed
layer and the head, each by ``torch.utils.benchmark`` under a ``NoiseGuard``
(``cost_models.timing``). It then times random whole networks (``calibration_nets``: half
uniform draws, half spread over the space's MAC range) and fits the entries to them
(``cost_models.calibration``): one scale per input resolution, and one overhead. The
table stays a sum of per-op entries, so the expected cost stays linear in the op
probabilities. What it cannot model: fusion across op boundaries that depends on the
neighbouring ops (ONNX Runtime fuses conv + activation inside an op, which the op's own timing
holds, but not across ops), and cache effects that depend on which op ran before. The
held-out error of the fit and ``lut check`` say how much that costs on a machine.
``recalibrate_lut`` fits the scales and overhead anew to the calibration nets timed again,
the entries kept: the table moved to the machine's present state (docs/latency.md).
"""

from __future__ import annotations

import datetime
import functools
import json
import re
import statistics
import time
import warnings
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path

import click
import numpy as np
import torch
from torch import nn

from cost_models.calibration import FIXED, Calibration, Sample, calibrate, leave_one_out
from cost_models.fidelity import BELOW_CEILING_SDS, NoiseCeiling, noise_ceiling
from cost_models.flops import FlopsCostModel
from cost_models.processes import Done, in_fresh_process
from cost_models.runtimes import Runtime, get_runtime
from cost_models.timing import (
    Job,
    NoiseGuard,
    NoisePolicy,
    NoiseReport,
    Prepare,
    Timing,
    interleave,
    measure,
    shared_medians,
)
from dnas.allocator import KEPT, allocator_in_use, keep_freed_memory, untouched
from dnas.cli import (
    CONFIG_META,
    SIZE,
    FiniteRange,
    example,
    head_outputs,
    out_opt,
    outputs_opt,
    remembered,
    set_opt,
)
from dnas.config import MAX_BATCH, Experiment
from dnas.engine.progress import counter
from dnas.engine.runtime import device_name, pick_device
from dnas.errors import ConfigError, DnasError, listing
from dnas.files import write_text_atomic
from dnas.nn.heads import build_head
from dnas.nn.network import Network
from dnas.nn.profile import _HeadOnInputs, op_costs
from dnas.registry import COMMANDS, COST_MODELS, HEADS, RUNTIMES
from dnas.schema import from_dict, is_finite_number, is_integer, read_json, to_dict
from dnas.search.budget import cheapest_within, draw_ops, tilted_probs
from dnas.search.cost_model import CostModel, CostTable
from dnas.space.choices import uniform_choices
from dnas.space.graph import Layer, SearchSpace, space_from_dict
from dnas.space.ops import build_op, parse_op

PICK_LEVELS = (0.25, 0.5, 0.75)  # MAC levels of the table's own picks (``picked_choices``)
PICK_BAND = 0.01
SPEED_NETS = 6  # calibration nets ``lut check`` times again to compare the machine's speed
MIN_REFIT = 8  # nets needed to refit a table's scales (``refit_scores``, ``recalibrate_lut``)
MAX_MS = 1e9  # an entry above this (11 days) is not a timing: refused before it overflows a sum


def parts_ms(table: dict, choices: dict[str, str]) -> float:
    return sum(table["fixed"].values()) + sum(table["layers"][n][op] for n, op in choices.items())


def predict_ms(table: dict, choices: dict[str, str]) -> float:
    """Predicted latency of the architecture that picks ``choices``."""
    return table["scale"] * parts_ms(table, choices) + table["overhead_ms"]


@dataclass
class Bench:
    """Where and how timings are taken: the runtime (on its device and threads), the shortest
    time spent on one timing, the noise policy, and whether the timing processes keep freed
    memory (``dnas.allocator``; otherwise they leave the allocator as a plain process has it)."""

    runtime: Runtime
    min_time: float = 0.1
    policy: NoisePolicy = field(default_factory=NoisePolicy)
    keep_memory: bool = False

    def prepare_allocator(self) -> str:
        """Keep freed memory in this process if the bench says so (a process that already
        keeps it cannot go back), and say what its allocator does."""
        return keep_freed_memory() if self.keep_memory else allocator_in_use()

    def time(self, fn: Callable[[], object]) -> Timing:
        """One timing of ``fn``: at least ``min_time`` s (and 4 blocks of calls)."""
        fn()  # the first call allocates and (ONNX Runtime) plans; never timed
        return measure(fn, self.runtime.threads, self.min_time)

    def time_in_turn(self, fns: list[Callable[[], object]],
                     between: Callable[[], None] = lambda: None) -> list[Timing]:  # fmt: skip
        """Timings of ``fns`` taken in turn (``interleave``): about ``min_time`` s each."""
        for fn in fns:
            fn()  # as in ``time``: the first call is never timed
        return interleave(fns, self.runtime.threads, self.min_time, between)

    def job(
        self, prepare: Callable[[], Callable[[], object]]
    ) -> Callable[[], Callable[[], object]]:
        """``prepare`` as a job: prepared once for every round where the runtime's preparation
        is dear (an ONNX export and a session), afresh each time otherwise (no tensors held)."""
        return functools.cache(prepare) if self.runtime.reuse_prepared else prepare


def time_forwards(
    bench: Bench, modules: dict[str, nn.Module], inputs: list[torch.Tensor]
) -> dict[str, float]:
    """Milliseconds of one forward pass of each module in the bench's runtime: the median of
    ``rounds`` timings, each of all the modules in turn (``Bench.time_in_turn``) so that a
    change of the machine's speed falls on every module alike (no noise guard; for reports,
    not tables)."""
    bench.prepare_allocator()
    fns = [bench.runtime.prepare(module, inputs) for module in modules.values()]
    rounds = [bench.time_in_turn(fns) for _ in range(bench.policy.rounds)]
    return {name: statistics.median(timings[i].median_ms for timings in rounds)
            for i, name in enumerate(modules)}  # fmt: skip


def cpu_bench(runtime: str = "torch") -> Bench:
    """Timings in ``runtime`` on the CPU with torch's thread count and the CLI's defaults."""
    return Bench(get_runtime(runtime, torch.device("cpu"), torch.get_num_threads()))


def network_job(bench: Bench, space: SearchSpace, choices: dict[str, str], num_outputs: int,
                x: torch.Tensor) -> Prepare:  # fmt: skip
    """What prepares a whole network of ``choices`` in the bench's runtime."""
    return bench.job(
        lambda: bench.runtime.prepare(Network(space.with_choices(choices), num_outputs), [x])
    )


def warm_up_seconds(min_time: float) -> float:
    """How long a pass warms up on random nets: 20 timings' worth of ``--min-time`` and at most
    2 s (2 s at the default 0.1 s), so rough, quick timings get a short warm-up."""
    return min(20 * min_time, 2.0)


def warm_up(
    bench: Bench,
    space: SearchSpace,
    input_hw: tuple[int, int],
    num_outputs: int,
    x: torch.Tensor,
    rng: np.random.Generator,
) -> None:
    """Run whole networks for a while (discarded): the first passes of a process are slower
    (thread pools, CPU clocks), and the allocator serves a tensor size faster once it has
    freed one that large (glibc raises its mmap threshold), so the largest network runs first:
    without it, nets with many expansion-6 ops timed 5-14 % slower in a fresh process. Then
    random nets for :func:`warm_up_seconds`."""
    costs, _ = op_costs(space, input_hw, num_outputs)
    largest = {lay.name: max(lay.candidates, key=lambda op, n=lay.name: costs[n][op][0])
               for lay in space.searchable_layers}  # fmt: skip
    for _ in range(3):
        network_job(bench, space, largest, num_outputs, x)()()
    end = time.perf_counter() + warm_up_seconds(bench.min_time)
    while time.perf_counter() < end:
        network_job(bench, space, uniform_choices(space.searchable_layers, rng), num_outputs,
                    x)()()  # fmt: skip


def op_jobs(bench: Bench, space: SearchSpace, input_hw: tuple[int, int], num_outputs: int,
            batch: int) -> list[tuple[Layer | None, str, Job]]:  # fmt: skip
    """(layer, op, job) for every candidate of every layer, then (None, "head", job)."""
    shapes, device = space.infer_shapes(*input_hw), bench.runtime.device
    jobs: list[tuple[Layer | None, str, Job]] = []
    for layer in space.layers:
        cin, h, w = shapes[layer.input]
        for op in layer.candidates:

            def prepare(op=op, layer=layer, shape=(cin, h, w)):  # noqa: ANN202
                module = build_op(parse_op(op), shape[0], layer.width, layer.stride)
                return bench.runtime.prepare(module, [torch.randn(batch, *shape, device=device)])

            jobs.append((layer, op, (f"{layer.name}/{op}", bench.job(prepare))))

    def head():  # noqa: ANN202
        feats = [torch.randn(batch, *shapes[n], device=device) for n in space.head_inputs()]
        return bench.runtime.prepare(_HeadOnInputs(build_head(space, num_outputs)), feats)

    jobs.append((None, "head", ("head", bench.job(head))))
    return jobs


@dataclass(frozen=True)
class TimingPass:
    """What one pass of a build or check times, as data that a fresh process rebuilds its
    jobs from: every candidate op and the head (``ops``, a build), in chunks between timings
    of the reference net (``reference_choices``), then the named whole networks, timed in
    turn with the reference net among them (``NoiseGuard.run_interleaved``)."""

    bench: Bench
    space: SearchSpace
    input_hw: tuple[int, int]
    num_outputs: int
    batch: int
    nets: list[tuple[str, dict[str, str]]]
    ops: bool
    what: str  # the command, named in a noise error
    warm_up_seed: int

    def size(self) -> int:
        """The number of jobs a pass times (the op jobs are only made here, not run)."""
        ops = op_jobs(self.bench, self.space, self.input_hw, self.num_outputs, self.batch)
        return (len(ops) if self.ops else 0) + len(self.nets)


Passes = tuple[list[Timing], NoiseReport, str]  # timings, noise, the allocator they ran under


def time_pass(plan: TimingPass, rounds: int, done: Done | None) -> Passes:
    """``rounds`` passes of ``plan`` in this process under one noise guard, after a warm-up;
    with what the allocator did while they ran (``Bench.prepare_allocator``)."""
    bench, space = plan.bench, plan.space
    allocator = bench.prepare_allocator()
    x = torch.randn(plan.batch, space.in_channels, *plan.input_hw, device=bench.runtime.device)
    warm_up(bench, space, plan.input_hw, plan.num_outputs, x,
            np.random.default_rng(plan.warm_up_seed))  # fmt: skip
    reference = network_job(bench, space, reference_choices(space), plan.num_outputs, x)()
    guard = NoiseGuard(bench.time, reference, replace(bench.policy, rounds=rounds), plan.what,
                       sweep=bench.time_in_turn)  # fmt: skip
    ops = ([job for _, _, job in op_jobs(bench, space, plan.input_hw, plan.num_outputs,
                                         plan.batch)] if plan.ops else [])  # fmt: skip
    nets = [(name, network_job(bench, space, c, plan.num_outputs, x)) for name, c in plan.nets]
    timings = guard.run(ops, done) if ops else []
    timings += guard.run_interleaved(nets, done) if nets else []
    return timings, guard.report, allocator


def fresh_passes(policy: NoisePolicy) -> bool:
    """Whether a build or check under ``policy`` runs each pass in a process of its own."""
    return policy.fresh_processes and policy.rounds > 1


def time_passes(plan: TimingPass, label: str | None) -> Passes:
    """Every job of ``plan`` over the bench's rounds, each round in a fresh process
    (``cost_models.processes``: a process's memory layout biases its timings) unless the
    policy says otherwise; a job's timing is its median over the rounds, each round's shared
    speed divided out (``shared_medians``; the ops' and the nets' apart); the allocator as
    the processes that timed report it. ``label``: the progress counter's (None: silent)."""
    policy = plan.bench.policy
    with counter(plan.size() * policy.rounds, label) if label else nullcontext(None) as done:
        if not fresh_passes(policy):
            return time_pass(plan, policy.rounds, done)
        passes = [in_fresh_process(time_pass, (plan, 1), done) for _ in range(policy.rounds)]
    ops = plan.size() - len(plan.nets)  # the ops and the nets each share their passes' speeds
    timings = shared_medians([t[:ops] for t, _, _ in passes])
    timings += shared_medians([t[ops:] for t, _, _ in passes])
    allocators = " / ".join(dict.fromkeys(a for _, _, a in passes))  # one, unless they differ
    return timings, NoiseReport.merged([report for _, report, _ in passes]), allocators


def group_of(table: dict, layer: str) -> str:
    """The calibration group of a searchable layer's entries: its input resolution."""
    _, h, w = table["shapes"][layer]
    return f"{h}x{w}"


def group_parts(table: dict, space: SearchSpace, choices: dict[str, str]) -> dict[str, float]:
    """Per calibration group, the summed entries that the architecture ``choices`` picks."""
    parts = {FIXED: sum(table["fixed"].values())}
    for layer in space.searchable_layers:
        group = group_of(table, layer.name)
        parts[group] = parts.get(group, 0.0) + table["layers"][layer.name][choices[layer.name]]
    return parts


def calibration_text(fit: dict, calibration: int) -> str:
    """What ``lut build`` says of its calibration: the fit's error on its nets and on the
    held-out ones, and the held-out nets' noise ceiling (the tau only where theirs is given)."""
    if not calibration:
        return "not calibrated (--calibration 0)"
    held = ""
    if fit["heldout_mape"] is not None:
        tau, ceiling = fit["heldout_tau"], fit.get("noise_ceiling")
        held = f", held-out MAPE {fit['heldout_mape']:.2f} %"
        held += f" tau {tau:.3f}" if tau is not None else ""
        if ceiling:
            ranked = (f" tau {ceiling['kendall_tau']:.3f} +- {ceiling['kendall_tau_sd']:.3f},"
                      if tau is not None else "")  # fmt: skip
            held += f"; noise ceiling{ranked} MAPE {ceiling['mape']:.2f} %"
    return f"calibrated on {calibration} networks (fit MAPE {fit['fit_mape']:.2f} %{held})"


def calibration_nets(space: SearchSpace, input_hw: tuple[int, int], num_outputs: int,
                     count: int, rng: np.random.Generator) -> list[dict[str, str]]:  # fmt: skip
    """The whole networks a build times to fit its entries: every other one drawn uniformly
    (the kind of net ``lut check`` scores), the rest from the maximum-entropy distribution at MAC
    levels spread evenly over the space's range (``tilted_probs``). Uniform draws all cost
    about the space's mean, so a fit on them alone extrapolates its overhead and scales to the
    small and the large nets a budget search ends on."""
    macs = FlopsCostModel().build(space, input_hw, num_outputs)
    if not macs.layers:  # a fixed net: every calibration net is the same one
        return [{} for _ in range(count)]
    low, high = macs.cost_range()
    spread = count // 2
    levels = iter(rng.permutation((np.arange(spread) + 0.5) / spread))
    nets = []
    for i in range(count):
        if i % 2 == 0:
            nets.append(uniform_choices(space.searchable_layers, rng))
            continue
        nets.append(draw_ops(macs, rng, tilted_probs(macs, low + next(levels) * (high - low))))
    return nets


def build_lut(space: SearchSpace, input_hw: tuple[int, int], num_outputs: int, batch: int,
              bench: Bench, calibration: int = 40, seed: int = 0,
              progress: bool = True) -> dict:  # fmt: skip
    """The latency table of ``space`` on this machine and runtime (see the module docstring)."""
    op_costs(space, input_hw, num_outputs)  # size checks before anything is allocated
    device = bench.runtime.device
    rng = np.random.default_rng(seed)
    entries = op_jobs(bench, space, input_hw, num_outputs, batch)  # their order, not run here
    nets = calibration_nets(space, input_hw, num_outputs, calibration, rng)
    plan = TimingPass(bench, space, input_hw, num_outputs, batch,
                      [(f"network {i + 1}", c) for i, c in enumerate(nets)], ops=True,
                      what=f"lut build --space {space.name}", warm_up_seed=seed + 1000)  # fmt: skip
    if not bench.keep_memory and not fresh_passes(bench.policy) and allocator_in_use() == KEPT:
        warnings.warn(f"{plan.what}: timing in this process, which keeps freed memory (a search, "
                      "training or evaluation ran in it), so the table is a kept process's "
                      "(meta.allocator); time in fresh processes (rounds > 1) for a plain "
                      "process's", stacklevel=2)  # fmt: skip
    timings, noise, allocator = time_passes(plan, "lut build: timings" if progress else None)
    shapes = space.infer_shapes(*input_hw)
    table: dict = {"fixed": {}, "layers": {}, "shapes": {}}
    for (layer, op, _), timing in zip(entries, timings, strict=False):
        if layer is None:
            table["fixed"]["head"] = timing.median_ms
            continue
        table["shapes"][layer.name] = list(shapes[layer.input])
        if layer.searchable:
            table["layers"].setdefault(layer.name, {})[op] = timing.median_ms
        else:
            table["fixed"][layer.name] = timing.median_ms
    measured = [t.median_ms for t in timings[len(entries) :]]
    table, fit = fit_entries(table, space, nets, timings[len(entries) :])
    table["meta"] = {
        "space": space.name, "space_digest": space.digest(), "space_dict": space.to_dict(),
        "head": head_record(space), "input": list(input_hw),
        "num_outputs": num_outputs, "batch": batch, "device": device.type,
        "device_name": device_name(device),
        "runtime": bench.runtime.name, "runtime_version": bench.runtime.version,
        "threads": bench.runtime.threads, "torch": torch.__version__, "dtype": "float32",
        "allocator": allocator,
        "min_time": bench.min_time, "rounds": bench.policy.rounds,
        "fresh_processes": fresh_passes(bench.policy), "calibration": calibration,
        "calibration_fit": fit, "noise": noise.to_dict(),
        "calibration_nets": [{"choices": c, "measured_ms": round(ms, 5)}
                             for c, ms in zip(nets, measured, strict=True)],
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }  # fmt: skip
    return table


def fit_entries(raw: dict, space: SearchSpace, nets: list[dict[str, str]],
                timings: list[Timing]) -> tuple[dict, dict]:  # fmt: skip
    """The entries ``raw`` (as timed: ``fixed``, ``layers``, ``shapes``) fitted to the whole
    ``nets`` measured as ``timings`` (``calibrate``, the last quarter held out), and the fit's
    record for ``meta.calibration_fit``, with the held-out nets' noise ceiling: the held-out
    tau and MAPE a table without error would get against their measurements (None with one
    round or no net held out)."""
    measured = [t.median_ms for t in timings]
    fit = calibrate([Sample(group_parts(raw, space, c), ms)
                     for c, ms in zip(nets, measured, strict=True)],
                    group_parts(raw, space, cheapest_choices(raw, space)))  # fmt: skip
    held = [t.passes for t in timings[len(timings) - fit.heldout_nets :]]
    ceiling = noise_ceiling(held) if fit.heldout_nets else None
    record = {**fit.to_dict(), "noise_ceiling": ceiling.to_dict() if ceiling else None}
    return apply_calibration(raw, space, fit), record


def entries_as_timed(table: dict) -> dict | None:
    """The table's entries before its calibration (``isolated``, which ``apply_calibration``
    keeps) with their shapes, or None where they cannot start a refit (``isolated_problem``)."""
    if isolated_problem(table):
        return None
    isolated = table["isolated"]
    return {"fixed": isolated["fixed"], "layers": isolated["layers"], "shapes": table["shapes"]}


def isolated_problem(table: dict) -> tuple[str, str] | None:
    """Why a table's ``isolated`` entries cannot start a refit, as (key, what was expected):
    they must time the same fixed entries and ops as ``fixed`` and ``layers``, in
    milliseconds. None where they can."""
    isolated = table.get("isolated")
    if not (isinstance(isolated, dict) and isinstance(isolated.get("fixed"), dict)
            and isinstance(isolated.get("layers"), dict)):  # fmt: skip
        return "isolated", ("a mapping with fixed and layers, the entries as timed, which a "
                            "refit starts from (tables from dnas lut build keep them; build "
                            "the table again)")  # fmt: skip
    if set(isolated["fixed"]) != set(table["fixed"]):
        return "isolated.fixed", "timings of the same entries as fixed"
    entries = [("isolated.fixed", isolated["fixed"])]
    for name, ops in table["layers"].items():
        timed = isolated["layers"].get(name)
        if not isinstance(timed, dict) or set(timed) != set(ops):
            return f"isolated.layers.{name}", f"timings of the same ops as layers.{name}"
        entries.append((f"isolated.layers.{name}", timed))
    for key, timed in entries:
        for op, ms in timed.items():
            if not is_finite_number(ms) or not 0 <= ms <= MAX_MS:
                return f"{key}.{op}", f"milliseconds in [0, {MAX_MS:g}], got {ms!r}"
    return None


def refit_nets_problem(meta: dict, space: SearchSpace) -> str | None:
    """Why the table's calibration nets cannot be timed again for a refit (at least
    ``MIN_REFIT``, every one buildable by ``space``), or None where they can."""
    recorded = meta.get("calibration_nets")
    count = len(recorded) if isinstance(recorded, list) else 0
    if count < MIN_REFIT:
        return (f"expected a list of {MIN_REFIT} or more networks (the build's --calibration), "
                f"got {count}")  # fmt: skip
    unusable = count - len(buildable_nets(meta, space))
    if unusable:
        return (f"expected networks this space can build, each with its choices and a positive "
                f"measured_ms; {unusable} of {count} are not")  # fmt: skip
    return None


def recalibrate_lut(table: dict, space: SearchSpace, bench: Bench, source: str,
                    seed: int = 2) -> dict:  # fmt: skip
    """``table`` with its scales and overhead fitted anew to its own calibration nets
    (``meta.calibration_nets``, the same quarter held out) timed now, as the table was timed
    (runtime, allocator), its entries kept as timed: the table moved into the machine's
    present speed and spell for the price of timing the nets alone. The fit it replaces is
    kept in ``meta.recalibrations``, with the nets' time now over their time then."""
    meta = table["meta"]
    if problem := isolated_problem(table):
        key, expected = problem
        raise ConfigError(source, key, f"expected {expected}")
    if problem := refit_nets_problem(meta, space):
        raise ConfigError(source, "meta.calibration_nets", problem)
    raw, nets = entries_as_timed(table), buildable_nets(meta, space)
    bench = replace(bench, keep_memory=recorded_allocator(meta) == KEPT)
    choices = [n["choices"] for n in nets]
    plan = TimingPass(bench, space, tuple(meta["input"]), meta["num_outputs"], meta["batch"],
                      [(f"calibration net {i + 1}", c) for i, c in enumerate(choices)],
                      ops=False, what=f"lut recalibrate --table {source}",
                      warm_up_seed=seed + 1000)  # fmt: skip
    timings, noise, allocator = time_passes(plan, "lut recalibrate: timings")
    fitted, fit = fit_entries(raw, space, choices, timings)
    measured = [t.median_ms for t in timings]
    ratio = statistics.median(ms / n["measured_ms"] for ms, n in zip(measured, nets, strict=True))
    history = meta.get("recalibrations", [])  # a list (``_check_table``)
    fitted["meta"] = meta | {
        "calibration_fit": fit, "noise": noise.to_dict(), "allocator": allocator,
        "calibration_nets": [{"choices": c, "measured_ms": round(ms, 5)}
                             for c, ms in zip(choices, measured, strict=True)],
        "recalibrations": [*history, {
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "device_name": device_name(bench.runtime.device), "nets_vs_before": round(ratio, 4),
            "rounds": bench.policy.rounds, "fresh_processes": fresh_passes(bench.policy),
            "min_time": bench.min_time, "torch": torch.__version__,
            "runtime_version": bench.runtime.version,
            "fit_before": meta.get("calibration_fit"),
            "allocator_before": recorded_allocator(meta)}],
    }  # fmt: skip
    return fitted


def refit_scores(table: dict, space: SearchSpace, nets: list[dict[str, str]],
                 measured: np.ndarray, ceiling: NoiseCeiling | None) -> dict | None:  # fmt: skip
    """``lut check``'s nets as the table's entries predict them with scales and overhead
    refitted to the other checked nets (``leave_one_out``): their tau and MAPE, and the tau's
    distance from the noise ceiling, and whether ``recalibrate_lut`` can refit the table. Near
    the ceiling while the table's own tau is far below it, the entries hold and only their
    scales and overhead no longer fit the machine. None where the table keeps no usable
    entries as timed, or for fewer than ``MIN_REFIT`` nets."""
    raw = entries_as_timed(table)
    if raw is None or len(nets) < MIN_REFIT:
        return None
    samples = [Sample(group_parts(raw, space, c), float(ms))
               for c, ms in zip(nets, measured, strict=True)]  # fmt: skip
    pred = leave_one_out(samples, group_parts(raw, space, cheapest_choices(raw, space)))
    tau = kendall_tau(pred, measured)
    gap = ceiling.tau_gap(tau) if ceiling else None
    return {"kendall_tau": round(tau, 4), "mape": round(_mape(pred, measured), 4),
            "tau_vs_ceiling_sds": round(gap, 2) if gap is not None else None,
            # whether ``lut recalibrate`` can refit this table
            "recalibratable": refit_nets_problem(table["meta"], space) is None}  # fmt: skip


def lut_cost_table(lut: dict, space: SearchSpace, key: dict | None = None) -> CostTable:
    """A table's entries for ``space`` as a ``CostTable`` (ms), the linear correction and the
    overhead folded in, so that ``of_choices`` is ``predict_ms``."""
    scale = lut["scale"]
    layers = {lay.name: {op: scale * lut["layers"][lay.name][op] for op in lay.candidates}
              for lay in space.searchable_layers}  # fmt: skip
    fixed = scale * sum(lut["fixed"].values()) + lut["overhead_ms"]
    return CostTable(LatencyCostModel.metric, LatencyCostModel.unit, fixed, layers, key=key or {})


def mac_bands(macs: CostTable) -> dict[float, tuple[float, float]]:
    """``{level: (low, high)}``: the MACs within ``PICK_BAND`` of each of ``PICK_LEVELS`` of
    the space's MAC range (``macs`` is its FLOPs table)."""
    low, high = macs.cost_range()
    goals = {level: low + level * (high - low) for level in PICK_LEVELS}
    return {level: (g * (1 - PICK_BAND), g * (1 + PICK_BAND)) for level, g in goals.items()}


def picked_choices(lut: dict, space: SearchSpace) -> dict[float, dict[str, str]]:
    """The nets a latency-aware search is drawn to: ``{level: choices}``, at each of the
    ``mac_bands`` the net the table predicts fastest among those of that many MACs (levels
    without a net are left out). An optimiser seeks out the nets whose entries err low,
    which random nets rarely are (the optimiser's curse), so ``lut check`` times these too."""
    meta = lut["meta"]
    macs = FlopsCostModel().build(space, tuple(meta["input"]), meta["num_outputs"])
    ms = lut_cost_table(lut, space)
    picks = {level: cheapest_within(ms, macs, *band) for level, band in mac_bands(macs).items()}
    return {level: c for level, c in picks.items() if c is not None}


def head_record(space: SearchSpace) -> dict | None:
    """The head a table timed (type, inputs, options), to refuse a search with another."""
    if space.head is None:
        return None
    return normal_head({"type": space.head.type, "inputs": list(space.head.inputs),
                        **space.head.options})  # fmt: skip


def normal_head(record: dict | None) -> dict | None:
    """A head record with its type's defaults filled in, so that options written out at their
    defaults compare equal to options left out. A record of an unknown type or with bad options
    stays as written: it then differs from any head a search builds, which is reported. (An
    older table, which recorded its head as written, is filled with today's defaults.)"""
    if record is None:
        return None
    options = {k: v for k, v in record.items() if k not in ("type", "inputs")}
    try:
        filled = from_dict(HEADS.get(record["type"]).Options, options, "<table>", "head")
    except DnasError:
        return record
    return {"type": record["type"], "inputs": list(record["inputs"]), **to_dict(filled)}


def built_shapes(lut: dict, source: Path) -> dict[str, tuple[int, int, int]] | None:
    """Every node's output shape in the space the table was built from, or None for a table
    that did not record its space: an op's name and input shape do not fix its output width."""
    recorded = lut["meta"].get("space_dict")  # a mapping if there (``_check_table``)
    if recorded is None:
        return None
    space = space_from_dict(recorded, source=f"{source} (meta.space_dict)")
    return space.infer_shapes(*lut["meta"]["input"])


def reference_choices(space: SearchSpace) -> dict[str, str]:
    """The reference net of a noise guard: the first candidate of every layer (fixed, so two
    builds of one space watch the same net)."""
    return {layer.name: layer.candidates[0] for layer in space.searchable_layers}


def cheapest_choices(table: dict, space: SearchSpace) -> dict[str, str]:
    ops = table["layers"]
    return {lay.name: min(ops[lay.name], key=ops[lay.name].get) for lay in space.searchable_layers}


def apply_calibration(table: dict, space: SearchSpace, fit: Calibration) -> dict:
    """The table with every searchable entry multiplied by its group's scale and the fitted
    overhead (the fixed entries stay as timed); the timings of the ops alone are kept under
    ``isolated``."""
    layers = {}
    for layer in space.searchable_layers:
        scale = fit.scales.get(group_of(table, layer.name), 1.0)
        layers[layer.name] = {op: scale * ms for op, ms in table["layers"][layer.name].items()}
    return {"fixed": dict(table["fixed"]), "layers": layers, "shapes": table["shapes"],
            "scale": 1.0, "overhead_ms": fit.overhead_ms,
            "isolated": {"fixed": table["fixed"], "layers": table["layers"]}}  # fmt: skip


def check_lut(table: dict, space: SearchSpace, samples: int, bench: Bench, seed: int = 1,
              what: str = "lut check") -> dict:  # fmt: skip
    """Predicted vs measured latency of ``samples`` random architectures and of the table's
    own picks (``picked_choices``), in the table's runtime, under the same noise guard as the
    build; a few of the build's calibration nets are timed again for the machine's speed
    (``machine_speed``); the random nets' passes give the check's ``noise_ceiling``. Nets are
    timed as the table's were: keeping freed memory or not (``dnas.allocator``)."""
    meta = table["meta"]
    bench = replace(bench, keep_memory=recorded_allocator(meta) == KEPT)
    rng = np.random.default_rng(seed)
    nets = [uniform_choices(space.searchable_layers, rng) for _ in range(samples)]
    picks = picked_choices(table, space)
    gauges = gauge_nets(meta, space)
    checked = [(f"network {i + 1}", c) for i, c in enumerate(nets)]
    checked += [(f"picked net at {100 * level:.0f} % of the MACs", c) for level, c in picks.items()]
    # all of them timed in turn (``NoiseGuard.run_interleaved``): the gauges share their speeds
    named = checked + [(f"calibration net {i + 1} again", n["choices"])
                       for i, n in enumerate(gauges)]  # fmt: skip
    plan = TimingPass(bench, space, tuple(meta["input"]), meta["num_outputs"], meta["batch"],
                      named, ops=False, what=what, warm_up_seed=seed + 1000)  # fmt: skip
    timings, noise, allocator = time_passes(plan, "lut check: timings")
    rows = [{"predicted_ms": predict_ms(table, c), "measured_ms": t.median_ms,
             "spread": round(t.spread, 4)}
            for (_, c), t in zip(named, timings, strict=True)]  # fmt: skip
    rows, gauge_rows = rows[: len(checked)], rows[len(checked) :]
    rows, picked = rows[:samples], rows[samples:]
    for row, (level, choices) in zip(picked, picks.items(), strict=True):
        row |= {"level": level, "choices": choices}
    pred = np.array([r["predicted_ms"] for r in rows])
    real = np.array([r["measured_ms"] for r in rows])
    tau = kendall_tau(pred, real)
    speed = machine_speed(meta, noise.start_ms, gauges, gauge_rows)
    # the same check with the machine's speed now expressed at its speed during the build:
    # what the table gets wrong, rather than the machine (no gauge: as measured)
    ratio = speed["ratio"] or 1.0
    steady = real / ratio
    picked_pred = np.array([r["predicted_ms"] for r in picked])
    picked_real = np.array([r["measured_ms"] for r in picked])
    picked_steady = picked_real / ratio
    ceiling = noise_ceiling([t.passes for t in timings[:samples]])
    gap = ceiling.tau_gap(tau) if ceiling else None
    return {"kendall_tau": tau, "mape": _mape(pred, real),
            "noise_ceiling": ceiling.to_dict() if ceiling else None,
            "tau_vs_ceiling_sds": round(gap, 2) if gap is not None else None,
            "refit": refit_scores(table, space, nets, real, ceiling),
            # the machine's speed and MAPE "at build speed" are then against the last refit
            "recalibrated": bool(meta.get("recalibrations")),
            "mape_at_build_speed": _mape(pred, steady),
            "samples": samples, "runtime": bench.runtime.name, "noise": noise.to_dict(),
            "allocator": {"table": recorded_allocator(meta), "check": allocator},
            "machine": {"table": meta.get("device_name"),
                        "check": device_name(bench.runtime.device)},
            "fresh_processes": fresh_passes(bench.policy),
            "speed_vs_build": speed["ratio"], "speed_from": speed["source"],
            "gauge_nets": [{"build_ms": n["measured_ms"], "measured_ms": r["measured_ms"],
                            "spread": r["spread"]}
                           for n, r in zip(gauges, gauge_rows, strict=True)],
            "reference_vs_build": speed["reference"], "rows": rows, "picked": picked,
            "picked_mape": _mape(picked_pred, picked_real) if picked else None,
            "picked_mape_at_build_speed": (_mape(picked_pred, picked_steady) if picked
                                           else None)}  # fmt: skip


def gauge_nets(meta: dict, space: SearchSpace) -> list[dict]:
    """Up to ``SPEED_NETS`` of the table's calibration nets that ``space`` can build
    (``buildable_nets``), spread over the build's order: timed again by ``lut check``, they
    gauge the machine's speed against the build."""
    usable = buildable_nets(meta, space)
    if len(usable) <= SPEED_NETS:
        return usable
    # spread over the list: builds before 2026-12-06 timed their nets one after the other
    return [usable[round(i * (len(usable) - 1) / (SPEED_NETS - 1))] for i in range(SPEED_NETS)]


def buildable_nets(meta: dict, space: SearchSpace) -> list[dict]:
    """The table's calibration nets that ``space`` can build, with a positive time, in order;
    malformed entries are skipped."""
    nets = meta.get("calibration_nets")
    if not isinstance(nets, list):
        return []
    layers = {lay.name: set(lay.candidates) for lay in space.searchable_layers}

    def buildable(net: object) -> bool:
        if not (isinstance(net, dict) and is_finite_number(net.get("measured_ms"))
                and net["measured_ms"] > 0 and isinstance(net.get("choices"), dict)):  # fmt: skip
            return False
        choices = net["choices"]
        return set(choices) == set(layers) and all(
            isinstance(op, str) and op in layers[name] for name, op in choices.items())  # fmt: skip

    return [n for n in nets if buildable(n)]


def machine_speed(meta: dict, reference_now: float | None, gauges: list[dict],
                  gauge_rows: list[dict]) -> dict:  # fmt: skip
    """How many times as long nets take now as at the build: the median over the gauge nets
    (``gauge_nets``, timed again as ``gauge_rows``) of their time now over their time then,
    else (no such nets) the reference net's ratio. Measured: the reference net alone can move
    the other way (1.04-1.09x its build time while 12 calibration nets took 0.90-1.00x theirs,
    three fresh processes): each process's memory layout biases nets differently
    (``cost_models.processes``), and so do a shared machine's changes of speed."""
    noise = meta.get("noise") if isinstance(meta.get("noise"), dict) else {}
    built_at = noise.get("reference_start_ms")  # older tables: their one guard's first timing
    if not is_finite_number(built_at):
        built_at = noise.get("reference_ms")
        built_at = built_at[0] if isinstance(built_at, list) and built_at else None
    reference = (reference_now / built_at if reference_now and is_finite_number(built_at)
                 and built_at > 0 else None)  # fmt: skip
    if gauges:
        ratios = [r["measured_ms"] / n["measured_ms"]
                  for n, r in zip(gauges, gauge_rows, strict=True)]  # fmt: skip
        source = f"{len(ratios)} calibration net{'s' * (len(ratios) > 1)}"
        return {"ratio": statistics.median(ratios), "source": source, "reference": reference}
    return {"ratio": reference, "source": "the reference net" if reference else None,
            "reference": reference}  # fmt: skip


def kendall_tau(predicted: np.ndarray, measured: np.ndarray) -> float:
    """Kendall's tau of predicted against measured times (nan for fewer than 2)."""
    if len(measured) < 2:
        return float("nan")
    import scipy.stats  # here, not at import: scipy.stats adds seconds to every CLI start

    return float(scipy.stats.kendalltau(predicted, measured).statistic)


def _mape(predicted: np.ndarray, measured: np.ndarray) -> float:
    """Mean absolute percentage error of ``predicted`` against ``measured``."""
    return float(100 * np.mean(np.abs(predicted - measured) / measured))


def read_lut(path: Path) -> dict:
    table = read_json(path, "latency table")
    needed = {"meta", "fixed", "layers", "scale", "overhead_ms"}
    if not isinstance(table, dict) or not needed <= set(table):
        raise DnasError(f"{path}: not a dnas latency table (needs {', '.join(sorted(needed))}; "
                        "build one with 'dnas lut build')")  # fmt: skip
    _check_table(table, str(path))
    return table


def is_count(value: object) -> bool:
    return is_integer(value, 1)


def _check_ms(entries: object, source: str, key: str) -> None:
    """A mapping of names to finite, non-negative milliseconds."""
    if not isinstance(entries, dict):
        raise ConfigError(source, key, "expected a mapping of names to milliseconds")
    for name, ms in entries.items():
        if not is_finite_number(ms) or not 0 <= ms <= MAX_MS:
            raise ConfigError(
                source, f"{key}.{name}", f"expected milliseconds in [0, {MAX_MS:g}], got {ms!r}"
            )


def _check_table(table: dict, source: str) -> None:
    """The shape and types of a table from ``dnas lut build``; a one-line error naming the key."""
    _check_ms(table["fixed"], source, "fixed")
    if not isinstance(table["layers"], dict):
        raise ConfigError(source, "layers", "expected a mapping of layer names to op timings")
    for name, ops in table["layers"].items():
        _check_ms(ops, source, f"layers.{name}")
    shapes = table.get("shapes", {})
    if not isinstance(shapes, dict):
        raise ConfigError(source, "shapes", "expected a mapping of layer names to [C, H, W]")
    for name, shape in shapes.items():
        if not isinstance(shape, list) or len(shape) != 3 or not all(map(is_count, shape)):
            raise ConfigError(source, f"shapes.{name}", f"expected [C, H, W], got {shape!r}")
    if not is_finite_number(table["scale"]) or not 0 < table["scale"] <= MAX_MS:
        raise ConfigError(source, "scale", f"expected a positive number, got {table['scale']!r}")
    if not is_finite_number(table["overhead_ms"]) or abs(table["overhead_ms"]) > MAX_MS:
        raise ConfigError(
            source,
            "overhead_ms",
            f"expected milliseconds (a finite number), got {table['overhead_ms']!r}",
        )
    meta = table["meta"]
    if not isinstance(meta, dict):
        raise ConfigError(source, "meta", "expected a mapping (space, input, batch, device, ...)")
    checks = {
        "input": (lambda v: isinstance(v, list) and len(v) == 2 and all(map(is_count, v)),
                  "[height, width]"),
        "num_outputs": (is_count, "a positive integer"),
        "batch": (is_count, "a positive integer"),
        "threads": (is_count, "a positive integer"),
        "device": (lambda v: v in ("cpu", "cuda"), "cpu or cuda"),
        "space": (lambda v: isinstance(v, str) and bool(v), "a space name"),
    }  # fmt: skip
    for key, (ok, expected) in checks.items():
        if key not in meta:
            raise ConfigError(source, f"meta.{key}", "missing required key")
        if not ok(meta[key]):
            raise ConfigError(source, f"meta.{key}", f"expected {expected}, got {meta[key]!r}")
    if not isinstance(meta.get("recalibrations", []), list):
        raise ConfigError(source, "meta.recalibrations", "expected the list that dnas lut "
                          f"recalibrate writes, got {meta['recalibrations']!r}")  # fmt: skip
    if not isinstance(meta.get("space_dict", {}), dict):
        raise ConfigError(source, "meta.space_dict", "expected the space's mapping that dnas lut "
                          f"build writes, got {meta['space_dict']!r}")  # fmt: skip
    head = meta.get("head")
    if head is not None and not (
        isinstance(head, dict) and isinstance(head.get("type"), str)
        and isinstance(head.get("inputs"), list) and all(isinstance(i, str) for i in head["inputs"])
    ):  # fmt: skip
        raise ConfigError(
            source, "meta.head", f"expected null or a mapping with type and inputs, got {head!r}"
        )
    runtime = meta.get("runtime", "torch")  # tables from before runtimes were eager PyTorch
    if runtime not in RUNTIMES.names():
        raise ConfigError(
            source,
            "meta.runtime",
            f"expected one of {', '.join(RUNTIMES.names())}, got {runtime!r}",
        )


def _head_text(head: dict | None) -> str:
    if head is None:
        return "none"
    options = ", ".join(f"{k}={v}" for k, v in head.items() if k not in ("type", "inputs"))
    return f"{head['type']}({options}) on {', '.join(head['inputs'])}"


def table_runtime(table: dict) -> str:
    """The runtime a table was measured in (eager PyTorch for tables that do not say)."""
    return table["meta"].get("runtime", "torch")


@dataclass
class LatencyOptions:
    """``cost_model:`` keys of ``type: latency``: the table from ``dnas lut build``, and the
    batch, device, runtime and CPU threads it must have been measured with (unchecked when
    null)."""

    table: str | None = None
    batch: int | None = field(default=None, metadata={"min": 1, "max": MAX_BATCH})
    device: str | None = field(default=None, metadata={"choices": ["cpu", "cuda"]})
    runtime: str | None = None  # torch, onnxruntime
    threads: int | None = field(default=None, metadata={"min": 1})


@COST_MODELS.register("latency")
class LatencyCostModel(CostModel):
    """Measured milliseconds from a table written by ``dnas lut build``."""

    metric, unit = "latency", "ms"
    Options = LatencyOptions

    def __init__(self, options: LatencyOptions | None = None) -> None:
        super().__init__(options)
        if self.options.table is None:
            raise ConfigError("", "cost_model.table", "the latency cost model needs a table "
                              "(build one with 'dnas lut build --space S --input HxW -o "
                              "table.json'; on the command line: --cost-table)")  # fmt: skip
        self.path, self.batch = Path(self.options.table), self.options.batch
        self.device = self.options.device
        if self.options.runtime is not None:
            try:
                RUNTIMES.get(self.options.runtime)  # one line naming the registered runtimes
            except DnasError as exc:
                raise ConfigError("", "cost_model.runtime", str(exc)) from None

    def table(self, space: SearchSpace, input_hw: tuple[int, int], num_outputs: int) -> CostTable:
        return self.build(space, input_hw, num_outputs)  # the file is the cache

    def build(self, space: SearchSpace, input_hw: tuple[int, int], num_outputs: int) -> CostTable:
        lut = read_lut(self.path)
        if problem := other_space(lut, space):  # first: else every entry is listed as missing
            raise ConfigError(str(self.path), "meta.space", f"{problem}; build one for it "
                              f"with: {self.build_command(lut, space, input_hw)}")  # fmt: skip
        op_costs(space, input_hw, num_outputs)  # size checks, on the meta device
        if missing := self.uncovered(lut, space, input_hw, num_outputs):
            raise DnasError(f"{self.path}: latency table does not cover this search: missing "
                            f"{listing(missing, 8)}; build one for it with: "
                            f"{self.build_command(lut, space, input_hw)}")  # fmt: skip
        meta = lut["meta"]
        measured = (f"{meta.get('device_name') or meta.get('device')}, {table_runtime(lut)}, "
                    f"batch {meta.get('batch')}, {meta.get('threads')} threads")  # fmt: skip
        table = lut_cost_table(lut, space, key={"table": str(self.path), "measured": measured})
        cheapest = table.cost_range()[0]
        if cheapest <= 0:
            raise ConfigError(str(self.path), "overhead_ms",
                              f"the table predicts {cheapest:.4g} ms for this space's cheapest "
                              "net: scale and overhead_ms must give positive times")  # fmt: skip
        return table

    def uncovered(self, lut: dict, space: SearchSpace, input_hw: tuple[int, int],
                  num_outputs: int) -> list[str]:  # fmt: skip
        """What this search needs that the table lacks: its conditions (input size, outputs and
        those the options ask), each layer at its input shape and output width, every op, and
        the head."""
        meta, shapes = lut["meta"], space.infer_shapes(*input_hw)
        recorded = meta | {"runtime": table_runtime(lut)}
        missing = []
        for name, expected in (("input", list(input_hw)), ("num_outputs", num_outputs),
                               ("batch", self.batch), ("device", self.device),
                               ("runtime", self.options.runtime),
                               ("threads", self.options.threads)):  # fmt: skip
            if expected is not None and recorded.get(name) != expected:
                missing.append(f"{name} {expected} (table has {recorded.get(name)})")
        built = built_shapes(lut, self.path)
        for layer in space.layers:
            if lut.get("shapes", {}).get(layer.name) != list(shapes[layer.input]):
                missing.append(f"{layer.name} at input {list(shapes[layer.input])}")
                continue
            if built is not None and built.get(layer.name) != shapes[layer.name]:
                missing.append(f"{layer.name} with output {list(shapes[layer.name])}")
                continue
            ops = lut["layers"].get(layer.name, {}) if layer.searchable else {}
            absent = [op for op in layer.candidates if layer.searchable and op not in ops]
            if not layer.searchable and layer.name not in lut["fixed"]:
                absent = list(layer.candidates)
            missing += [f"{layer.name}/{op}" for op in absent]
        if "head" not in lut["fixed"]:
            missing.append("head")
        elif "head" in meta and normal_head(meta["head"]) != head_record(space):  # older: none
            missing.append(f"head {_head_text(head_record(space))} (table has "
                           f"{_head_text(meta['head'])})")  # fmt: skip
        return missing

    def build_command(self, lut: dict, space: SearchSpace, input_hw: tuple[int, int]) -> str:
        """The 'dnas lut build' of a table for this search, at the conditions the options ask
        (else the table's), written to a new file (``fresh_table_path``): never over this
        table, which is right for what it was built for."""
        meta = lut["meta"]
        batch, device = self.batch or meta["batch"], self.device or meta["device"]
        runtime = self.options.runtime or table_runtime(lut)
        threads = self.options.threads or meta["threads"]
        conditions = f"{runtime}-{device}-b{batch}-t{threads}"
        out = fresh_table_path(self.path, space, input_hw, conditions)
        return (f"dnas lut build --config EXPERIMENT (the space, head and input the search uses) "
                f"--batch {batch} --device {device} --runtime {runtime} --threads {threads} "
                f"-o {out}")  # fmt: skip


def other_space(lut: dict, space: SearchSpace) -> str | None:
    """Why ``lut`` was built for another space than ``space``, or None: another name
    (``meta.space``) and entries that lack some of ``space``'s layers or ops. A copy of the
    table's space under another name, which its entries fit, is the same space; an edited
    space of the same name has its missing entries listed (``uncovered``)."""
    meta = lut["meta"]
    if meta["space"] == space.name:
        return None
    lacking = [layer.name for layer in space.layers if not has_entries(lut, layer)]
    if not lacking:
        return None
    digest = meta.get("space_digest")
    built = f"{meta['space']!r}" + (f" (meta.space_digest {digest})" if digest else "")
    return (f"the table was built for space {built}, not for this search's space "
            f"{space.name!r} (digest {space.digest()}): its entries lack {len(lacking)} of "
            f"that space's {len(space.layers)} layers or their ops")  # fmt: skip


def has_entries(lut: dict, layer: Layer) -> bool:
    """Whether ``lut`` has an entry for every candidate op of ``layer`` (at any shape)."""
    if not layer.searchable:
        return layer.name in lut["fixed"]
    return set(layer.candidates) <= set(lut["layers"].get(layer.name, {}))


def fresh_table_path(path: Path, space: SearchSpace, input_hw: tuple[int, int],
                     conditions: str) -> Path:  # fmt: skip
    """Where to write a new table beside ``path``: named after the space, the input size and
    ``conditions``, with the space's digest added where that name is ``path`` itself."""
    name = re.sub(r"[^\w.-]+", "_", space.name)
    fresh = path.with_name(f"lut-{name}-{input_hw[0]}x{input_hw[1]}-{conditions}.json")
    return fresh if fresh != path else fresh.with_stem(f"{fresh.stem}-{space.digest()[:8]}")


@click.group("lut")
def lut() -> None:
    """Latency lookup tables: build one for this machine, check its predictions."""


@dataclass(frozen=True)
class Conditions:
    """What ``lut build`` times a space at: input size, batch, device, runtime and CPU
    threads; None where neither the command line nor the experiment says (the defaults)."""

    input_hw: tuple[int, int] | None = None
    batch: int | None = None
    device: str | None = None
    runtime: str | None = None
    threads: int | None = None


# each of the ``Conditions``: its option of ``lut build`` and its key in an experiment
CONDITION_KEYS = {
    "input_hw": ("--input", "input_size"),
    "batch": ("--batch", "cost_model.batch"),
    "device": ("--device", "cost_model.device"),
    "runtime": ("--runtime", "cost_model.runtime"),
    "threads": ("--threads", "cost_model.threads"),
}


def experiment_conditions(exp: Experiment) -> Conditions:
    """The conditions that ``dnas search`` of ``exp`` asks of its table: the input size, and
    what its ``cost_model:`` sets where it is a latency one (``LatencyCostModel.uncovered``)."""
    options = exp.cost_model.options
    if not isinstance(options, LatencyOptions):
        options = LatencyOptions()
    return Conditions(exp.input_hw, options.batch, options.device, options.runtime,
                      options.threads)  # fmt: skip


def settle(given: Conditions, wanted: Conditions, source: str) -> Conditions:
    """The command line's conditions, else the experiment's (``wanted``, from ``source``): a
    condition given both ways and differing is a one-line error naming both, since the
    experiment's search refuses such a table."""
    settled = {}
    for name, (option, key) in CONDITION_KEYS.items():
        mine, theirs = getattr(given, name), getattr(wanted, name)
        if mine is not None and theirs is not None and mine != theirs:
            raise ConfigError(source, key, f"{shown(theirs)}, but {option} {shown(mine)}: "
                              f"'dnas search {source}' would refuse that table; leave out "
                              f"{option} (it defaults to the experiment's), or give this build "
                              f"and the search --set '{key}={as_yaml(mine)}'")  # fmt: skip
        settled[name] = theirs if mine is None else mine
    return Conditions(**settled)


def shown(value: object) -> str:
    """A condition as the command line writes it (an input size as HxW)."""
    return "x".join(map(str, value)) if isinstance(value, tuple) else str(value)


def as_yaml(value: object) -> str:
    """A condition as ``--set`` takes it (an input size as [H,W])."""
    return f"[{value[0]},{value[1]}]" if isinstance(value, tuple) else str(value)


def check_strides(space: SearchSpace, input_hw: tuple[int, int]) -> None:
    """Refuse an input size that the space's strides do not divide, before any timing: a
    layer would round its output up, so the net's output is not the input / its stride (a
    pose search refuses that size). A task that takes any size checks its own: --config."""
    stride = space.total_stride()
    if not (input_hw[0] % stride or input_hw[1] % stride):
        return
    near = "x".join(str(max(stride, round(side / stride) * stride)) for side in input_hw)
    raise click.BadParameter(
        f"{shown(input_hw)}: the strides of space {space.name} ({stride} in all) do not divide "
        f"it, so the net's output would not be the input / its stride, which a pose search "
        f"refuses; expected sides that {stride} divides, such as {near} (or --config EXP, to "
        f"check the size as EXP's task does)",
        param_hint="'--input'",
    )


def what_to_build(space: str | None, config: Path | None, overrides: list[str],
                  outputs: int | None,
                  given: Conditions) -> tuple[SearchSpace, int, Conditions]:  # fmt: skip
    """The space (with the head a search would use), outputs and conditions to time: from
    ``--space`` as written, or from ``--config`` as ``dnas search`` builds them, the
    experiment's conditions the defaults of the command line's (``settle``); the input size is
    checked, as ``dnas search`` checks it, before any timing."""
    from dnas.config import load_experiment
    from dnas.engine.train import check_head_output
    from dnas.space.graph import load_space
    from dnas.task import build_space, build_task

    if (space is None) == (config is None):
        raise click.UsageError("give one of --space and --config")
    if space is not None:
        if overrides:
            raise click.UsageError("--set overrides keys of --config, not of --space")
        search_space = load_space(space)
        settled = replace(given, input_hw=given.input_hw or (256, 256))
        check_strides(search_space, settled.input_hw)
        return search_space, head_outputs(outputs, None), settled  # its default outputs
    if outputs is not None:
        raise click.UsageError(
            "--outputs (--joints) goes with --space; with --config the task sets the outputs"
        )
    exp = load_experiment(config, overrides)
    settled = settle(given, experiment_conditions(exp), exp.source)
    task = build_task(exp)
    search_space = build_space(exp.space, task, exp)
    check_head_output(search_space, task)  # the search's own check of its input size
    return search_space, task.num_outputs, settled


def noise_options(command: Callable) -> Callable:
    """The timing and noise options ``lut build`` and ``lut check`` share."""
    for option in reversed([
        click.option("--min-time", type=FiniteRange(0.001), default=0.1, show_default=True,
                     help="Seconds spent on each timing (torch.utils.benchmark blocks)."),
        click.option("--rounds", type=click.IntRange(1), default=NoisePolicy.rounds,
                     show_default=True,
                     help="Passes over all timings; each keeps its median over the passes."),
        click.option("--max-spread", type=FiniteRange(0.0), default=NoisePolicy.max_spread,
                     show_default=True,
                     help="IQR / median above which a timing is measured again."),
        click.option("--max-drift", type=FiniteRange(0.0), default=NoisePolicy.max_drift,
                     show_default=True,
                     help="Change of the reference net's time within one chunk of timings."),
        click.option("--max-speed-change", type=FiniteRange(0.0),
                     default=NoisePolicy.max_speed_change, show_default=True,
                     help="Reference net this much slower or faster than around any of the "
                          f"last {NoisePolicy.speed_window} chunks: busy."),
        click.option("--allow-noise", is_flag=True,
                     help="Keep noisy timings (counted in meta.noise) even while other "
                          "processes take CPU time, instead of stopping."),
        click.option("--in-process", is_flag=True,
                     help="Run every round in this process rather than each in a fresh one "
                          "(quicker; one process's memory layout then biases all timings)."),
    ]):  # fmt: skip
        command = option(command)
    return command


def make_bench(runtime: str, device: str, threads: int, min_time: float, rounds: int,
               max_spread: float, max_drift: float, max_speed_change: float,
               allow_noise: bool, in_process: bool,
               keep_memory: bool = False) -> Bench:  # fmt: skip
    policy = NoisePolicy(max_spread, max_drift, max_speed_change, rounds=rounds,
                         strict=not allow_noise, fresh_processes=not in_process)  # fmt: skip
    return Bench(get_runtime(runtime, pick_device(device), threads), min_time, policy, keep_memory)


def recorded_allocator(meta: dict) -> str:
    """The allocator a table's timings ran under (tables from before 2026-12-06 do not say:
    they were timed as a plain process on this machine runs)."""
    return meta.get("allocator", untouched())


def allocator_warning(allocator: dict, path: Path, now: str = "this check") -> str | None:
    """One line when a check timed under another allocator than the table at ``path`` was
    (``check_lut``'s ``allocator``; ``dnas.allocator``): a net's time can differ by a quarter
    between the two, as it can where the environment sets glibc's thresholds."""
    if allocator["table"] == allocator["check"]:
        return None
    return (f"warning: {path} was timed with {allocator['table']}, {now} with "
            f"{allocator['check']}: a net's time differs between the two (dnas.allocator), so "
            f"the errors include that")  # fmt: skip


def machine_warning(machine: dict, path: Path, now: str = "this check") -> str | None:
    """One line when a check runs on another device than the table at ``path`` was built on
    (``check_lut``'s ``machine``; tables from before 2026-12-07 name a CPU only as "cpu"): its
    errors then measure the difference between the two devices as much as the table."""
    if machine["table"] in (None, "cpu") or machine["table"] == machine["check"]:
        return None
    return (f"warning: {path} was built on {machine['table']}, {now} runs on "
            f"{machine['check']}: the errors include the difference between the two devices "
            f"(build a table here to model this one)")  # fmt: skip


def noise_line(noise: dict) -> str:
    """The guard's report (``NoiseReport.to_dict``) in one line: what was measured again, what
    was kept noisy, and why (the machine unsteady with nothing else running, or --allow-noise)."""
    kept = noise["kept_noisy"] + noise["chunks_kept_noisy"]
    why = "the machine unsteady, nothing else running" if noise.get("unsteady") else "--allow-noise"
    kept = (f", kept {noise['kept_noisy']} noisy timings and {noise['chunks_kept_noisy']} "
            f"noisy chunks or passes ({why})" if kept else "")  # fmt: skip
    return (
        f"noise: worst spread {100 * noise['worst_spread']:.1f} %, reference drift "
        f"{100 * noise['drift']:.1f} %, {noise['remeasured']} timings and "
        f"{noise['chunks_redone']} chunks or passes measured again{kept}"
    )


def ranking_line(report: dict) -> str | None:
    """What ``lut check``'s tau says of the table against its noise ceiling (``NoiseCeiling``):
    within noise of an error-free table's, or below it by more than ``BELOW_CEILING_SDS`` of
    its sds, which the check's noise does not explain. None without a ceiling."""
    gap = report.get("tau_vs_ceiling_sds")
    if gap is None:
        return None
    if gap >= -BELOW_CEILING_SDS:
        return (f"ranking: tau {report['kendall_tau']:.3f} is {gap:+.1f} sd from the noise "
                f"ceiling, not below it beyond noise: the table ranks these nets as well as these "
                f"measurements can tell")  # fmt: skip
    speed = report.get("speed_vs_build")
    moved = f" (the machine took {speed:.2f}x as long as at {since(report)})" if speed else ""
    below = (f"ranking: tau {report['kendall_tau']:.3f} is {-gap:.1f} sd below the noise "
             f"ceiling: the table ranks these nets otherwise than they run now, beyond this "
             f"check's noise{moved}")  # fmt: skip
    refit = report.get("refit") or {}
    refit_gap = refit.get("tau_vs_ceiling_sds")
    if refit_gap is not None and refit_gap >= -BELOW_CEILING_SDS and refit.get("recalibratable"):
        return (f"{below}; but its entries, with scales and overhead refitted to the other "
                f"checked nets, rank them at tau {refit['kendall_tau']:.3f} ({refit_gap:+.1f} "
                f"sd): the entries hold, and the scales and overhead fitted at "
                f"{since(report)} do not fit the machine now; refit them here with "
                f"'dnas lut recalibrate'")  # fmt: skip
    return f"{below}; build it again while the machine is steady"


def since(report: dict) -> str:
    """What ``lut check`` measured the machine's speed against: the build, or the table's last
    ``lut recalibrate``, which timed the gauge nets again."""
    return "its last recalibration" if report.get("recalibrated") else "the build"


def unsteady_warning(noise: dict, result: str, where: str) -> str | None:
    """One line where timings went on as measured because the machine's speed wandered with
    nothing else running (``NoiseReport.unsteady``, recorded at ``where``): ``result`` carries
    that noise."""
    if not noise.get("unsteady"):
        return None
    return (f"warning: this machine's speed was unsteady with nothing else running (a shared VM's "
            f"host?): {noise['unsteady']} noisy timings, chunks or passes went on as measured "
            f"({where}; reference drift {100 * noise['drift']:.0f} %), so "
            f"{result} carries that noise")  # fmt: skip


@lut.command(
    "build",
    epilog=example(
        "dnas lut build --space mbv2_pose_small --input 256x256 --batch 1 -o lut.json",
        "dnas lut build --space mbv2_pose_small --runtime onnxruntime -o ort.json",
        "dnas lut build --config examples/seg_coco.yaml -o seg.json",
    ),
)
@click.option("--space", help="Search space YAML or shipped name.")
@click.option("--config", "config", type=click.Path(path_type=Path),
              callback=remembered(CONFIG_META),
              help="An experiment: its space, head (with its head: override), input size and "
                   "outputs, exactly as 'dnas search' builds them, and the batch, device, "
                   "runtime and threads its latency cost_model: sets (an option that differs "
                   "from the experiment's is refused).")  # fmt: skip
@set_opt
@click.option("--input", "input_size", type=SIZE,
              help="HxW (default: the config's input_size, else 256x256).")  # fmt: skip
@click.option(
    "--batch",
    type=click.IntRange(1, MAX_BATCH),
    help="Batch (default: the config's cost_model.batch, else CPU 1, GPU 32).",
)
@click.option(
    "--device",
    type=click.Choice(["cpu", "cuda"]),
    help="Device (default: the config's cost_model.device, else cpu).",
)
@click.option(
    "--runtime",
    help="A registered runtime: torch (eager) or onnxruntime (the exported ONNX) (default: the "
    "config's cost_model.runtime, else torch).",
)
@click.option(
    "--threads",
    type=click.IntRange(1),
    help="CPU threads (default: the config's cost_model.threads, else torch's).",
)
@outputs_opt
@click.option(
    "--calibration",
    type=click.IntRange(0),
    default=40,
    show_default=True,
    help="Random whole networks timed to fit the entries: half drawn uniformly, half spread "
    "over the space's MAC range (a quarter held out).",
)
@click.option("--keep-freed-memory", "keep_memory", is_flag=True,
              help="Time nets as a process that keeps freed memory runs them (glibc thresholds "
                   "set, as dnas trains; like jemalloc, TCMalloc or ONNX Runtime's arena) "
                   "instead of one that leaves glibc's defaults (a plain deployment). "
                   "Recorded; lut check follows it. Advised above batch 1 on a CPU, with an "
                   "allocator that keeps memory where you deploy: plain, batch-8 nets spent "
                   "30-43 % of their time in page faults.")  # fmt: skip
@noise_options
@out_opt("output", file=True)
@click.option("--force", is_flag=True)
def lut_build(space: str | None, config: Path | None, overrides: tuple[str, ...],
              input_size: tuple[int, int] | None,
              batch: int | None, device: str | None, runtime: str | None, threads: int | None,
              outputs: int | None, joints: int | None, calibration: int, min_time: float,
              rounds: int, max_spread: float, max_drift: float, max_speed_change: float,
              allow_noise: bool, in_process: bool, keep_memory: bool, output: Path,
              force: bool) -> None:  # fmt: skip
    """Time every candidate op of SPACE (or of CONFIG's search) at its exact input shape."""
    from dnas.cli import guard_output

    guard_output(output, force)
    search_space, num_outputs, settled = what_to_build(
        space, config, list(overrides), head_outputs(outputs, joints, default=None),
        Conditions(input_size, batch, device, runtime, threads),
    )  # fmt: skip
    if device is None and settled.device is not None:  # the experiment's cost_model.device
        try:
            pick_device(settled.device)
        except DnasError:
            raise ConfigError(str(config), "cost_model.device", f"{settled.device!r}, which "
                              "this machine lacks: build the table on a machine with it (or "
                              "give this build and the search --set cost_model.device=cpu)"
                              ) from None  # fmt: skip
    device = settled.device or "cpu"
    batch = settled.batch or (32 if device == "cuda" else 1)
    runtime = settled.runtime or "torch"
    bench = make_bench(runtime, device, settled.threads or torch.get_num_threads(), min_time,
                       rounds, max_spread, max_drift, max_speed_change, allow_noise, in_process,
                       keep_memory)  # fmt: skip
    table = build_lut(search_space, settled.input_hw, num_outputs, batch, bench, calibration)
    output.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(output, json.dumps(table, indent=1))
    fitted = calibration_text(table["meta"]["calibration_fit"], calibration)
    click.echo(
        f"wrote {output}: {sum(len(v) for v in table['layers'].values())} op entries, "
        f"{runtime} batch {batch}, {table['meta']['device']}, {bench.runtime.threads} threads; "
        f"{fitted}"
    )
    click.echo(noise_line(table["meta"]["noise"]))
    if warning := unsteady_warning(table["meta"]["noise"], "the table", "meta.noise.unsteady"):
        click.echo(warning, err=True)


def checked_space(meta: dict, space: str | None, table_path: Path) -> SearchSpace:
    """The space ``lut check`` samples: ``--space``, else the one the table was built from
    (its recorded copy, head included; older tables: by its file or shipped name)."""
    from dnas.space.graph import load_space

    if space is not None:
        return load_space(space)
    if "space_dict" in meta:  # a mapping (``_check_table``)
        return space_from_dict(meta["space_dict"], source=f"{table_path} (meta.space_dict)")
    recorded = meta.get("space_file")
    try:
        return load_space(recorded if recorded and Path(recorded).is_file() else meta["space"])
    except DnasError as exc:
        raise ConfigError(
            str(table_path),
            "meta.space",
            f"the table records no space_dict, and {exc}; give --space",
        ) from None


def timed_table(table_path: Path, runtime: str | None, space: str | None,
                redo: str) -> tuple[dict, SearchSpace]:  # fmt: skip
    """The table that ``lut check`` or ``lut recalibrate`` times nets of, and its space
    (``checked_space``), validated before any timing: this machine must have the table's
    device (``redo``: what to do elsewhere, 'check it'), ``--runtime``, if given, must be the
    table's, and the table must cover the space."""
    table = read_lut(table_path)
    meta, recorded_runtime = table["meta"], table_runtime(table)
    try:
        pick_device(meta["device"])
    except DnasError:  # the table's device, which nobody asked for on the command line
        raise ConfigError(str(table_path), "meta.device", f"the table was timed on "
                          f"{meta['device']!r}, which this machine lacks; {redo} on a machine "
                          f"with {meta['device'].upper()}") from None  # fmt: skip
    if runtime is not None:
        try:
            RUNTIMES.get(runtime)
        except DnasError as exc:  # the registry's line, naming the registered runtimes
            raise click.BadParameter(str(exc), param_hint="'--runtime'") from None
    if runtime is not None and runtime != recorded_runtime:
        raise DnasError(f"{table_path}: measured in {recorded_runtime}, not {runtime}; build a "
                        f"table with 'dnas lut build --runtime {runtime}' to time that "
                        "runtime")  # fmt: skip
    search_space = checked_space(meta, space, table_path)
    LatencyCostModel(LatencyOptions(str(table_path))).table(
        search_space, tuple(meta["input"]), meta["num_outputs"]
    )  # validates coverage
    return table, search_space


@lut.command("check", epilog=example("dnas lut check --table lut.json --samples 30"))
@click.option("--table", "table_path", type=click.Path(path_type=Path), required=True)
@click.option("--space", help="Search space (default: the table's own, by its file or name).")
@click.option("--samples", type=click.IntRange(2), default=30, show_default=True)
@click.option("--runtime", help="The runtime to measure in (default and only choice: the table's).")
@noise_options
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text")
def lut_check(table_path: Path, space: str | None, samples: int, runtime: str | None,
              min_time: float, rounds: int, max_spread: float, max_drift: float,
              max_speed_change: float, allow_noise: bool, in_process: bool,
              fmt: str) -> None:  # fmt: skip
    """Predicted vs measured latency of random architectures: Kendall tau and MAPE (%), and
    the tau and MAPE a table without error would get against the same measurements (their
    noise ceiling); and of the table's own fastest nets at 25, 50 and 75 % of the space's MAC
    range."""

    table, search_space = timed_table(table_path, runtime, space, "check it")
    meta, recorded_runtime = table["meta"], table_runtime(table)
    bench = make_bench(recorded_runtime, meta["device"], meta["threads"], min_time, rounds,
                       max_spread, max_drift, max_speed_change, allow_noise,
                       in_process)  # fmt: skip
    report = check_lut(table, search_space, samples, bench, what=f"lut check --table {table_path}")
    for warning in (
        machine_warning(report["machine"], table_path),
        allocator_warning(report["allocator"], table_path),
    ):
        if warning:
            click.echo(warning, err=True)
    if warning := unsteady_warning(report["noise"], "the measured times, tau and MAPE",
                                   "the report's noise.unsteady"):  # fmt: skip
        click.echo(warning, err=True)
    if fmt == "json":
        click.echo(json.dumps(report))
        return
    for row in report["rows"]:
        click.echo(
            f"predicted {row['predicted_ms']:8.3f} ms   measured {row['measured_ms']:8.3f} ms"
        )
    conditions = f"{recorded_runtime}, batch {meta['batch']}, {meta['threads']} threads"
    click.echo(f"Kendall tau {report['kendall_tau']:.3f}   MAPE {report['mape']:.2f} %   "
               f"({conditions})")  # fmt: skip
    if ceiling := report["noise_ceiling"]:
        click.echo(f"noise ceiling: a table without error would get tau about "
                   f"{ceiling['kendall_tau']:.3f} (+-{ceiling['kendall_tau_sd']:.3f} from check "
                   f"to check) and, the machine's level aside, MAPE about "
                   f"{ceiling['mape']:.2f} % (compare the MAPE at {since(report)}'s speed) against "
                   f"these measurements (a net's time moved {ceiling['pass_sd']:.1f} % from pass "
                   f"to pass beyond the speed the pass shared)")  # fmt: skip
    else:
        click.echo("noise ceiling: needs --rounds 2 or more")
    if line := ranking_line(report):
        click.echo(line)
    if refit := report["refit"]:
        click.echo(f"refitted: the table's entries with scales and overhead fitted to the other "
                   f"checked nets (leave-one-out) get tau {refit['kendall_tau']:.3f}, MAPE "
                   f"{refit['mape']:.2f} %")  # fmt: skip
    if report["picked"]:
        errors = ", ".join(f"{100 * r['level']:.0f} % {r['predicted_ms']:.3f} vs "
                           f"{r['measured_ms']:.3f} ms" for r in report["picked"])  # fmt: skip
        click.echo(f"the table's own picks (its fastest net at a share of the MAC range), "
                   f"predicted vs measured: {errors}; "
                   f"MAPE {report['picked_mape']:.2f} %")  # fmt: skip
    if report["speed_vs_build"] is not None:
        picks = (f" (the picks' {report['picked_mape_at_build_speed']:.2f} %)"
                 if report["picked"] else "")  # fmt: skip
        click.echo(f"machine speed: {report['speed_from']} took {report['speed_vs_build']:.3f}x "
                   f"as long as at {since(report)}; MAPE at that speed "
                   f"{report['mape_at_build_speed']:.2f} %{picks}")  # fmt: skip
    click.echo(noise_line(report["noise"]))


@lut.command("recalibrate",
             epilog=example("dnas lut recalibrate --table lut.json -o lut-now.json"))  # fmt: skip
@click.option("--table", "table_path", type=click.Path(path_type=Path), required=True)
@click.option("--space", help="Search space (default: the table's own, by its file or name).")
@click.option("--runtime", help="The runtime to time in (default and only choice: the table's).")
@noise_options
@out_opt("output", file=True)
@click.option("--force", is_flag=True)
def lut_recalibrate(table_path: Path, space: str | None, runtime: str | None, min_time: float,
                    rounds: int, max_spread: float, max_drift: float, max_speed_change: float,
                    allow_noise: bool, in_process: bool, output: Path,
                    force: bool) -> None:  # fmt: skip
    """Fit a table's scales and overhead anew to its own calibration nets timed now, keeping
    its op entries: the table moved into the machine's present speed and spell, for the time
    of its nets alone (a build times every op as well). lut check says when a table needs it."""
    from dnas.cli import guard_output

    guard_output(output, force)
    table, search_space = timed_table(table_path, runtime, space, "recalibrate it")
    meta = table["meta"]
    bench = make_bench(table_runtime(table), meta["device"], meta["threads"], min_time, rounds,
                       max_spread, max_drift, max_speed_change, allow_noise,
                       in_process)  # fmt: skip
    fitted = recalibrate_lut(table, search_space, bench, str(table_path))
    new = fitted["meta"]
    output.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(output, json.dumps(fitted, indent=1))
    done = new["recalibrations"][-1]
    for warning in (
        machine_warning({"table": meta.get("device_name"), "check": done["device_name"]},
                        table_path, "this refit"),
        allocator_warning({"table": done["allocator_before"], "check": new["allocator"]},
                          table_path, "this refit"),
    ):  # fmt: skip
        if warning:
            click.echo(warning, err=True)
    nets = len(new["calibration_nets"])
    click.echo(f"wrote {output}: its {nets} calibration networks took "
               f"{done['nets_vs_before']:.3f}x their times at the last calibration; "
               f"{calibration_text(new['calibration_fit'], nets)}")  # fmt: skip
    click.echo(noise_line(new["noise"]))
    if warning := unsteady_warning(new["noise"], "the refit", "meta.noise.unsteady"):
        click.echo(warning, err=True)


COMMANDS.register("lut")(lut)
