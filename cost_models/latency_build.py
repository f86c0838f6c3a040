"""Building a latency table (``build_lut``) and moving one to the machine's present state
(``recalibrate_lut``).

``build_lut`` times, in the chosen runtime (``cost_models.runtimes``: eager PyTorch or ONNX
Runtime), every candidate op of every searchable layer at its exact input shape, every fixed
layer and the head, each by ``torch.utils.benchmark`` under a ``NoiseGuard``
(``cost_models.timing``). It then times random whole networks (``calibration_nets``: half
uniform draws, half spread over the space's MAC range) and fits the entries to them
(``cost_models.calibration``): one scale per input resolution, and one overhead, so that the
table stays a sum of per-op entries. ``recalibrate_lut`` fits the scales and overhead anew to
the calibration nets timed again, the entries kept.
"""

from __future__ import annotations

import datetime
import functools
import statistics
import time
import warnings
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch import nn

from cost_models.calibration import Calibration, Sample, calibrate, leave_one_out
from cost_models.fidelity import NoiseCeiling, kendall_tau, mape, noise_ceiling, tau_vs_ceiling
from cost_models.flops import FlopsCostModel
from cost_models.latency import MAX_MS, group_of, group_parts, head_record
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
from dnas.engine.progress import counter
from dnas.engine.runtime import device_name
from dnas.errors import ConfigError
from dnas.nn.heads import build_head
from dnas.nn.network import Network
from dnas.nn.profile import _HeadOnInputs, op_costs
from dnas.schema import is_finite_number
from dnas.search.budget import draw_ops, tilted_probs
from dnas.space.choices import uniform_choices
from dnas.space.graph import Layer, SearchSpace
from dnas.space.ops import build_op, parse_op

MIN_REFIT = 8  # nets needed to refit a table's scales (``refit_scores``, ``recalibrate_lut``)


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
    fit = calibrate(*calibration_samples(raw, space, nets, measured))
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
    pred = leave_one_out(*calibration_samples(raw, space, nets, measured))
    tau = kendall_tau(pred, measured)
    return {"kendall_tau": round(tau, 4), "mape": round(mape(pred, measured), 4),
            "tau_vs_ceiling_sds": tau_vs_ceiling(tau, ceiling),
            # whether ``lut recalibrate`` can refit this table
            "recalibratable": refit_nets_problem(table["meta"], space) is None}  # fmt: skip


def reference_choices(space: SearchSpace) -> dict[str, str]:
    """The reference net of a noise guard: the first candidate of every layer (fixed, so two
    builds of one space watch the same net)."""
    return {layer.name: layer.candidates[0] for layer in space.searchable_layers}


def calibration_samples(
    raw: dict, space: SearchSpace, nets: list[dict[str, str]], measured: Sequence[float]
) -> tuple[list[Sample], dict[str, float]]:
    """The entries ``raw`` as ``calibrate`` fits them to whole ``nets`` measured in ``measured``
    ms: each net's per-group parts with its time, and the cheapest net's parts (its prediction
    must stay positive)."""
    samples = [Sample(group_parts(raw, space, c), float(ms))
               for c, ms in zip(nets, measured, strict=True)]  # fmt: skip
    return samples, group_parts(raw, space, cheapest_choices(raw, space))


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


def recorded_allocator(meta: dict) -> str:
    """The allocator a table's timings ran under (tables from before 2026-12-06 do not say:
    they were timed as a plain process on this machine runs)."""
    return meta.get("allocator", untouched())
