"""Search spaces: YAML -> a validated graph of layers (networkx), each with candidate ops.

A *fixed architecture* is a search space whose layers each have exactly one candidate, so the
same schema, loader and builder serve super nets and derived nets. See README "Search-space
schema" for the format.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import networkx as nx

from dnas.errors import ConfigError, DnasError
from dnas.schema import check_keys, expect_mapping, join, load_yaml, parse_yaml
from dnas.space.ops import (
    MAX_WIDTH,
    out_spatial,
    param_count,
    parse_op,
    shape_problem,
    size_problem,
)

INPUT = "input"
STEM = "stem"  # the name a stage's input: gives the stem's last layer
HEAD = "head"
RESERVED = (INPUT, STEM, HEAD)  # node names of every space, never a stage's
MAX_LAYERS = 256
MAX_SPACE_PARAMS = 2**27  # all candidates of all layers together (512 MiB in fp32)


@dataclass(frozen=True)
class Layer:
    """One node of the backbone: candidates are op strings (one for a fixed layer)."""

    name: str
    input: str
    width: int
    stride: int
    candidates: tuple[str, ...]

    @property
    def searchable(self) -> bool:
        return len(self.candidates) > 1


@dataclass(frozen=True)
class Stage:
    name: str
    width: int
    stride: int
    layers: tuple[Layer, ...]
    input: str | None = None


@dataclass(frozen=True)
class HeadSpec:
    """The task head: ``type`` from the heads registry, its input nodes and options."""

    type: str
    inputs: tuple[str, ...]
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SearchSpace:
    name: str
    source: str
    in_channels: int
    stem: tuple[Layer, ...]
    stages: tuple[Stage, ...]
    head: HeadSpec | None
    graph: nx.DiGraph = field(compare=False, repr=False)

    @property
    def layers(self) -> list[Layer]:
        """All backbone layers in topological order."""
        by_name = {layer.name: layer for layer in self._all_layers()}
        return [by_name[n] for n in nx.topological_sort(self.graph) if n in by_name]

    def _all_layers(self) -> list[Layer]:
        return [*self.stem, *(layer for stage in self.stages for layer in stage.layers)]

    @property
    def searchable_layers(self) -> list[Layer]:
        return [layer for layer in self.layers if layer.searchable]

    @property
    def is_fixed(self) -> bool:
        return not self.searchable_layers

    def channels(self, node: str) -> int:
        return self.in_channels if node == INPUT else self.graph.nodes[node]["channels"]

    def total_stride(self) -> int:
        """The largest product of strides from the input to a layer's output (strides are 1
        or 2): the input sides it divides give every layer an exact fraction of the input."""
        strides = {INPUT: 1}
        for layer in self.layers:
            strides[layer.name] = strides[layer.input] * layer.stride
        return max(strides.values())

    def infer_shapes(self, height: int, width: int) -> dict[str, tuple[int, int, int]]:
        """(C, H, W) of every node's output for an input of HxW, in topological order."""
        shapes = {INPUT: (self.in_channels, height, width)}
        by_name = {layer.name: layer for layer in self._all_layers()}
        for node in nx.topological_sort(self.graph):
            if node in by_name:
                layer = by_name[node]
                _, h, w = shapes[layer.input]
                kernel = max(parse_op(op).kernel for op in layer.candidates) or 1
                shapes[node] = (
                    layer.width,
                    out_spatial(h, kernel, layer.stride),
                    out_spatial(w, kernel, layer.stride),
                )
        return shapes

    def head_inputs(self) -> tuple[str, ...]:
        return self.head.inputs if self.head else (self.stages[-1].layers[-1].name,)

    def with_choices(self, choices: dict[str, str], name: str | None = None) -> SearchSpace:
        """The fixed architecture that keeps op ``choices[layer]`` at every searchable layer."""
        data = self.to_dict(choices)
        data["name"] = name or f"{self.name}-derived"
        return space_from_dict(data, source=f"<derived from {self.source}>")

    def to_dict(self, choices: dict[str, str] | None = None) -> dict[str, Any]:
        """YAML-able form; layers are written one by one (``blocks``) so any space round-trips."""
        choices = choices or {}

        def ops(layer: Layer) -> str | list[str]:
            if layer.name in choices:
                return choices[layer.name]
            return layer.candidates[0] if len(layer.candidates) == 1 else list(layer.candidates)

        stages = []
        for stage in self.stages:
            entry: dict[str, Any] = {
                "name": stage.name,
                "width": stage.width,
                "stride": stage.stride,
            }
            if stage.input is not None:
                entry["input"] = stage.input
            entry["blocks"] = [ops(layer) for layer in stage.layers]
            stages.append(entry)
        data: dict[str, Any] = {
            "name": self.name,
            "in_channels": self.in_channels,
            "stem": [{"op": ops(s), "width": s.width, "stride": s.stride} for s in self.stem],
            "stages": stages,
        }
        if self.head is not None:
            data["head"] = {"type": self.head.type, "inputs": list(self.head.inputs)}
            data["head"].update(self.head.options)
        return data

    def digest(self) -> str:
        """Content hash (name excluded) used to key cost-table caches."""
        data = self.to_dict()
        data.pop("name")
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]

    def replace_head(self, head: HeadSpec) -> SearchSpace:
        return dataclasses.replace(self, head=head)


# ---------------------------------------------------------------- loading


def shipped_names() -> list[str]:
    """Names of the spaces and architectures shipped in the ``search_spaces`` package, as each
    file's ``name:`` spells it (the name runs, weights and errors show; its file's stem, the
    same up to ``-`` / ``_``, loads it too)."""
    files = resources.files("search_spaces")
    names = []
    for path in files.iterdir():
        if path.name.endswith(".yaml"):
            data = parse_yaml(path.read_text())
            named = data.get("name") if isinstance(data, dict) else None
            names.append(named if isinstance(named, str) else path.name[:-5])
    return sorted(names)


def resolve_path(ref: str | Path) -> Path:
    """A YAML path, or a shipped name such as ``efficientpose-a`` / ``mbv2_pose_small``."""
    path = Path(ref)
    if path.exists():
        return path
    stem = str(ref).lower().replace("-", "_").removesuffix(".yaml")
    shipped = resources.files("search_spaces") / f"{stem}.yaml"
    if shipped.is_file():
        return Path(str(shipped))
    raise ConfigError(
        str(ref), "", f"no such file or shipped space (shipped: {', '.join(shipped_names())})"
    )


def load_space(ref: str | Path) -> SearchSpace:
    """Load and validate a search space or architecture YAML (a path or a shipped name)."""
    if isinstance(ref, SearchSpace):  # e.g. derive()'s: a run records the file it read
        raise DnasError(f"load_space: expected a shipped name or a YAML path, got the "
                        f"SearchSpace {ref.name!r}; write it with dnas.write_architecture("
                        "arch, PATH) and give PATH")  # fmt: skip
    if not isinstance(ref, str | Path):
        raise DnasError(f"load_space: expected a shipped name or a YAML path, got "
                        f"{str(ref)[:60]!r}")  # fmt: skip
    path = resolve_path(ref)
    if problem := _not_a_yaml(path):
        raise ConfigError(str(path), "", problem)
    data = load_yaml(path)
    if isinstance(data, dict) and "task" in data and "stages" not in data:
        space = data.get("space") or "its task's default space"
        raise ConfigError(str(path), "", "an experiment config (it has task:), not a search "
                          f"space or architecture; give the space it names ({space}) or an "
                          "arch.yaml")  # fmt: skip
    return space_from_dict(data, source=str(path))


def _not_a_yaml(path: Path) -> str | None:
    """What a run folder or a checkpoint given for a space or architecture YAML is instead, and
    where its architecture is; None for anything else."""
    if path.is_dir():
        if (path / "search.json").exists() or (path / "search.pt").exists():
            return ("a search run folder, not an architecture; derive one from it first: "
                    f"dnas derive {path} -o arch.yaml")  # fmt: skip
        if (path / "arch.yaml").is_file():
            return ("a run folder, not an architecture YAML; its architecture is "
                    f"{path / 'arch.yaml'}")  # fmt: skip
        return "a folder, not a search space or architecture YAML"
    if path.suffix in (".pt", ".pth", ".ckpt"):
        return ("a checkpoint, not a search space or architecture YAML (from a search run, "
                "dnas derive RUN -o arch.yaml writes one)")  # fmt: skip
    return None


_TOP_KEYS = ("name", "description", "in_channels", "stem", "stages", "head")
_STEM_KEYS = ("op", "width", "stride")
_STAGE_KEYS = ("name", "width", "stride", "input", "layers", "ops", "skip", "blocks")


def space_from_dict(data: Any, source: str) -> SearchSpace:
    data = expect_mapping(data, source, "")
    check_keys(data, _TOP_KEYS, ("name", "stem", "stages"), source, "")
    name = data["name"]
    if not isinstance(name, str) or not name:
        raise ConfigError(source, "name", f"expected a non-empty string, got {name!r}")
    in_channels = _int(data.get("in_channels", 3), source, "in_channels", 1, MAX_WIDTH)

    graph = nx.DiGraph()
    graph.add_node(INPUT, channels=in_channels)
    aliases: dict[str, str] = {INPUT: INPUT}
    pending: list[tuple[Layer, str]] = []  # (layer, key path of its op list) for the skip check

    stem = _read_stem(data["stem"], source, pending)
    aliases[STEM] = stem[-1].name
    stages_raw = data["stages"]
    if not isinstance(stages_raw, list) or not stages_raw:
        raise ConfigError(source, "stages", "expected a non-empty list of stages")
    previous = stem[-1].name
    stages = []
    for i, raw in enumerate(stages_raw):
        stage = _read_stage(raw, i, previous, source, pending)
        if stage.name in RESERVED or stage.name in aliases:
            problem = (f"{stage.name!r} names a node of every space ({', '.join(RESERVED)}); "
                       "choose another" if stage.name in RESERVED
                       else f"duplicate name {stage.name!r}")  # fmt: skip
            raise ConfigError(source, join(join("stages", i), "name"), problem)
        aliases[stage.name] = stage.layers[-1].name
        stages.append(stage)
        previous = stage.layers[-1].name

    # Explicit stage inputs may name any node: resolve them, then build the graph.
    nodes = {lay.name for lay in [*stem, *(lay for s in stages for lay in s.layers)]}
    for i, stage in enumerate(stages):
        if stage.input is not None:
            target = _resolve(stage.input, aliases, nodes, source, join(join("stages", i), "input"))
            first = dataclasses.replace(stage.layers[0], input=target)
            stages[i] = dataclasses.replace(stage, layers=(first, *stage.layers[1:]))
    for layer in [*stem, *(lay for s in stages for lay in s.layers)]:
        graph.add_node(layer.name, channels=layer.width)
        graph.add_edge(layer.input, layer.name)

    head = _read_head(data.get("head"), aliases, nodes, stages, source)
    if head is not None:
        graph.add_node(HEAD)
        for node in head.inputs:
            graph.add_edge(node, HEAD)
    _check_acyclic(graph, source)
    if head is not None:
        _check_all_read(graph, stem, stages, source)
    _check_op_shapes(graph, [*stem, *(lay for s in stages for lay in s.layers)], pending, source)
    return SearchSpace(name, source, in_channels, tuple(stem), tuple(stages), head, graph)


def _int(value: Any, source: str, path: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(source, path, f"expected an integer, got {value!r}")
    if not low <= value <= high:
        raise ConfigError(source, path, f"expected an integer in {low}..{high}, got {value}")
    return value


def _stride(value: Any, source: str, path: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value not in (1, 2):
        raise ConfigError(source, path, f"expected stride 1 or 2, got {value!r}")
    return value


def _ops(value: Any, source: str, path: str) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items:
        raise ConfigError(source, path, "expected an op string or a non-empty list of op strings")
    for j, op in enumerate(items):
        try:
            parse_op(op)
        except ValueError as exc:
            raise ConfigError(
                source, path if isinstance(value, str) else join(path, j), str(exc)
            ) from None
    if len(set(items)) != len(items):
        raise ConfigError(source, path, f"duplicate ops in {items}")
    return tuple(items)


def _read_stem(raw: Any, source: str, pending: list) -> list[Layer]:
    if not isinstance(raw, list) or not raw:
        raise ConfigError(source, "stem", "expected a non-empty list of {op, width, stride}")
    layers, previous = [], INPUT
    for i, item in enumerate(raw):
        path = join("stem", i)
        item = expect_mapping(item, source, path)
        check_keys(item, _STEM_KEYS, ("op", "width"), source, path)
        layer = Layer(
            name=f"stem.{i}",
            input=previous,
            width=_int(item["width"], source, join(path, "width"), 1, MAX_WIDTH),
            stride=_stride(item.get("stride", 1), source, join(path, "stride")),
            candidates=_ops(item["op"], source, join(path, "op")),
        )
        pending.append((layer, join(path, "op")))
        layers.append(layer)
        previous = layer.name
    return layers


def _read_stage(raw: Any, i: int, previous: str, source: str, pending: list) -> Stage:
    path = join("stages", i)
    raw = expect_mapping(raw, source, path)
    check_keys(raw, _STAGE_KEYS, ("width", "stride"), source, path)
    name = raw.get("name", f"stage{i + 1}")
    if not isinstance(name, str) or not name or "." in name:
        raise ConfigError(source, join(path, "name"), f"expected a name (text without dots), "
                          f"got {name!r}")  # fmt: skip
    width = _int(raw["width"], source, join(path, "width"), 1, MAX_WIDTH)
    stride = _stride(raw["stride"], source, join(path, "stride"))
    stage_input = raw.get("input")
    if stage_input is not None and not isinstance(stage_input, str):
        raise ConfigError(source, join(path, "input"), f"expected a node name, got {stage_input!r}")

    if "blocks" in raw:
        for key in ("layers", "ops", "skip"):
            if key in raw:
                raise ConfigError(source, join(path, key), "give either 'blocks' or 'layers'+'ops'")
        blocks = raw["blocks"]
        if not isinstance(blocks, list) or not blocks:
            raise ConfigError(source, join(path, "blocks"), "expected a non-empty list")
        per_layer = [
            (_ops(b, source, join(join(path, "blocks"), j)), join(join(path, "blocks"), j))
            for j, b in enumerate(blocks)
        ]
        add_skip = False
    else:
        for key in ("layers", "ops"):
            if key not in raw:
                raise ConfigError(
                    source, join(path, key), "missing required key (or give 'blocks')"
                )
        count = _int(raw["layers"], source, join(path, "layers"), 1, MAX_LAYERS)
        ops = _ops(raw["ops"], source, join(path, "ops"))
        per_layer = [(ops, join(path, "ops"))] * count
        add_skip = raw.get("skip", False)
        if not isinstance(add_skip, bool):
            raise ConfigError(
                source, join(path, "skip"), f"expected true or false, got {add_skip!r}"
            )
        if add_skip and "skip" in ops:
            raise ConfigError(source, join(path, "skip"), "'skip' is already in ops")

    layers = []
    for j, (ops, ops_path) in enumerate(per_layer):
        layer_stride = stride if j == 0 else 1
        # skip: true adds identity to every layer after the first (the first one reshapes).
        if add_skip and j > 0:
            ops = (*ops, "skip")
        layer = Layer(f"{name}.{j}", previous, width, layer_stride, ops)
        pending.append((layer, ops_path))
        layers.append(layer)
        previous = layer.name
    return Stage(name, width, stride, tuple(layers), stage_input)


def _resolve(ref: str, aliases: dict[str, str], nodes: set[str], source: str, path: str) -> str:
    """A stage name, 'stem', 'input' or a layer name such as 'stage2.3' -> a graph node."""
    if ref in aliases:
        return aliases[ref]
    if ref in nodes:
        return ref
    raise ConfigError(source, path, f"unknown node {ref!r} (known: {', '.join(aliases)})")


def _read_head(
    raw: Any, aliases: dict[str, str], nodes: set[str], stages: list[Stage], source: str
) -> HeadSpec | None:
    if raw is None:
        return None
    raw = dict(expect_mapping(raw, source, "head"))
    if "type" not in raw:
        raise ConfigError(source, "head.type", "missing required key")
    head_type = raw.pop("type")
    if not isinstance(head_type, str):
        raise ConfigError(source, "head.type", f"expected a head name, got {head_type!r}")
    inputs = raw.pop("inputs", [stages[-1].name])
    if isinstance(inputs, str):
        inputs = [inputs]
    if not isinstance(inputs, list) or not inputs:
        raise ConfigError(source, "head.inputs", "expected a node name or a list of node names")
    resolved = []
    for j, ref in enumerate(inputs):
        if not isinstance(ref, str):
            raise ConfigError(source, join("head.inputs", j), f"expected a node name, got {ref!r}")
        node = _resolve(ref, aliases, nodes, source, join("head.inputs", j))
        if node == INPUT:
            raise ConfigError(source, join("head.inputs", j), "the head cannot read the raw input")
        resolved.append(node)
    return HeadSpec(head_type, tuple(resolved), raw)


def _check_all_read(graph: nx.DiGraph, stem: list[Layer], stages: list[Stage],
                    source: str) -> None:  # fmt: skip
    """Every stem layer and stage must feed the head (directly or through later stages): one
    whose output nothing reads would be built, counted in the cost and searched on the cost
    term alone."""
    feeding = nx.ancestors(graph, HEAD)
    for i, stage in reversed(list(enumerate(stages))):  # the dead end first, then the stem
        if stage.layers[-1].name not in feeding:
            raise ConfigError(source, join("stages", i), f"the output of stage {stage.name!r} "
                              "never reaches the head (neither the head's inputs nor a later "
                              "stage's input: lead from it to the head); remove it or read "
                              "it")  # fmt: skip
    for i, layer in enumerate(stem):
        if layer.name not in feeding:
            raise ConfigError(source, join("stem", i), f"the output of stem layer {layer.name!r} "
                              "never reaches the head (no stage's input: leads from it to the "
                              "head); remove it or read it")  # fmt: skip


def _check_acyclic(graph: nx.DiGraph, source: str) -> None:
    try:
        cycle = nx.find_cycle(graph)
    except nx.NetworkXNoCycle:
        return
    path = " -> ".join([u for u, _ in cycle] + [cycle[0][0]])
    raise ConfigError(source, "stages", f"the layer graph has a cycle: {path}")


def _check_op_shapes(graph: nx.DiGraph, layers: list[Layer], pending: list, source: str) -> None:
    """Every candidate must fit its layer's channels and stride (e.g. skip needs equal shapes)."""
    paths = dict((layer.name, p) for layer, p in pending)
    total = 0
    for layer in layers:
        cin = graph.nodes[layer.input]["channels"]
        for op in layer.candidates:
            spec = parse_op(op)
            problem = shape_problem(spec, cin, layer.width, layer.stride)
            if problem is None and (too_big := size_problem(spec, cin, layer.width, layer.stride)):
                raise ConfigError(source, paths[layer.name], f"{op!r} on layer {layer.name} "
                                  f"({cin} -> {layer.width} channels) {too_big}")  # fmt: skip
            total += param_count(spec, cin, layer.width, layer.stride)
            if problem:
                hint = (" (use 'skip: true' on the stage to add skip only where shapes match)"
                        if op == "skip" else
                        " (every layer of a 'layers' + 'ops' stage takes every op: list each "
                        "layer's ops with 'blocks:')" if widening_first(layer, paths)
                        else "")  # fmt: skip
                raise ConfigError(
                    source, paths[layer.name],
                    f"{op!r} on layer {layer.name} {problem}, but it maps {cin} -> "
                    f"{layer.width} channels with stride {layer.stride}{hint}",
                )  # fmt: skip
    if total > MAX_SPACE_PARAMS:
        raise ConfigError(source, "stages", f"the layers' candidate ops hold {total:,} parameters "
                          f"together (at most {MAX_SPACE_PARAMS:,})")  # fmt: skip


def widening_first(layer: Layer, paths: dict[str, str]) -> bool:
    """Whether ``layer`` opens a 'layers' + 'ops' stage of more layers: its ops are the
    others', and 'blocks:' would let it have its own."""
    stage, index = layer.name.rsplit(".", 1)
    return paths[layer.name].endswith(".ops") and index == "0" and f"{stage}.1" in paths


def describe(space: SearchSpace) -> str:
    """Human-readable summary: one line per stem layer and stage with its ops."""
    lines = [f"{space.name}"]
    for layer in space.stem:
        lines.append(
            f"  {layer.name:<8} {layer.width:>4} s{layer.stride}  {'|'.join(layer.candidates)}"
        )
    for stage in space.stages:
        ops = " ".join("|".join(layer.candidates) for layer in stage.layers)
        lines.append(f"  {stage.name:<8} {stage.width:>4} s{stage.stride}  {ops}")
    if space.head is not None:
        opts = ", ".join(f"{k}={v}" for k, v in space.head.options.items())
        lines.append(f"  head     {space.head.type}({opts}) on {', '.join(space.head.inputs)}")
    return "\n".join(lines)
