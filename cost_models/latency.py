"""Measured latency lookup tables (FBNet-style): the table file, what it predicts, and the
``latency`` cost model that reads it.

A table (written by ``dnas lut build``, ``cost_models.latency_build``) holds one entry in
milliseconds per candidate op of every searchable layer at its exact input shape, one per fixed
layer and the head, a scale per input resolution folded into the entries, and an overhead. Its
prediction for an architecture is the sum of the entries it picks plus the overhead, so the
expected cost of a search stays linear in the op probabilities (Eq. 4-5). What it cannot model:
fusion across op boundaries that depends on the neighbouring ops (ONNX Runtime fuses conv +
activation inside an op, which the op's own timing holds, but not across ops), and cache
effects that depend on which op ran before; ``lut check`` (``cost_models.latency_check``) says
how much that costs on a machine (docs/latency.md).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from cost_models.calibration import FIXED
from dnas.config import MAX_BATCH
from dnas.errors import ConfigError, DnasError, listing
from dnas.nn.profile import op_costs
from dnas.registry import COST_MODELS, HEADS, RUNTIMES
from dnas.schema import from_dict, is_finite_number, is_integer, read_json, to_dict
from dnas.search.cost_model import CostModel, CostTable
from dnas.space.graph import Layer, SearchSpace, space_from_dict

MAX_MS = 1e9  # an entry above this (11 days) is not a timing: refused before it overflows a sum


def parts_ms(table: dict, choices: dict[str, str]) -> float:
    return sum(table["fixed"].values()) + sum(table["layers"][n][op] for n, op in choices.items())


def predict_ms(table: dict, choices: dict[str, str]) -> float:
    """Predicted latency of the architecture that picks ``choices``."""
    return table["scale"] * parts_ms(table, choices) + table["overhead_ms"]


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


def lut_cost_table(lut: dict, space: SearchSpace, key: dict | None = None) -> CostTable:
    """A table's entries for ``space`` as a ``CostTable`` (ms), the linear correction and the
    overhead folded in, so that ``of_choices`` is ``predict_ms``."""
    scale = lut["scale"]
    layers = {lay.name: {op: scale * lut["layers"][lay.name][op] for op in lay.candidates}
              for lay in space.searchable_layers}  # fmt: skip
    fixed = scale * sum(lut["fixed"].values()) + lut["overhead_ms"]
    return CostTable(LatencyCostModel.metric, LatencyCostModel.unit, fixed, layers, key=key or {})


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
