"""Pictures of a search and of an architecture: op-probability heat maps and block diagrams.

Figures are built with ``matplotlib.figure.Figure`` and drawn by the Agg canvas, never through
pyplot, so no global figure registry holds them: a dropped figure is freed, nothing leaks.
``architecture_figure`` draws a net like Fig. 4 of the EfficientPose paper: one block per layer,
coloured by kernel size, its height proportional to the expansion ratio.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import Colormap
from matplotlib.figure import Figure
from matplotlib.patches import FancyArrowPatch, Patch, Rectangle
from matplotlib.path import Path as MplPath

from dnas import checkpoint
from dnas.errors import DnasError
from dnas.space.choices import UNDECIDED, most_probable_ops, undecided_layers
from dnas.space.graph import INPUT, SearchSpace, load_space, space_from_dict
from dnas.space.ops import KERNEL_COLOURS, op_kind, parse_op

FIXED_COLOUR = "#b0b0b0"  # stem and head (an op's own colour is in its OpKind record)
FORMATS = ("png", "svg")
MAX_ANNOTATED_CELLS = 400


def block_colour(op: str) -> str:
    """The fill colour of an op's block (its OpKind's: MBConv by kernel size)."""
    spec = parse_op(op)
    return op_kind(spec).colour(spec)


def _legend_label(op: str) -> str:
    spec = parse_op(op)
    return op_kind(spec).legend(spec)


def _is_identity(op: str) -> bool:
    return op_kind(parse_op(op)).identity


# ---------------------------------------------------------------- op probabilities


def candidates_of(space: SearchSpace) -> dict[str, tuple[str, ...]]:
    """Candidate ops of every searchable layer, in network order (the heat map's rows)."""
    return {layer.name: layer.candidates for layer in space.searchable_layers}


def op_probability_matrix(
    arch_probs: dict[str, list[float]], candidates: dict[str, tuple[str, ...]]
) -> tuple[list[str], list[str], np.ndarray]:
    """Layers x ops probabilities (ops: ordered union of candidates); nan where not a candidate."""
    layers = list(candidates)
    ops = list(dict.fromkeys(op for layer in layers for op in candidates[layer]))
    matrix = np.full((len(layers), len(ops)), np.nan)
    for i, layer in enumerate(layers):
        probs = arch_probs.get(layer)
        if probs is None or len(probs) != len(candidates[layer]):
            raise DnasError(f"op probabilities do not match the candidates of layer {layer}")
        for op, p in zip(candidates[layer], probs, strict=True):
            matrix[i, ops.index(op)] = float(p)
    return layers, ops, matrix


def op_probability_figure(
    arch_probs: dict[str, list[float]],
    candidates: dict[str, tuple[str, ...]],
    epoch: int | None = None,
    derived: dict[str, str] | None = None,
) -> Figure:
    """Heat map of the op probabilities, one row per searchable layer in network order.

    Cells are coloured by the deviation from uniform (p - 1/#candidates of the layer), so a
    short search's 0.14 and 0.17 look different; each cell is written to three decimals. A box
    marks the ``derived`` op of each layer (default: the most probable, as ``dnas derive``
    picks without a budget); a layer whose derived op is not its most probable one (moved into
    a budget band) is starred, and an undecided layer (top probability below ``UNDECIDED``) is
    named so and its box dashed."""
    layers, ops, matrix = op_probability_matrix(arch_probs, candidates)
    argmax = {layer: ops[int(np.nanargmax(row))] for layer, row in zip(layers, matrix, strict=True)}
    boxed = [ops.index((derived or argmax)[layer]) for layer in layers]
    moved = {layer for layer, j, row in zip(layers, boxed, matrix, strict=True)
             if row[j] < np.nanmax(row)}  # fmt: skip
    deviation = matrix - 1.0 / np.array([[len(candidates[layer])] for layer in layers])
    undecided = set(undecided_layers(dict(zip(layers, _rows(matrix), strict=True))))
    fig = _new_figure(2.5 + 0.75 * len(ops), 1.8 + 0.28 * len(layers))
    ax = fig.add_subplot()
    span = _span(deviation)
    image = ax.imshow(np.ma.masked_invalid(deviation), cmap=_cmap(), vmin=-span, vmax=span,
                      aspect="auto")  # fmt: skip
    fig.colorbar(image, ax=ax, label="probability - uniform (1/#candidates)")
    ax.set_xticks(range(len(ops)), ops, rotation=45, ha="right")
    labels = [_row_label(layer, layer in undecided, layer in moved) for layer in layers]
    ax.set_yticks(range(len(layers)), labels)
    for label, layer in zip(ax.get_yticklabels(), layers, strict=True):
        label.set_color(UNDECIDED_COLOUR if layer in undecided else "black")
    ax.set_xlabel("candidate op")
    if matrix.size <= MAX_ANNOTATED_CELLS:
        _annotate(ax, matrix, deviation, span)
    _outline_derived(ax, boxed, [layer in undecided for layer in layers])
    title = "op probabilities" + (f", epoch {epoch}" if epoch is not None else "")
    starred = f"; * = moved into the budget band ({len(moved)})" if moved else ""
    ax.set_title(f"{title}\n{len(undecided)} of {len(layers)} layers undecided (top p < "
                 f"{UNDECIDED}, dashed); box = derived op{starred}", fontsize=9)  # fmt: skip
    fig.tight_layout()
    return fig


UNDECIDED_COLOUR = "#c03000"


def _rows(matrix: np.ndarray) -> list[list[float]]:
    """Each row's candidate probabilities (the nan cells dropped)."""
    return [[float(v) for v in row if np.isfinite(v)] for row in matrix]


def _row_label(layer: str, undecided: bool, moved: bool = False) -> str:
    return layer + (" (undecided)" if undecided else "") + (" *" if moved else "")


def _cmap() -> Colormap:
    return colormaps["RdBu_r"].with_extremes(bad="#dddddd")  # bad: not a candidate


def _span(deviation: np.ndarray) -> float:
    """Symmetric colour range: the largest deviation from uniform (white = uniform)."""
    finite = np.abs(deviation[np.isfinite(deviation)])
    return max(float(finite.max()) if finite.size else 0.0, 1e-3)


def _annotate(ax, matrix: np.ndarray, deviation: np.ndarray, span: float) -> None:
    """Write each probability in its cell, white on the strongly coloured ones."""
    for i, row in enumerate(matrix):
        for j, value in enumerate(row):
            if np.isfinite(value):
                strong = abs(deviation[i, j]) > 0.6 * span
                ax.text(j, i, f"{value:.3f}", ha="center", va="center", fontsize=7,
                        color="white" if strong else "black")  # fmt: skip


def _outline_derived(ax, columns: list[int], undecided: list[bool]) -> None:
    """Outline each row's derived op (its column): solid when decided, dashed when not."""
    for i, column in enumerate(columns):
        ax.add_patch(Rectangle((column - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="black",
                               lw=1.5, ls="--" if undecided[i] else "-",
                               gid=f"derived:{i}"))  # fmt: skip


# ---------------------------------------------------------------- architecture


def architecture_figure(
    space: SearchSpace,
    choices: dict[str, str] | None = None,
    arch_probs: dict[str, list[float]] | None = None,
) -> Figure:
    """Block diagram of a fixed architecture, or of a search space's ``choices`` (else argmax).

    Blocks run left to right in stage order; an edge the straight line does not show (a stage
    whose ``input:`` is an earlier node, a head reading other or several nodes) is an arrow
    drawn above the blocks from the node it reads."""
    arch = _fixed(space, choices, arch_probs)
    strides = _output_strides(arch)
    ops = [layer.candidates[0] for stage in arch.stages for layer in stage.layers]
    top = max([_height(op) / 2 for op in ops if not _is_identity(op)] + [2.0]) + 0.5
    fig = _new_figure(3.0 + 0.32 * (len(ops) + 4), 4.0)
    ax = fig.add_subplot()
    x = _fixed_block(ax, 0.0, "stem", " / ".join(s.candidates[0] for s in arch.stem))
    starts = {INPUT: (0.0, 0.0)} | {layer.name: (0.6, 2.0) for layer in arch.stem}
    edges: list[Edge] = []
    previous = arch.stem[-1].name
    for stage in arch.stages:
        total = strides[stage.layers[-1].name]
        _stage_marker(ax, x, top, f"{stage.name}\ns{stage.stride} (/{total})\n{stage.width} ch")
        if stage.layers[0].input != previous:
            edges.append(Edge(stage.layers[0].input, (x - 0.1, top), f"branch:{stage.name}"))
        for layer in stage.layers:
            op = layer.candidates[0]
            starts[layer.name] = (x + 0.4, 0.0 if _is_identity(op) else _height(op) / 2)
            x = _layer_block(ax, x, -top, layer.name, op)
        previous = stage.layers[-1].name
    head_x = x + 0.3
    if arch.head and arch.head.inputs != (previous,):
        edges += [Edge(n, (head_x + 0.6, 2.0), f"head-input:{n}") for n in arch.head.inputs]
    _fixed_block(ax, head_x, "head", arch.head.type if arch.head else "(none)")
    summit = _draw_edges(ax, edges, starts, top + 1.9, _node_names(arch))
    ax.set_xlim(-0.3, x + 1.6)
    ax.set_ylim(-top - 2.0, max(top + 2.2, summit))
    ax.set_axis_off()
    ax.set_title(f"{arch.name}: colour = kernel size, height = expansion ratio", fontsize=9)
    handles = _legend_handles(ops)
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=len(handles),
              fontsize=7, frameon=False)  # fmt: skip
    fig.tight_layout()
    return fig


EDGE_COLOUR = "#1f4e9e"


@dataclass(frozen=True)
class Edge:
    """An input edge the left-to-right order does not show: from ``source`` to ``end`` (x, y)."""

    source: str
    end: tuple[float, float]
    gid: str


def _node_names(space: SearchSpace) -> dict[str, str]:
    """The name a reader knows a node by: its stage's name for a stage's last layer."""
    return {stage.layers[-1].name: stage.name for stage in space.stages}


def _draw_edges(
    ax, edges: list[Edge], starts: dict[str, tuple[float, float]], base: float,
    names: dict[str, str],
) -> float:  # fmt: skip
    """Each edge up from its source block to a level of its own, across, and down onto its
    end, the source named once at its first edge; returns the top of the drawing."""
    summit, named = base, set()
    for k, edge in enumerate(edges):
        level = base + 0.7 * k
        (x0, y0), (x1, y1) = starts[edge.source], edge.end
        route = MplPath([(x0, y0), (x0, level), (x1, level), (x1, y1)])  # up, across, down
        arrow = FancyArrowPatch(path=route, arrowstyle="-|>", mutation_scale=8,
                                color=EDGE_COLOUR, lw=0.9, gid=edge.gid, zorder=1)  # fmt: skip
        ax.add_patch(arrow)
        if edge.source not in named:
            named.add(edge.source)
            ax.text(x0 + 0.1, level + 0.05, f"from {names.get(edge.source, edge.source)}",
                    fontsize=6, color=EDGE_COLOUR, ha="left", va="bottom")  # fmt: skip
        summit = level + 0.6
    return summit


def _fixed(
    space: SearchSpace, choices: dict[str, str] | None, arch_probs: dict[str, list[float]] | None
) -> SearchSpace:
    """The architecture to draw: ``space`` itself when fixed, else its choices or argmax."""
    if space.is_fixed and not choices:
        return space
    if choices is None and arch_probs is None:
        raise DnasError(
            f"{space.source}: a search space, not a fixed architecture; give choices or arch_probs"
        )
    picked = choices if choices is not None else most_probable_ops(space, arch_probs or {})
    _check_choices(space, picked)
    return space.with_choices(picked)  # named "<space>-derived": not the space itself


def _check_choices(space: SearchSpace, choices: dict[str, str]) -> None:
    """Every chosen op is a candidate of its layer, and every searchable layer has one."""
    allowed = {layer.name: layer.candidates for layer in space.layers}
    wrong = [f"{n}={op}" for n, op in choices.items() if op not in allowed.get(n, ())]
    if wrong:
        raise DnasError(f"{space.source}: choices not among the candidates: {', '.join(wrong)}")
    missing = [layer.name for layer in space.searchable_layers if layer.name not in choices]
    if missing:
        raise DnasError(f"{space.source}: no op chosen for {', '.join(missing)}")


def _output_strides(space: SearchSpace) -> dict[str, int]:
    """Total stride from the input to every layer's output (follows branches)."""
    total: dict[str, int] = {}
    for layer in space.layers:
        total[layer.name] = total.get(layer.input, 1) * layer.stride
    return total


def _height(op: str) -> float:
    spec = parse_op(op)
    return op_kind(spec).height(spec)


def _layer_block(ax, x: float, label_y: float, name: str, op: str) -> float:
    """One layer at ``x``: a block (skip: a thin line), its op below; returns the next free x."""
    if _is_identity(op):
        ax.plot([x + 0.15, x + 0.15], [-0.8, 0.8], color=block_colour(op), lw=1.5,
                gid=f"skip:{name}")  # fmt: skip
        ax.text(x + 0.15, label_y, op, rotation=90, ha="center", va="top", fontsize=6)
        return x + 0.45
    height = _height(op)
    ax.add_patch(Rectangle((x, -height / 2), 0.8, height, facecolor=block_colour(op),
                           edgecolor="black", lw=0.5, gid=f"layer:{name}", label=op))  # fmt: skip
    ax.text(x + 0.4, label_y, op, rotation=90, ha="center", va="top", fontsize=6)
    return x + 1.0


def _fixed_block(ax, x: float, kind: str, text: str) -> float:
    """A grey, labelled stem or head block; returns the next free x."""
    ax.add_patch(Rectangle((x, -2.0), 1.2, 4.0, facecolor=FIXED_COLOUR, edgecolor="black",
                           lw=0.5, gid=kind, label=kind))  # fmt: skip
    ax.text(x + 0.6, 0.0, f"{kind}\n{text}", rotation=90, ha="center", va="center", fontsize=6)
    return x + 1.5


def _stage_marker(ax, x: float, top: float, text: str) -> None:
    """A dashed stage boundary, its stride, output stride and width written above it."""
    ax.axvline(x - 0.1, color="grey", ls="--", lw=0.7)
    behind = {"facecolor": "white", "edgecolor": "none", "pad": 0.5}  # input edges pass behind
    ax.text(x, top, text, ha="left", va="bottom", fontsize=7, zorder=3, bbox=behind)


def _legend_handles(ops: list[str]) -> list[Patch]:
    """3x3, 5x5, 7x7 always; other kinds and skip only when the net has them."""
    entries = {f"{k}x{k}": colour for k, colour in KERNEL_COLOURS.items()}
    for op in ops:
        entries.setdefault(_legend_label(op), block_colour(op))
    return [Patch(facecolor=c, edgecolor="black", lw=0.5, label=t) for t, c in entries.items()]


# ---------------------------------------------------------------- output


def sweep_figure(rows: list[dict], kind: str) -> Figure:
    """Score vs cost of a ``dnas sweep``, each point labelled with its weight or target."""
    fig = _new_figure(5.5, 4)
    ax = fig.add_subplot()
    costs = [r["cost"] for r in rows]
    ax.plot(costs, [r["score"] for r in rows], "o-")
    middle = (min(costs) + max(costs)) / 2 if rows else 0.0
    for r in rows:  # labels point inwards, so the end points' labels stay inside the axes
        right = r["cost"] > middle
        ax.annotate(f"{kind}={r[kind]:g}", (r["cost"], r["score"]),
                    xytext=(-5 if right else 5, 5), textcoords="offset points",
                    ha="right" if right else "left", fontsize=8)  # fmt: skip
    ax.margins(x=0.08, y=0.15)
    ax.set_xlabel(f"derived cost ({rows[0]['cost_unit'] if rows else ''})")
    ax.set_ylabel(_score_label(rows))
    ax.set_title(f"dnas sweep over cost_model.{kind}", fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def _score_label(rows: list[dict]) -> str:
    """The task's name for its primary metric (sweeps written before it was recorded: the key)."""
    if not rows:
        return "score"
    return f"val {rows[0].get('metric_label') or rows[0]['metric']}"


def _new_figure(width: float, height: float) -> Figure:
    """A figure drawn by Agg, not registered with pyplot (freed when dropped, nothing to close)."""
    fig = Figure(figsize=(min(width, 40.0), min(height, 40.0)), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def figure_to_array(fig: Figure) -> np.ndarray:
    """The rendered figure as (H, W, 3) uint8, for ``add_image(..., dataformats="HWC")``."""
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def save_figure(fig: Figure, path: Path) -> Path:
    """Write ``fig`` as PNG or SVG, chosen by the suffix of ``path``."""
    path = Path(path)
    fmt = path.suffix.lower().lstrip(".")
    if fmt not in FORMATS:
        raise DnasError(f"{path}: expected a .png or .svg file name")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format=fmt, dpi=150, bbox_inches="tight")
    return path


# ---------------------------------------------------------------- dnas plot


@dataclass(frozen=True)
class PlotSource:
    """What ``dnas plot`` draws: a search space and its op probabilities, or a fixed net."""

    space: SearchSpace
    arch_probs: dict[str, list[float]] | None = None
    epoch: int | None = None
    choices: dict[str, str] | None = None  # a search's derived ops (under a budget: in its band)


_EXPECTED = "a search or train run directory, a dnas checkpoint or an architecture YAML"


def load_plot_source(ref: str | Path) -> PlotSource:
    """A search run or search.pt, a train run or last.pt/best.pt, or an architecture YAML/name."""
    path = Path(ref)
    if path.is_dir():
        return _from_checkpoint(_run_checkpoint(path))
    if path.is_file() and path.suffix.lower() not in (".yaml", ".yml"):
        return _from_checkpoint(path)
    yaml_file = path.suffix.lower() in (".yaml", ".yml")  # a shipped name may end so too
    if not path.exists() and not yaml_file and (len(path.parts) > 1 or path.suffix):
        raise DnasError(f"{ref}: no such run directory or file; expected {_EXPECTED}")
    space = load_space(ref)
    if not space.is_fixed:
        raise DnasError(f"{space.source}: a search space; expected a fixed architecture or a run")
    return PlotSource(space)


def _run_checkpoint(run: Path) -> Path:
    for name in ("search.pt", "last.pt", "best.pt"):
        if (run / name).is_file():
            return run / name
    raise DnasError(f"{run}: no search.pt, last.pt or best.pt; expected {_EXPECTED}")


def _from_checkpoint(path: Path) -> PlotSource:
    try:
        ckpt = checkpoint.load(path)
    except DnasError as exc:
        raise DnasError(f"{exc}; expected {_EXPECTED}") from None
    if isinstance(ckpt, dict) and ckpt.get("kind") == "dnas-search" and "space" in ckpt:
        space = space_from_dict(ckpt["space"], source=str(path))
        probs = ckpt.get("arch_probs")
        if not isinstance(probs, dict):
            raise DnasError(f"{path}: search checkpoint without 'arch_probs'")
        argmax = most_probable_ops(space, probs, str(path))  # checks they fit the space
        choices = ckpt.get("choices")  # what dnas derive writes (absent before 2026-12)
        if isinstance(choices, dict):
            _check_choices(space, choices)
        return PlotSource(space, probs, ckpt.get("epoch"), choices or argmax)
    if isinstance(ckpt, dict) and isinstance(ckpt.get("arch"), dict):
        return PlotSource(space_from_dict(ckpt["arch"], source=str(path)))
    raise DnasError(
        f"{path}: expected a dnas search checkpoint ('kind': 'dnas-search') "
        "or a train checkpoint with an 'arch' entry"
    )


def plot_paths(source: PlotSource, out_dir: Path, fmt: str) -> list[Path]:
    """The files ``write_plots`` writes: op_probs (searches only) and architecture."""
    names = ["op_probs", "architecture"] if source.arch_probs is not None else ["architecture"]
    return [Path(out_dir) / f"{name}.{fmt}" for name in names]


def write_plots(source: PlotSource, out_dir: Path, fmt: str) -> list[Path]:
    """Draw and save the pictures of ``source`` into ``out_dir``; returns the files written."""
    paths = plot_paths(source, out_dir, fmt)
    for path in paths:
        save_figure(_source_figure(source, path.stem), path)
    return paths


def _source_figure(source: PlotSource, name: str) -> Figure:
    if name == "op_probs" and source.arch_probs is not None:
        return op_probability_figure(source.arch_probs, candidates_of(source.space), source.epoch,
                                     source.choices)  # fmt: skip
    return architecture_figure(source.space, source.choices, source.arch_probs)
