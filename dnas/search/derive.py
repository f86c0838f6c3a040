"""Derive the final architecture from a search checkpoint: the op the search chose per layer (the
most probable one; under a ``budget`` cost form, the most probable net within the band)."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from dnas import checkpoint
from dnas.config import Experiment, apply_overrides, blamed, form_reads
from dnas.errors import ConfigError, DnasError
from dnas.files import write_text_atomic
from dnas.schema import from_dict
from dnas.search.cost_model import CostTable, configured_cost_model
from dnas.search.evidence import noise_epochs_warning, noise_warning
from dnas.space.choices import UNDECIDED, decisiveness, most_probable_ops, probability_problem
from dnas.space.graph import SearchSpace, space_from_dict
from dnas.task import Task, build_task


@dataclass
class DerivedLayer:
    layer: str
    op: str
    prob: float
    probs: dict[str, float]


def find_checkpoint(ref: Path) -> Path:
    """A search run directory (its ``search.pt``) or a checkpoint file; a folder without one
    is a one-line error saying what it is instead."""
    if not isinstance(ref, str | Path):
        raise DnasError(f"expected a search run folder or its search.pt, got {ref!r}")
    ref = Path(ref)
    if not ref.is_dir():
        return ref
    if not (ref / "search.pt").exists() and (ref / "model.pt").exists():
        raise DnasError(f"{ref}: a train run, not a search; its architecture is "
                        f"{ref / 'arch.yaml'}")  # fmt: skip
    if not (ref / "search.pt").exists():
        raise DnasError(f"{ref}: no search.pt in this folder; expected a 'dnas search' run "
                        "folder or its search.pt")  # fmt: skip
    return ref / "search.pt"


@dataclass
class SearchRecord:
    """What a search checkpoint holds, rebuilt: the space searched, the experiment, its task,
    the cost table it searched with, the derived ops, and the raw checkpoint."""

    path: Path
    ckpt: dict
    space: SearchSpace
    exp: Experiment
    task: Task
    table: CostTable
    choices: dict[str, str]


FIXED_BY_SEARCH = ("space", "head")  # config keys that a search run's checkpoint settles


def load_search(ref: Path | str, overrides: Sequence[str] = ()) -> SearchRecord:
    """A search run (directory or ``search.pt``) with its experiment, task and cost table
    rebuilt from the checkpoint's own copy (``overrides``: ``key=value`` laid over it, e.g. a
    moved dataset's ``task.root``), and the ops ``dnas derive`` would write."""
    path, ckpt = read_search(ref)
    _, rows = derive_checkpoint(path, ckpt)  # the choices of ``dnas derive``
    if not isinstance(ckpt.get("config"), dict):
        raise DnasError(f"{path}: a damaged search checkpoint (no config)")
    space = space_from_dict(ckpt["space"], source=str(path))  # the space searched
    for item in overrides:  # the super net is the space the search ran over, head included
        key = str(item).split("=", 1)[0]
        if key.split(".")[0] in FIXED_BY_SEARCH:
            raise DnasError(f"--set {key}: a search run's super net is its own space and head, "
                            f"recorded in {path}; only its task, data and run settings can be "
                            "overridden")  # fmt: skip
    recorded = {k: v for k, v in ckpt["config"].items() if k != "source"}
    try:
        config = apply_overrides(copy.deepcopy(recorded), list(overrides), str(path))
        exp = from_dict(Experiment, config, str(path), "")
        exp.source = str(path)
        task = build_task(exp)
        model = configured_cost_model(exp.cost_model, exp.source)
        table = model.table(space, exp.input_hw, task.num_outputs)
    except ConfigError as exc:  # a value --set laid over the recorded config is --set's
        raise blamed(exc, {str(path)}, overrides, recorded) from None
    return SearchRecord(path, ckpt, space, exp, task, table, {r.layer: r.op for r in rows})


def read_search(ref: Path | str) -> tuple[Path, dict]:
    """A search run's checkpoint (its directory or ``search.pt``), loaded and checked. A super
    net's checkpoint holds thousands of tensors and takes seconds to load, so callers load it
    once and hand it on."""
    path = find_checkpoint(ref)
    ckpt = checkpoint.load(path)
    if not isinstance(ckpt, dict) or ckpt.get("kind") != "dnas-search":
        raise DnasError(f"{path}: not a dnas search checkpoint (write one with 'dnas search')")
    if missing := [k for k in ("space", "arch_probs") if not isinstance(ckpt.get(k), dict)]:
        raise DnasError(f"{path}: a damaged search checkpoint (no {', '.join(missing)})")
    return path, ckpt


def derive(ref: Path | str, name: str | None = None) -> tuple[SearchSpace, list[DerivedLayer]]:
    """The architecture a search chose (its checkpoint's ``choices``; the argmax for checkpoints
    written before they were recorded), and per searchable layer the chosen op's probability."""
    return derive_checkpoint(*read_search(ref), name)


def derive_checkpoint(
    path: Path, ckpt: dict, name: str | None = None
) -> tuple[SearchSpace, list[DerivedLayer]]:
    """:func:`derive` of a checkpoint :func:`read_search` loaded from ``path``."""
    space = space_from_dict(ckpt["space"], source=str(path))
    probs, chosen = ckpt["arch_probs"], ckpt.get("choices")
    if problem := probability_problem(probs, space):  # before anything is written from them
        raise DnasError(f"{path}: arch_probs: {problem}")
    chosen = chosen if isinstance(chosen, dict) else {}
    choices = most_probable_ops(space, probs, str(path))
    rows = []
    for layer in space.searchable_layers:
        if chosen.get(layer.name) in layer.candidates:
            choices[layer.name] = chosen[layer.name]
        p = dict(zip(layer.candidates, probs[layer.name], strict=True))
        rows.append(DerivedLayer(layer.name, choices[layer.name], p[choices[layer.name]], p))
    arch = space.with_choices(choices, name or f"{space.name}-derived")
    return arch, rows


def write_architecture(arch: SearchSpace, path: Path | str, comment: str | None = "", *,
                       force: bool = False) -> None:  # fmt: skip
    """Write ``arch`` as an architecture YAML (``comment`` as ``#`` lines above it), loadable
    by ``--arch`` and ``load_space``. An existing file is replaced only with ``force``, as
    ``dnas derive -o`` replaces one only with ``--force``."""
    if not isinstance(arch, SearchSpace):
        raise DnasError(f"write_architecture: expected a SearchSpace, got {type(arch).__name__}")
    if Path(path).is_dir():
        raise DnasError(f"{path}: a folder; give the architecture's file name (arch.yaml)")
    if Path(path).exists() and not force:
        raise DnasError(f"{path} exists; pass force=True to replace it")
    header = "".join(f"# {line}\n" for line in (comment or "").splitlines())
    body = yaml.safe_dump(arch.to_dict(), sort_keys=False, default_flow_style=None)
    write_text_atomic(path, header + body)


def undecided_warning(rows: list[DerivedLayer]) -> str | None:
    """One line when the search ended undecided: the argmax then breaks near-ties."""
    mean = decisiveness({r.layer: list(r.probs.values()) for r in rows})
    if mean >= UNDECIDED:
        return None
    return (f"the search ended undecided (mean top op probability {mean:.3f} < {UNDECIDED}): "
            "the derived ops are near-ties; search longer or with a larger "
            "search.arch_optimizer.lr")  # fmt: skip


def incomplete_warning(path: Path, ckpt: dict) -> str | None:
    """One line when the search whose checkpoint this is (``ckpt``, loaded from ``path``)
    stopped before its last epoch (an interrupted run: its probabilities are those of a search
    cut short)."""
    done, total = ckpt.get("epoch"), ckpt.get("num_epochs")
    if not isinstance(done, int) or not isinstance(total, int) or done >= total:
        return None
    return (
        f"{path} holds an incomplete search ({done} of {total} epochs); finish it with "
        "'dnas search ... --resume' before deriving, or accept a search cut short"
    )


def target_part(cost: float, unit: str, target: float | None, form: str) -> str | None:
    """``target 17.61 MMAC, +1.8 %``: the derived cost against the target, under a form that
    reads one (``FORM_KEYS``); None otherwise."""
    if target is None or not form_reads(form, "target"):
        return None
    return f"target {target:.4g} {unit}, {100 * (cost / target - 1):+.1f} %"


def derived_line(ckpt: dict) -> str | None:
    """What ``dnas derive`` reports of the net: its cost (against the target) and how decided
    the search was; None for a checkpoint that records no cost (written before 2026-12)."""
    cost, unit = ckpt.get("final_cost"), ckpt.get("cost_unit", "")
    if not isinstance(cost, int | float):
        return None
    cost_model = (ckpt.get("config") or {}).get("cost_model") or {}
    aim = target_part(cost, unit, cost_model.get("target"), cost_model.get("form", "relative"))
    return derived_cost_line(cost, unit, aim, decisiveness(ckpt["arch_probs"]))


def derived_cost_line(cost: float, unit: str, aim: str | None, decided: float) -> str:
    """``derived architecture cost: ... (aim); decisiveness ...``: what a search's closing line
    and ``dnas derive`` say of the derived net."""
    return (f"derived architecture cost: {cost:.4g} {unit}" + (f" ({aim})" if aim else "")
            + f"; decisiveness (mean top op probability) {decided:.3f}")  # fmt: skip


def budget_warning(ckpt: dict) -> str | None:
    """One line when the derived net's cost lies outside a budget search's band (no net of the
    space costs that much; the search took the nearest)."""
    band, cost, unit = ckpt.get("band"), ckpt.get("final_cost"), ckpt.get("cost_unit", "")
    if not band or not isinstance(cost, int | float) or band[0] <= cost <= band[1]:
        return None
    off = 100 * (2 * cost / (band[0] + band[1]) - 1)
    return (f"the derived net costs {cost:.6g} {unit} ({off:+.2f} % of the target), outside the "
            f"budget band {band[0]:.6g}..{band[1]:.6g} {unit}: no net of the space costs within "
            "it, the nearest was taken (widen cost_model.tolerance)")  # fmt: skip


def evidence_warnings(ckpt: dict) -> list[str]:
    """A line each when the search's architecture gradient never rose above noise, and when it
    was noise in most of its architecture epochs (:mod:`dnas.search.evidence`)."""
    evidence = ckpt.get("gradient_evidence")
    strategy = (ckpt.get("config") or {}).get("search", {}).get("strategy")
    lines = (noise_warning(evidence), noise_epochs_warning(evidence, strategy))
    return [line for line in lines if line]


def format_rows(rows: list[DerivedLayer]) -> str:
    """The derived op per layer with its probability; ``*`` after the probability marks an op
    that is not the layer's most probable one (a budget search moved it into the band)."""
    lines = [f"{'layer':<12} {'op':<6} {'prob':>6}   all candidates"]
    for r in rows:
        others = " ".join(f"{op}:{p:.3f}" for op, p in r.probs.items())
        mark = "*" if r.prob < max(r.probs.values()) else " "
        lines.append(f"{r.layer:<12} {r.op:<6} {r.prob:6.3f}{mark}  {others}")
    if any(r.prob < max(r.probs.values()) for r in rows):
        lines.append("* not the layer's most probable op: moved to meet the budget band")
    return "\n".join(lines)
