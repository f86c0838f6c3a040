"""Cost models: a per-op cost table for a space at an input size, and the cost-aware loss.

Paper Eq. 4-5: cost_l = sum_o p_{l,o} * cost_{l,o}; cost = fixed + sum_l cost_l, where ``fixed``
is the stem, head and every non-searchable layer. How the cost enters the architecture loss is
``dnas.search.objective``.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import warnings
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor

from dnas.config import CostConfig
from dnas.errors import ConfigError, DnasError, listing
from dnas.files import write_text_atomic
from dnas.registry import COST_MODELS, check_concrete
from dnas.schema import is_finite_number, is_integer, is_size, read_json
from dnas.space.graph import SearchSpace


@dataclass
class CostTable:
    """Cost of every candidate op of every searchable layer at its exact input shape.

    Values are in ``unit`` (e.g. MMAC); ``fixed`` holds everything that does not depend on the
    architecture choice. ``key`` records what the table was built for (space, input, outputs).
    """

    metric: str
    unit: str
    fixed: float
    layers: dict[str, dict[str, float]]
    key: dict

    def expected(self, layer_names: list[str], probs: list[Tensor]) -> Tensor:
        """Expected cost under per-layer op probabilities (Eq. 4-5); differentiable in probs."""
        terms = [
            (p.float() * torch.tensor(list(self.layers[name].values()), device=p.device)).sum()
            for name, p in zip(layer_names, probs, strict=True)
        ]  # float32 throughout: MPS has no float64
        return self.fixed + torch.stack(terms).sum() if terms else torch.tensor(self.fixed)

    def uniform_cost(self) -> float:
        """Expected cost when every candidate of every layer is equally likely."""
        return self.fixed + sum(sum(ops.values()) / len(ops) for ops in self.layers.values())

    def cost_range(self) -> tuple[float, float]:
        """Costs of the cheapest and the most expensive architecture of the space."""
        low = self.fixed + sum(min(ops.values()) for ops in self.layers.values())
        return low, self.fixed + sum(max(ops.values()) for ops in self.layers.values())

    def of_choices(self, choices: dict[str, str]) -> float:
        """Cost of the fixed architecture with op ``choices[layer]`` at every searchable layer;
        an architecture of another space (a layer missing, extra or with an op the table does
        not hold) is an error, never a partial sum."""
        if choices.keys() != self.layers.keys():
            missing, extra = (
                self.layers.keys() - choices.keys(),
                choices.keys() - self.layers.keys(),
            )
            raise DnasError(f"{self.metric} table: the architecture does not match its layers "
                            f"(missing {listing(sorted(missing), 4) or 'none'}, not in the "
                            f"table {listing(sorted(extra), 4) or 'none'})")  # fmt: skip
        if unknown := [(n, op) for n, op in choices.items() if op not in self.layers[n]]:
            raise DnasError(f"{self.metric} table: layer {unknown[0][0]} has no op "
                            f"{unknown[0][1]!r}")  # fmt: skip
        return self.fixed + sum(self.layers[name][op] for name, op in choices.items())

    def digest(self) -> str:
        """A hash of the costs (not of ``key``): a resumed search refuses a table that changed."""
        costs = json.dumps([self.metric, self.unit, self.fixed, self.layers], sort_keys=True)
        return hashlib.sha256(costs.encode()).hexdigest()[:16]

    def save(self, path: Path) -> None:
        write_text_atomic(path, json.dumps(asdict(self), indent=1))

    @classmethod
    def load(cls, path: Path | str) -> CostTable:
        """A table written by :meth:`save` (a cached one)."""
        data = read_json(Path(path), "cost table")
        try:
            return cls(**data)
        except TypeError:
            raise DnasError(f"{path}: not a dnas cost table (a latency table is read with "
                            "cost_model: {type: latency, table: ...})") from None  # fmt: skip


def coverage_problem(table: CostTable, space: SearchSpace) -> str | None:
    """What keeps ``table`` from costing every architecture of ``space`` (a missing or extra
    layer or op, a value that is not a finite number, a negative cost), or None."""
    layers = {layer.name: layer.candidates for layer in space.searchable_layers}
    if table.layers.keys() != layers.keys():
        missing, extra = layers.keys() - table.layers.keys(), table.layers.keys() - layers.keys()
        return (f"misses layers {listing(sorted(missing), 4) or 'none'} and has others "
                f"{listing(sorted(extra), 4) or 'none'}")  # fmt: skip
    for name, ops in layers.items():
        if list(table.layers[name]) != list(ops):  # in order: expected() pairs them with probs
            return f"layer {name}: has ops {list(table.layers[name])}, the space {list(ops)}"
        if not all(map(is_finite_number, table.layers[name].values())):
            return f"layer {name}: a cost that is not a finite number"
        if min(table.layers[name].values()) < 0:  # a search would seek it out as a reward
            return f"layer {name}: a negative cost {min(table.layers[name].values()):.6g}"
    if not is_finite_number(table.fixed):
        return "has a fixed cost that is not a number"
    cheapest = table.fixed + sum(min(ops.values()) for ops in table.layers.values())
    return None if cheapest >= 0 else f"gives its cheapest net a negative cost {cheapest:.6g}"


def source_digest(cls: type) -> str:
    """A hash of a class's source ('' where there is none to read, e.g. a notebook's class)."""
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        return ""
    return hashlib.sha256(source.encode()).hexdigest()[:16]


def cache_dir() -> Path:
    """Where cost tables are cached: $DNAS_CACHE_DIR, else ~/.cache/dnas."""
    return Path(os.environ.get("DNAS_CACHE_DIR", Path.home() / ".cache" / "dnas"))


@dataclass
class NoOptions:
    """The options of a cost model that has none (``flops``, ``params``)."""


class CostModel(ABC):
    """Builds (and caches) a :class:`CostTable`; subclasses are registered in ``COST_MODELS``
    and declare their own ``cost_model:`` keys as the dataclass ``Options``."""

    metric: str
    unit: str
    Options: ClassVar[type] = NoOptions

    def __init__(self, options: Any = None) -> None:
        self.options = options if options is not None else self.Options()

    def table(self, space: SearchSpace, input_hw: tuple[int, int], num_outputs: int) -> CostTable:
        """The table of ``space`` at ``input_hw``: from the cache when one was built for the same
        space, input, outputs, options and cost-model class (its source included), else built
        and cached. A table that misses a layer or an op of the space is refused."""
        cls = type(self)
        key = {
            "model": f"{cls.__module__}.{cls.__qualname__}",
            "code": source_digest(cls),  # an edited build() builds anew
            "metric": self.metric,
            "space": space.digest(),
            "input": list(input_hw),
            "num_outputs": num_outputs,
            "options": asdict(self.options),  # a table per setting of the model's own keys
            **self.key_extra(),
        }
        key = json.loads(json.dumps(key, default=str))  # as the cached file holds it
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
        path = cache_dir() / "cost_tables" / f"{self.metric}-{digest}.json"
        if path.exists():
            try:
                table = CostTable.load(path)
            except DnasError:  # a half-written or foreign file: measured again below
                table = None
            if table is not None and table.key == key and not coverage_problem(table, space):
                return table
        # Building instantiates modules: keep the caller's RNG stream identical with or without
        # a cached table, so a seeded search does not depend on the cache.
        with torch.random.fork_rng(devices=[]):
            table = self.build(space, input_hw, num_outputs)
        if not isinstance(table, CostTable):
            raise DnasError(f"cost model {cls.__module__}.{cls.__qualname__}: build() returned "
                            f"a {type(table).__name__}, not a CostTable")  # fmt: skip
        if problem := coverage_problem(table, space):
            raise DnasError(f"cost model {cls.__module__}.{cls.__qualname__}: its {self.metric} "
                            f"table of space {space.name!r} {problem}")  # fmt: skip
        table.key = key
        try:
            table.save(path)
        except OSError as exc:  # a cache that cannot be written costs time, not the run
            warnings.warn(f"{cache_dir()} ($DNAS_CACHE_DIR or ~/.cache/dnas): the {self.metric} "
                          f"table is not cached ({exc.strerror}); it is built anew each run",
                          stacklevel=2)  # fmt: skip
        return table

    def key_extra(self) -> dict:
        """What else the table depends on beyond the space, input, outputs and the model's
        ``Options`` (all in the cache key already): e.g. a library version."""
        return {}

    @abstractmethod
    def build(self, space: SearchSpace, input_hw: tuple[int, int], num_outputs: int) -> CostTable:
        """Measure every candidate op of every searchable layer, plus the fixed part."""


def get_cost_model(name: str, cfg: CostConfig | None = None) -> CostModel:
    """The registered cost model ``name``, with the options of ``cfg`` (its defaults when
    ``cfg`` is None or holds none)."""
    cls = COST_MODELS.get(name)
    check_concrete(cls, "cost model", name, attributes=("metric", "unit"))
    return cls(cfg.options if cfg is not None else None)


def configured_cost_model(cfg: CostConfig, source: str) -> CostModel:
    """The cost model of an experiment's ``cost_model:`` (read from ``source``); a mistake is
    one line naming the file and the key: the option a cost model names (``ConfigError`` with
    no file), else ``cost_model.type``."""
    try:
        return get_cost_model(cfg.type, cfg)
    except ConfigError as exc:
        if exc.source:  # it names its own file
            raise
        raise ConfigError(source, exc.key, exc.detail) from None
    except DnasError as exc:
        raise ConfigError(source, "cost_model.type", str(exc)) from None


def cost_table(
    space: SearchSpace, input_hw: tuple[int, int], outputs: int, cfg: CostConfig | None = None
) -> CostTable:
    """The cost of every candidate op of ``space`` at ``input_hw`` with ``outputs`` head
    channels, under the cost model ``cfg`` names (default: FLOPs, in MMAC); cached."""
    if not isinstance(space, SearchSpace):
        raise DnasError(f"cost_table: expected a SearchSpace (dnas.load_space), got {space!r}")
    if not is_size(input_hw):
        raise DnasError(f"cost_table: expected input_hw (height, width), got {input_hw!r}")
    if not is_integer(outputs, 1):
        raise DnasError(f"cost_table: expected outputs, the head's output channels (an integer "
                        f">= 1), got {outputs!r}")  # fmt: skip
    if not isinstance(cfg, CostConfig | None):
        raise DnasError(f"cost_table: expected a CostConfig (an experiment's cost_model), got "
                        f"{type(cfg).__name__}")  # fmt: skip
    cfg = cfg or CostConfig()
    return get_cost_model(cfg.type, cfg).table(space, input_hw, outputs)
