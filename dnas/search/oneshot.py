"""One-shot evaluation: score architectures with the weights a search's super net trained, and
measure how well that ranking agrees with training each net alone.

A weight-sharing search can only pick nets as well as its super net ranks them. Each
architecture's ops are copied out of the super net into a standalone net, its batch-norm
statistics are recalibrated on training batches (the super net's running statistics mix every
path; SPOS, Guo et al. ECCV 2020, recalibrates them per sub-net), and it is scored on the
validation split. Against the scores of the same nets trained alone, Kendall's tau is the
figure Yu et al. (ICLR 2020, "Evaluating the Search Phase of Neural Architecture Search") use:
near 0, the super net cannot tell better nets from worse ones, and its search cannot beat
random architectures of equal cost.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dnas.config import band_around
from dnas.engine.runtime import pick_device, seed_everything, to_device
from dnas.engine.sampling import make_loader, stream, train_loader
from dnas.errors import DnasError
from dnas.nn.network import Network, module_key
from dnas.registry import TASKS
from dnas.schema import load_yaml
from dnas.search.bounds import DEFAULT_BAND, check_band
from dnas.search.budget import DRAW_TRIES, BandSampler
from dnas.search.derive import SearchRecord, load_search, write_architecture
from dnas.search.run import split_indices
from dnas.space.graph import SearchSpace, load_space, space_from_dict
from dnas.task import dataset_of, evaluate


@dataclass
class Candidate:
    """One architecture to score: its ops in the super net's space, and the scores of its
    standalone trainings (empty when none was given)."""

    name: str
    choices: dict[str, str]
    standalone: list[float] = field(default_factory=list)
    oneshot: float | None = None
    cost: float | None = None


@dataclass
class SuperNet:
    """A search run's super net: its weights, and what :func:`load_search` rebuilds."""

    record: SearchRecord
    state: dict[str, torch.Tensor]


def load_supernet(ref: Path | str, overrides: Sequence[str] = ()) -> SuperNet:
    """The super net of a search run (directory or ``search.pt``) of a weight-sharing strategy
    (``overrides``: see :func:`load_search`)."""
    record = load_search(ref, overrides)
    state = record.ckpt.get("strategy", {}).get("model")
    expected = Network(record.space, record.task.num_outputs).state_dict()
    if not isinstance(state, dict) or not any(".ops." in key for key in state):
        strategy = record.exp.search.strategy
        raise DnasError(f"{record.path}: this {strategy!r} search trained no super net; "
                        "nothing to rank with")  # fmt: skip
    if state.keys() != expected.keys() or any(state[k].shape != v.shape
                                              for k, v in expected.items()):  # fmt: skip
        raise DnasError(f"{record.path}: its super net does not fit the space and task rebuilt "
                        "from it (an override of the outputs or the head?)")  # fmt: skip
    return SuperNet(record, state)


def choices_in(space: SearchSpace, arch: SearchSpace) -> dict[str, str]:
    """The ops of fixed ``arch`` at ``space``'s searchable layers. A layer the architecture
    leaves out (a stage cut short, as EfficientPose-A's) is ``skip`` when the space offers it."""
    if not arch.is_fixed:
        raise DnasError(f"{arch.source}: a search space, not an architecture (derive one first)")
    ops = {layer.name: layer for layer in arch.layers}
    unknown = sorted(set(ops) - {layer.name for layer in space.layers})
    if unknown:
        raise DnasError(f"{arch.source}: layer {unknown[0]} is not a layer of {space.source}")
    if arch.in_channels != space.in_channels or (arch.head and arch.head != space.head):
        raise DnasError(f"{arch.source}: its input channels or head differ from {space.source}'s "
                        f"({arch.in_channels}, {arch.head} against {space.in_channels}, "
                        f"{space.head})")  # fmt: skip
    choices = {}
    for layer in space.layers:
        own = ops.get(layer.name)
        if own is None and "skip" not in layer.candidates:
            raise DnasError(f"{arch.source}: layer {layer.name} of {space.source} is missing "
                            "(it can be left out only where 'skip' is a candidate)")  # fmt: skip
        op = own.candidates[0] if own else "skip"
        if own and (own.width, own.stride) != (layer.width, layer.stride):
            raise DnasError(f"{arch.source}: layer {layer.name} has width {own.width} and "
                            f"stride {own.stride}, not {layer.width} and {layer.stride} as in "
                            f"{space.source}")  # fmt: skip
        if op not in layer.candidates:
            raise DnasError(f"{arch.source}: layer {layer.name}: {op!r} is not one of its "
                            f"candidates in {space.source} {list(layer.candidates)}")  # fmt: skip
        if layer.searchable:
            choices[layer.name] = op
    return choices


TASK_KEYS = ("name", "dataset")  # what must match for two runs' scores to compare


def task_text(task: dict) -> str:
    return "/".join(str(task[k]) for k in TASK_KEYS if task.get(k))


def resolved_task(task: Any) -> dict:
    """A run's ``task:`` section with its task's defaults filled in (``dataset: mpii`` of a
    pose run that left it out), as far as the task's ``Options`` give them."""
    task = dict(task) if isinstance(task, dict) else {}
    if task.get("name") in TASKS.names():
        options = TASKS.get(task["name"]).Options
        task = {f.name: f.default for f in dataclasses.fields(options)
                if f.default is not dataclasses.MISSING} | task  # fmt: skip
    return task


def same_task(ref: Path | str, theirs: Any, ours: dict, what: str) -> None:
    """Scores of runs on another task or dataset do not compare: refused, naming both."""
    theirs, ours = resolved_task(theirs), resolved_task(ours)
    if [theirs.get(k) for k in TASK_KEYS] != [ours.get(k) for k in TASK_KEYS]:
        raise DnasError(f"{ref}: {what} on {task_text(theirs) or 'another task'}, not the "
                        f"search's {task_text(ours)}; only scores of one task and dataset "
                        "compare")  # fmt: skip


def read_candidate(ref: str, record: SearchRecord) -> Candidate:
    """An architecture YAML, a shipped name, or a ``dnas train`` run directory of the search's
    task (its ``arch.yaml``, and its ``results.json`` score as the standalone figure)."""
    path, space = Path(ref), record.space
    if path.is_dir():
        arch_file, results_file = path / "arch.yaml", path / "results.json"
        if not arch_file.is_file() or not results_file.is_file():
            raise DnasError(f"{path}: not a finished 'dnas train' run (no arch.yaml and "
                            "results.json)")  # fmt: skip
        config = path / "config.yaml"
        recorded = load_yaml(config) if config.is_file() else None
        same_task(path, recorded.get("task") if isinstance(recorded, dict) else None,
                  record.exp.task, "trained")  # fmt: skip
        try:
            results = json.loads(results_file.read_text())
        except ValueError as exc:
            raise DnasError(f"{results_file}: not valid JSON ({exc})") from None
        metric = results.get("primary_metric") if isinstance(results, dict) else None
        if not isinstance(results.get(metric) if metric else None, int | float):
            raise DnasError(f"{results_file}: primary_metric: expected the name of a number "
                            "in the file")  # fmt: skip
        arch = load_space(arch_file)
        return Candidate(arch.name, choices_in(space, arch),
                         [float(results[results["primary_metric"]])])  # fmt: skip
    arch = load_space(ref)
    return Candidate(arch.name, choices_in(space, arch))


def merge(candidates: Iterable[Candidate]) -> list[Candidate]:
    """One candidate per architecture, the standalone scores of its trainings pooled, and
    one name per candidate (a repeated name gets ``#2``, ``#3``, ...)."""
    merged: dict[tuple, Candidate] = {}
    names: set[str] = set()
    for c in candidates:
        key = tuple(sorted(c.choices.items()))
        if key in merged:
            merged[key].standalone.extend(c.standalone)
            continue
        name, n = c.name, 1
        while name in names:
            n += 1
            name = f"{c.name}#{n}"
        names.add(name)
        merged[key] = Candidate(name, c.choices, list(c.standalone))
    return list(merged.values())


def subnet(space: SearchSpace, num_outputs: int, state: dict[str, torch.Tensor],
           choices: dict[str, str]) -> Network:  # fmt: skip
    """The standalone net of ``choices`` with the weights of its ops taken from the super
    net's ``state`` (a :class:`Network` of ``space``): the same function as the super net
    restricted to those paths."""
    net = Network(space.with_choices(choices, "oneshot"), num_outputs)
    picked = {module_key(layer.name): list(layer.candidates).index(choices[layer.name])
              for layer in space.searchable_layers}  # fmt: skip
    own = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] == "alphas":
            continue
        if parts[0] == "blocks" and parts[1] in picked:  # blocks.<layer>.ops.<i>.<rest>
            if int(parts[3]) != picked[parts[1]]:
                continue
            key = ".".join(parts[:2] + parts[4:])
        own[key] = value
    net.load_state_dict(own)
    return net


@torch.no_grad()
def recalibrate_batch_norm(net: nn.Module, batches: Iterable[dict[str, Any]],
                           device: torch.device) -> None:  # fmt: skip
    """Running statistics of every batch norm recomputed as the plain average over ``batches``
    with the net's own ops (eval mode elsewhere: no drop-path)."""
    norms = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    net.eval()
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
        m.train()
    for batch in batches:
        net(to_device(batch, device)["input"])
    net.eval()


def random_candidates(supernet: SuperNet, count: int, band: float, seed: int) -> list[Candidate]:
    """``count`` random architectures within ``band`` of the derived net's cost (the search's
    own cost model), drawn with ``seed``."""
    table = supernet.record.table
    cost = table.of_choices(supernet.record.choices)
    rng = np.random.default_rng(seed)
    sampler = BandSampler(table, *band_around(cost, band))
    out = []
    for i in range(count):
        choices = sampler.draw(rng, DRAW_TRIES)
        if choices is None:
            raise DnasError(f"no random architecture of the space costs within {band:.0%} of "
                            f"{cost:.4g} {table.unit} (widen --band)")  # fmt: skip
        out.append(Candidate(f"random-{seed}-{i}", choices))
    return out


def score(supernet: SuperNet, candidates: list[Candidate], calibration_batches: int,
          seed: int = 0) -> str:  # fmt: skip
    """Fill each candidate's ``oneshot`` score (the task's primary metric on the validation
    split) and ``cost`` (the search's cost model); returns the metric's label. Every
    candidate's batch norm is recalibrated on the same ``calibration_batches`` batches of the
    search's weight split."""
    exp, task = supernet.record.exp, supernet.record.task
    device = pick_device(exp.device, exp.source)
    train = dataset_of(task, "train", augment=True, seed=seed)
    weight_idx, _ = split_indices(len(train), exp.search.arch_fraction, exp.seed)
    loader = train_loader(train, weight_idx, exp.search.batch_size, exp.workers, seed)
    calibration = list(itertools.islice(stream(loader, 0), calibration_batches))
    val = make_loader(dataset_of(task, "val", augment=False), exp.search.batch_size, exp.workers)
    label = ""
    for c in candidates:
        seed_everything(seed)
        net = subnet(supernet.record.space, task.num_outputs, supernet.state, c.choices)
        net = net.to(device)
        recalibrate_batch_norm(net, calibration, device)
        metrics = evaluate(task, net, val, device, None)
        c.oneshot, label = metrics.score, metrics.primary_label
        c.cost = supernet.record.table.of_choices(c.choices)
    return label


def rank(
    run: Path | str,
    archs: list[str],
    random_nets: int = 0,
    band: float = DEFAULT_BAND,
    calibration_batches: int = 20,
    seed: int = 0,
    overrides: Sequence[str] = (),
    compare: Sequence[Path | str] = (),
) -> dict[str, Any]:
    """One-shot scores of the run's derived net, of ``archs`` and of ``random_nets`` random
    nets of its cost; Kendall's tau between one-shot and standalone scores where given, and
    between this run's one-shot scores and those of the same nets in each ``compare`` run's
    super net (searches of the same space with other seeds); and the derived net's place
    among the others by one-shot score."""
    if calibration_batches < 1:
        raise DnasError(f"--calibration-batches: expected at least 1, got {calibration_batches}")
    check_band(band, "rank")
    supernet = load_supernet(run, overrides)
    others = [load_supernet(ref, overrides) for ref in compare]
    for ref, other in zip(compare, others, strict=True):
        same_task(ref, other.record.exp.task, supernet.record.exp.task, "searched")
        if other.record.space.digest() != supernet.record.space.digest():
            raise DnasError(f"{ref}: searched another space than {run}; only super nets of one "
                            "space compare")  # fmt: skip
    derived = Candidate("derived", dict(supernet.record.choices))
    given = merge(read_candidate(ref, supernet.record) for ref in archs)
    candidates = merge([derived, *given, *random_candidates(supernet, random_nets, band, seed)])
    label = score(supernet, candidates, calibration_batches, seed)
    trained = [c for c in candidates if c.standalone]
    report: dict[str, Any] = {
        "run": str(run), "metric": label, "unit": supernet.record.table.unit,
        "calibration_batches": calibration_batches, "seed": seed,
        "candidates": [{"name": c.name, "cost": c.cost, "oneshot": c.oneshot,
                        "standalone": c.standalone,
                        "standalone_mean": statistics.mean(c.standalone) if c.standalone else None,
                        "choices": c.choices} for c in candidates],
        "kendall_tau": None, "kendall_p": None, "trained": len(trained),
    }  # fmt: skip
    if len(trained) >= 3:
        report["kendall_tau"], report["kendall_p"] = kendall(
            [c.oneshot for c in trained], [statistics.mean(c.standalone) for c in trained]
        )
    report["compared"] = []
    for ref, other in zip(compare, others, strict=True):
        again = [Candidate(c.name, c.choices) for c in candidates]
        score(other, again, calibration_batches, seed)
        tau, p = kendall([c.oneshot for c in candidates], [c.oneshot for c in again])
        report["compared"].append({"run": str(ref), "kendall_tau": tau, "kendall_p": p,
                                   "oneshot": {c.name: c.oneshot for c in again}})  # fmt: skip
    rest = [c.oneshot for c in candidates[1:]]
    if rest:  # ties count half, as in a rank statistic
        derived = candidates[0].oneshot
        report["derived_above"] = sum((derived > o) + 0.5 * (derived == o) for o in rest) \
            / len(rest)  # fmt: skip
    best = best_within(candidates, band)
    space = supernet.record.space
    report["best"] = best.name
    report["best_architecture"] = space.with_choices(
        best.choices, f"{space.name}-oneshot-best"
    ).to_dict()
    return report


def kendall(x: list[float], y: list[float]) -> tuple[float | None, float | None]:
    """Kendall's tau-b of two score lists and its p-value; (None, None) when it is undefined
    (fewer than two items, or a constant side)."""
    if len(x) < 2:
        return None, None
    from scipy.stats import kendalltau  # here, not at import: seconds off every CLI start

    tau, p = kendalltau(x, y)
    return (float(tau), float(p)) if np.isfinite(tau) else (None, None)


def best_within(candidates: list[Candidate], band: float) -> Candidate:
    """The candidate with the highest one-shot score (the task's metric, higher is better, as
    in training's model selection) among those within ``band`` of the first one's cost (the
    derived net's): random search with weight sharing (Li & Talwalkar, UAI 2019)."""
    low, high = band_around(candidates[0].cost, band)
    within = [c for c in candidates if low <= c.cost <= high]
    return max(within, key=lambda c: c.oneshot)


def write_best(run: Path | str, report: dict[str, Any], path: Path | str) -> None:
    """The report's best net (``best_architecture``) as an architecture YAML."""
    best = next(c for c in report["candidates"] if c["name"] == report["best"])
    arch = space_from_dict(report["best_architecture"], source=str(path))
    write_architecture(arch, path,
                       f"the best of {len(report['candidates'])} nets by one-shot "
                       f"{report['metric']} in 'dnas rank {run}': {best['oneshot']:.4g} "
                       f"({best['name']}, {best['cost']:.4g} {report['unit']})",
                       force=True)  # fmt: skip


def format_report(report: dict[str, Any]) -> str:
    """The report of :func:`rank` as text: a line per net, best one-shot score first, then the
    rank correlation."""
    rows = sorted(report["candidates"], key=lambda c: -c["oneshot"])
    lines = [f"{'one-shot':>9} {'standalone':>10} {'cost':>10}  net"]
    for c in rows:
        alone = f"{c['standalone_mean']:.2f}" if c["standalone_mean"] is not None else "-"
        lines.append(f"{c['oneshot']:9.2f} {alone:>10} {c['cost']:10.4g}  {c['name']}")
    if "derived_above" in report:
        lines.append(f"the derived net's one-shot score is above {report['derived_above']:.0%} "
                     f"of the {len(rows) - 1} other nets")  # fmt: skip
    lines.append(f"best one-shot net within the band of the derived net's cost: {report['best']}")
    for other in report["compared"]:
        tau = "undefined" if other["kendall_tau"] is None else f"{other['kendall_tau']:.3f} " \
            f"(p = {other['kendall_p']:.3f})"  # fmt: skip
        lines.append(f"Kendall tau, one-shot here vs in {other['run']}'s super net over "
                     f"{len(rows)} nets: {tau}")  # fmt: skip
    if report["kendall_tau"] is not None:
        tau, p = report["kendall_tau"], report["kendall_p"]
        lines.append(f"Kendall tau, one-shot vs standalone over {report['trained']} trained "
                     f"nets: {tau:.3f} (p = {p:.3f})")  # fmt: skip
    return "\n".join(lines)
