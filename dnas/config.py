"""Experiment configuration: one YAML file, typed, with the paper's values as defaults.

Unknown keys, wrong types and out-of-range values are one-line ConfigErrors naming the file and
key path. ``overrides`` (``key.path=value``, values parsed as YAML) are applied before validation,
so the CLI's ``--set search.epochs=2`` is checked exactly like the file.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import re
import typing
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from dnas.errors import ConfigError, DnasError
from dnas.files import write_text_atomic
from dnas.registry import COST_MODELS, STRATEGIES, TASKS
from dnas.schema import (
    check_keys,
    expect_mapping,
    field_names,
    from_dict,
    join,
    load_yaml,
    parse_yaml,
    plugin_field,
    to_dict,
)

# Upper bounds: absurd sizes are rejected here, before anything is allocated or looped over.
MAX_INPUT = 8192  # input height and width, pixels
DEFAULT_INPUT_HW = (256, 256)  # an experiment's, and what commands measure at when none says
MAX_BATCH = 65536
MAX_EPOCHS = 100_000
MAX_STEPS = 10**9


def cost_model_options(cfg: Any, extra: dict, source: str, path: str,
                       declared: list[str]) -> Any:  # fmt: skip
    """The keys of ``cost_model:`` that the cost model named by ``type`` declares."""
    try:
        model = COST_MODELS.get(cfg.type)
    except DnasError as exc:
        raise ConfigError(source, join(path, "type"), str(exc)) from None
    options_cls = model.Options
    if clash := sorted(set(declared) & set(field_names(options_cls))):  # unreachable options
        raise DnasError(f"cost model {cfg.type!r} ({model.__module__}): its options "
                        f"{', '.join(clash)} are keys of cost_model: itself; the plugin must "
                        "rename them")  # fmt: skip
    check_keys(extra, declared + field_names(options_cls), [], source, path)
    return from_dict(options_cls, extra, source, path)


def strategy_sections() -> dict[str, type]:
    """The option sections of the registered strategies under ``search:`` (``search.random``,
    ``search.single_path``, ...): key -> the ``Options`` dataclass, which strategies sharing a
    key share."""
    sections: dict[str, type] = {}
    builtin_first = sorted(
        STRATEGIES.names(),  # so that a plugin's clash is blamed on it
        key=lambda n: not STRATEGIES.get(n).__module__.startswith("dnas."),
    )
    for name in builtin_first:
        cls = STRATEGIES.get(name)
        if cls.options_key is not None:
            known = sections.setdefault(cls.options_key, cls.Options)
            if known is not cls.Options:  # a plugin's strategy reuses another's section
                raise DnasError(f"strategy {name!r} ({cls.__module__}): search."
                                f"{cls.options_key} is already the section of other options "
                                f"({known.__module__}.{known.__name__}); the plugin must name "
                                "its own options_key")  # fmt: skip
    return sections


def strategy_options(cfg: Any, extra: dict, source: str, path: str,
                     declared: list[str]) -> dict[str, Any]:  # fmt: skip
    """Every strategy's option section under ``search:``, given or at its defaults."""
    sections = strategy_sections()
    check_keys(extra, declared + list(sections), [], source, path)
    return {key: from_dict(cls, extra.get(key), source, join(path, key))
            for key, cls in sections.items()}  # fmt: skip


def default_strategy_options() -> dict[str, Any]:
    return {key: cls() for key, cls in strategy_sections().items()}


# the cost_model keys each form reads (README, "Forms"): a search warns of one set for a form
# that ignores it (a target under ``relative`` only shifts the logged value; it sets no budget)
FORM_KEYS = {
    "relative": ("weight",),
    "budget": ("target", "tolerance", "dual_lr"),
    "log": ("weight", "tau"),
    "hinge": ("weight", "target"),
    "power": ("weight", "target", "beta"),
}


def form_reads(form: str, key: str) -> bool:
    """Whether the cost form ``form`` reads the ``cost_model`` key ``key`` (``FORM_KEYS``)."""
    return key in FORM_KEYS.get(form, ())


def band_around(cost: float, share: float) -> tuple[float, float]:
    """The costs within ``share`` (relative) of ``cost``: a budget's band, and the band random
    nets are drawn in to match a net's cost."""
    return cost * (1 - share), cost * (1 + share)


@dataclass
class CostConfig:
    """The cost term of the architecture loss (``dnas.search.objective``; README, "Forms").

    ``form: relative`` (default): ln(task loss) + weight * ln(cost), scale-free, so ``weight``
    (lambda) means the same for every task and input size; ``budget``: the same, with lambda
    adapted from 0 (dual ascent, step ``dual_lr``) until the derived net costs ``target``;
    ``log``: the paper's Eq. 6, task loss + weight * log_tau(cost); ``hinge`` and ``power``:
    penalise only the cost above ``target``. ``target`` is in the cost model's unit. The cost
    model named by ``type`` adds its own keys (its ``Options``: ``table``, ``batch``, ``device``,
    ``runtime`` and ``threads`` for ``latency``), held in ``options``.
    """

    type: str = "flops"
    weight: float = field(default=0.05, metadata={"min": 0.0, "max": 1e3})  # README: "Forms"
    tau: float = field(default=10.0, metadata={"min": 1.0001})
    form: str = field(default="relative", metadata={"choices": list(FORM_KEYS)})
    target: float | None = field(default=None, metadata={"min": 1e-12})
    beta: float = field(default=2.0, metadata={"min": 1.0})
    dual_lr: float = field(default=0.1, metadata={"min": 0.0, "max": 100.0})
    tolerance: float = field(default=0.02, metadata={"min": 0.0, "max": 0.5})  # budget band
    # None: the cost model's defaults (set by the YAML reader; see ``cost_model_options``)
    options: Any = plugin_field(cost_model_options, default=None)

    def band(self) -> tuple[float, float] | None:
        """The costs a ``budget`` search's derived net must lie between, else None."""
        if self.form != "budget" or self.target is None:
            return None
        return band_around(self.target, self.tolerance)


@dataclass
class WeightOptimizer:
    """The operating weights' optimiser, lr cosine-annealed to 0 over the search: SGD with
    momentum (paper Sec. 4.1), or Adam (``betas``; the optimiser pose nets train with, which
    does not depend on the heatmap loss's small scale: give it a training lr such as 1e-3)."""

    type: str = field(default="sgd", metadata={"choices": ["sgd", "adam"]})
    lr: float = field(default=0.05, metadata={"min": 0.0})
    momentum: float = field(default=0.9, metadata={"min": 0.0, "max": 1.0})
    betas: list[float] = field(
        default_factory=lambda: [0.9, 0.999], metadata={"min": 0.0, "max": 0.99999}
    )
    weight_decay: float = field(default=1e-4, metadata={"min": 0.0})
    grad_clip: float = field(default=5.0, metadata={"min": 0.0})


@dataclass
class ArchOptimizer:
    """Adam on the architecture parameters at a fixed lr (paper: 3e-4 for ~80k steps; betas as
    DARTS). No weight decay by default: Adam adds wd * alpha to the gradient, which caps
    |alpha| at |gradient| / wd and keeps the probabilities near uniform (DARTS used 1e-3)."""

    lr: float = field(default=3e-4, metadata={"min": 0.0})
    betas: list[float] = field(
        default_factory=lambda: [0.5, 0.999], metadata={"min": 0.0, "max": 0.99999}
    )
    weight_decay: float = field(default=0.0, metadata={"min": 0.0})


@dataclass
class SearchConfig:
    """The search loop's settings; a strategy's own options live in its section
    (``options[strategy.options_key]``, declared by the strategy's ``Options``)."""

    strategy: str = "darts"
    warmup_epochs: int = field(default=60, metadata={"min": 0, "max": MAX_EPOCHS})
    epochs: int = field(default=150, metadata={"min": 0, "max": MAX_EPOCHS})
    batch_size: int = field(default=32, metadata={"min": 1, "max": MAX_BATCH})
    arch_fraction: float = field(default=0.2, metadata={"min": 0.01, "max": 0.99})
    drop_path: float = field(default=0.1, metadata={"min": 0.0, "max": 0.9})
    steps_per_epoch: int | None = field(default=None, metadata={"min": 1, "max": MAX_STEPS})
    # one architecture step per this many weight steps (DARTS, the paper: 1; ProxylessNAS: 5)
    arch_every: int = field(default=1, metadata={"min": 1, "max": MAX_STEPS})
    # where alpha starts: ``uniform`` (alpha = 0, the paper) or ``budget``: the log of the
    # maximum-entropy op distribution whose expected cost is cost_model.target, so that the
    # search starts on the budget instead of dragging the expected cost down to it
    arch_init: str = field(default="uniform", metadata={"choices": ["uniform", "budget"]})
    weight_optimizer: WeightOptimizer = field(default_factory=WeightOptimizer)
    arch_optimizer: ArchOptimizer = field(default_factory=ArchOptimizer)
    # each strategy's own section, by its ``options_key`` (``search.random``, ...)
    options: dict[str, Any] = plugin_field(
        strategy_options, default_factory=default_strategy_options
    )


@dataclass
class TrainConfig:
    """Training a fixed architecture: Adam, step schedule (paper: 200 epochs, x0.1 at 150, 170)
    or cosine."""

    epochs: int = field(default=200, metadata={"min": 1, "max": MAX_EPOCHS})
    batch_size: int = field(default=32, metadata={"min": 1, "max": MAX_BATCH})
    lr: float = field(default=1e-3, metadata={"min": 0.0})
    weight_decay: float = field(default=0.0, metadata={"min": 0.0})
    milestones: list[int] = field(
        default_factory=lambda: [150, 170], metadata={"min": 1, "max": MAX_EPOCHS}
    )
    gamma: float = field(default=0.1, metadata={"min": 0.0})
    steps_per_epoch: int | None = field(default=None, metadata={"min": 1, "max": MAX_STEPS})
    eval_every: int = field(default=10, metadata={"min": 1, "max": MAX_EPOCHS})
    # ``step``: lr x gamma at each milestone epoch (the paper); ``cosine``: linear warm-up over
    # ``warmup_steps`` steps, then lr (1 + cos(pi t / T)) / 2 per step down to 0 at the end
    # (SGDR without restarts, Loshchilov & Hutter 2017; ``milestones``/``gamma`` unused)
    schedule: str = field(default="step", metadata={"choices": ["step", "cosine"]})
    warmup_steps: int = field(default=0, metadata={"min": 0, "max": MAX_STEPS})


@dataclass
class CheckpointConfig:
    """Resume checkpoints in the run directory's ``checkpoints/`` (``--resume`` reads them)."""

    every_steps: int = field(default=0, metadata={"min": 0, "max": MAX_STEPS})  # 0: epoch ends
    keep_last: int = field(default=3, metadata={"min": 1, "max": 1000})


@dataclass
class Experiment:
    task: dict[str, Any]
    space: str | None = None  # None: the task's default_space, filled in by load_experiment
    input_size: list[int] = field(
        default_factory=lambda: list(DEFAULT_INPUT_HW), metadata={"min": 8, "max": MAX_INPUT}
    )
    head: dict[str, Any] = field(default_factory=dict)
    cost_model: CostConfig = field(default_factory=CostConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    seed: int = field(default=0, metadata={"min": 0, "max": 2**32 - 1})
    remap_from: str | None = None  # seed MobileNetV2 state_dict for FNA remapping (dnas.nn.remap)
    workers: int = field(default=0, metadata={"min": 0, "max": 256})
    device: str = "auto"
    precision: str = field(default="fp32", metadata={"choices": ["fp32", "bf16", "fp16"]})
    channels_last: bool = False
    # distributed runs: batch norm over the global batch, as a 1-process run computes it
    sync_batchnorm: bool = True
    # a search's TensorBoard pictures (op-probability heat map, derived architecture) after
    # each epoch that changed them: about a second each, so short searches may go without
    pictures: bool = True
    source: str = field(default="<memory>", metadata={"internal": True})  # the YAML's path

    @property
    def input_hw(self) -> tuple[int, int]:
        return int(self.input_size[0]), int(self.input_size[1])


def is_section(parts: list[str]) -> bool:
    """Whether the key path names a section of settings with defaults of its own (``search``,
    ``train``, ``search.arch_optimizer``, ...), which null or ``{}`` would reset wholesale."""
    kind: Any = Experiment
    for part in parts:
        hints = typing.get_type_hints(kind) if dataclasses.is_dataclass(kind) else {}
        if part not in hints:
            return False
        kind = hints[part]
    return dataclasses.is_dataclass(kind)


def apply_overrides(data: dict, overrides: list[str], source: str) -> dict:
    """Set ``a.b.c=value`` entries (value parsed as YAML) into the raw config mapping."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError("--set", item, "expected key.path=value")
        key, raw = item.split("=", 1)
        if not all(key.split(".")):  # '=3', 'search.=3', 'a..b=1'
            raise ConfigError("--set", item, "expected key.path=value with a key on the left")
        try:
            value = parse_yaml(raw)
        except yaml.YAMLError as exc:
            problem = getattr(exc, "problem", None)
            raise ConfigError("--set", key, f"cannot parse value {raw!r} as YAML"
                              + (f" ({problem})" if problem else "")) from None  # fmt: skip
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            if node.get(part) is None:  # absent or null: a section of defaults
                node[part] = {}
            node = node[part]
            if not isinstance(node, dict):
                raise ConfigError(source, key, f"cannot set inside non-mapping {part!r}")
        if value in (None, {}) and node.get(parts[-1]) and is_section(parts):
            raise ConfigError("--set", key, f"{raw!r} would drop the {len(node[parts[-1]])} keys "
                              f"of {key}: in {source} for the defaults; set or remove the keys "
                              f"themselves ({key}.KEY=VALUE)")  # fmt: skip
        node[parts[-1]] = value
    return data


def load_experiment(path: str | Path, overrides: list[str] | None = None) -> Experiment:
    """An experiment YAML with ``overrides`` (``key.path=value``, as ``--set``) laid over it,
    every key and value checked; mistakes are one-line ``ConfigError``s naming file and key."""
    if isinstance(overrides, str):
        raise DnasError(f"overrides: expected a list of 'key.path=value' strings, got "
                        f"{overrides!r}")  # fmt: skip
    overrides = list(overrides or [])  # any iterable, once
    if not all(isinstance(o, str) for o in overrides):
        raise DnasError(f"overrides: expected 'key.path=value' strings, got {overrides!r}")
    source = str(path)
    written = expect_mapping(load_yaml(path) or {}, source, "")
    data = apply_overrides(copy.deepcopy(written), overrides, source)
    if data.pop("source", None) is not None:
        warnings.warn(f"{source}: key 'source' ignored: it is no experiment key (the config.yaml "
                      "of a run recorded before 2026-12-01 holds the path it was read from)",
                      stacklevel=2)  # fmt: skip
    try:
        return experiment_from_dict(data, source)
    except ConfigError as exc:
        raise blamed(exc, {source}, overrides, written) from None


def blamed(exc: ConfigError, sources: set[str], overrides: Iterable[str],
           written: dict | None = None) -> ConfigError:  # fmt: skip
    """``exc`` as ``--set``'s when it names a key that an override set in the config file
    (one of ``sources``), or, given the file's own mapping ``written``, a key the file lacks
    that an override made (``--set nosuch.key=1``): the command line's mistake, not the file's."""
    keys = [item.split("=", 1)[0] for item in overrides]
    made = written is not None and not holds(written, exc.key)
    if exc.source in sources and any(under(exc.key, key) or (made and under(key, exc.key))
                                     for key in keys):  # fmt: skip
        return ConfigError("--set", exc.key, exc.detail)
    return exc


def holds(data: dict, key: str) -> bool:
    """Whether mapping ``data`` has key path ``key`` (``a.b``; list indices ``[i]`` ignored)."""
    node: Any = data
    for part in re.sub(r"\[\d+\]", "", key).split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def under(key: str, section: str) -> bool:
    """Whether key path ``key`` is ``section`` or lies inside it (as ``a.b.c`` and ``a.b[0]``
    lie in ``a.b``)."""
    return key == section or key.startswith((f"{section}.", f"{section}["))


def checked(exp: Experiment) -> Experiment:
    """``exp`` validated again as ``load_experiment`` validates a file, as a copy: an
    Experiment changed in code after loading (``exp.search.epochs = 0``) gets the same
    one-line errors before a run starts, not a traceback or a silent misrun in its middle."""
    if not isinstance(exp, Experiment):
        raise DnasError(f"expected an Experiment (dnas.load_experiment(PATH)), got "
                        f"{type(exp).__name__} {str(exp)[:60]!r}")  # fmt: skip
    data = {k: v for k, v in to_dict(exp).items() if k != "source"}  # internal: no YAML key
    return experiment_from_dict(data, exp.source)


def experiment_from_dict(data: dict, source: str) -> Experiment:
    """The Experiment of a config mapping read from ``source``, every key and value checked."""
    exp = from_dict(Experiment, data, source)
    exp.source = source
    if len(exp.input_size) != 2:
        raise ConfigError(source, "input_size", f"expected [height, width], got {exp.input_size}")
    for key in ("arch_optimizer", "weight_optimizer"):
        if len(getattr(exp.search, key).betas) != 2:
            raise ConfigError(source, f"search.{key}.betas", "expected two numbers [b1, b2]")
    if not re.fullmatch(r"auto|cpu|mps|cuda(:\d{1,3})?", exp.device):
        expected = "expected auto, cpu, cuda or cuda:N"
        raise ConfigError(source, "device", f"{expected}, got {exp.device!r}")
    if "name" not in exp.task:
        raise ConfigError(source, "task.name", f"missing required key (one of: {task_names()})")
    for key, registry, name in (("task.name", TASKS, exp.task["name"]),
                                ("search.strategy", STRATEGIES, exp.search.strategy)):  # fmt: skip
        try:  # named here, not first at a run's set-up
            registry.get(name)
        except DnasError as exc:
            raise ConfigError(source, key, str(exc)) from None
    if exp.space is None:
        exp.space = default_space(exp.task["name"])
    resolve_paths(exp, Path(source).parent)
    if form_reads(exp.cost_model.form, "target") and exp.cost_model.target is None:
        raise ConfigError(source, "cost_model.target", f"required by form {exp.cost_model.form}")
    if exp.search.arch_init == "budget" and exp.cost_model.target is None:
        raise ConfigError(source, "cost_model.target", "required by search.arch_init: budget")
    return exp


def beside(value: Any, base: Path) -> Any:
    """A relative path of a config: as given when it exists from the current directory (how
    earlier configs were read), else beside the config file when it exists there."""
    if not isinstance(value, str) or not value or Path(value).is_absolute() or Path(value).exists():
        return value
    candidate = base / value
    return str(candidate) if candidate.exists() else value


def resolve_paths(exp: Experiment, base: Path) -> None:
    """The config's file and directory keys (``space``, ``remap_from``, ``task.root``, a cost
    model's ``table``) resolved against ``base``, the config's directory (see :func:`beside`)."""
    exp.space, exp.remap_from = beside(exp.space, base), beside(exp.remap_from, base)
    if "root" in exp.task:
        exp.task["root"] = beside(exp.task["root"], base)
    options = exp.cost_model.options
    if options is not None and hasattr(options, "table"):
        options.table = beside(options.table, base)


def task_names() -> str:
    return ", ".join(TASKS.names())


def default_space(task_name: str) -> str | None:
    """The space a task searches when the experiment names none; None for a task without one
    (only a search needs a space: ``dnas.task.build_space`` reports it) or an unknown task
    (``build_task`` reports that)."""
    if task_name not in TASKS.names():
        return None
    return TASKS.get(task_name).default_space


def write_config(exp: Experiment, path: Path) -> None:
    """Write ``exp`` as a run's ``config.yaml``: every value resolved, and loadable as it is
    (``dnas search RUN/config.yaml``). Other strategies' sections at their defaults are left
    out (loading fills them in again), so the file still loads where a plugin that declared
    one is not installed."""
    data = {k: v for k, v in to_dict(exp).items() if k != "source"}
    for key in idle_default_sections(exp):
        data["search"].pop(key)
    write_text_atomic(path, yaml.safe_dump(data, sort_keys=False))


def idle_default_sections(exp: Experiment) -> list[str]:
    """The ``search:`` option sections of strategies other than ``exp``'s own that hold
    nothing but their defaults."""
    own = STRATEGIES.get(exp.search.strategy).options_key
    defaults = default_strategy_options()
    return [
        key
        for key, value in exp.search.options.items()
        if key not in (own, None) and to_dict(value) == to_dict(defaults.get(key))
    ]


UNHASHED = ("workers", "source", "checkpoint", "pictures")  # cannot change results


def config_hash(exp: Experiment) -> str:
    """A digest of everything in the config that can change a run's results (``workers`` and
    the file's name and checkpoint rotation cannot), stored in checkpoints so that a resume
    can tell a changed config."""
    data = {k: v for k, v in to_dict(exp).items() if k not in UNHASHED}
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def _leaves(data: Any, path: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(_leaves(value, join(path, str(key))))
        return out
    return {path: data}


def config_changes(recorded: Any, exp: Experiment) -> list[str]:
    """The key paths whose values differ between a run's recorded config (a checkpoint's
    ``config``) and ``exp``. A config recorded by an earlier version still resumes: a key it
    lacks (added since) counts as that key's default, and a key that ``exp`` lacks (moved or
    removed since: ``cost_model.table`` of a ``flops`` run) counts as null."""
    if not isinstance(recorded, dict):
        return ["<the checkpoint records no config>"]
    old = _leaves({k: v for k, v in recorded.items() if k not in UNHASHED})
    new = _leaves({k: v for k, v in to_dict(exp).items() if k not in UNHASHED})
    defaults = _leaves(to_dict(_defaults(exp)))
    return sorted(k for k in old.keys() | new.keys() if old.get(k, defaults.get(k)) != new.get(k))


def _defaults(exp: Experiment) -> Experiment:
    """Every key at its default, for the task and the cost model ``exp`` uses."""
    data = {"task": exp.task, "cost_model": {"type": exp.cost_model.type}}
    return from_dict(Experiment, data, exp.source)
