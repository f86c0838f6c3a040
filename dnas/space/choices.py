"""Architectures read from op probabilities, each rule written once: the most probable op per
layer (what ``dnas derive`` keeps), the op entropy, the decisiveness figure and the undecided
layers, and a uniformly random architecture of a space."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from dnas.errors import DnasError
from dnas.space.graph import Layer, SearchSpace

UNDECIDED = 0.5  # (mean) top op probability below which a search (a layer) has not decided

ArchProbs = Mapping[str, Sequence[float]]


def top_index(probs: Sequence[float]) -> int:
    """Index of the most probable op (the first one on ties, as ``argmax``)."""
    return max(range(len(probs)), key=probs.__getitem__)


def most_probable_ops(
    space: SearchSpace, arch_probs: ArchProbs, source: str = ""
) -> dict[str, str]:
    """The most probable op of every searchable layer of ``space``; an error naming ``source``
    (default: the space's file) and the layer when the probabilities do not fit its candidates."""
    if problem := layout_problem(arch_probs, space):
        raise DnasError(f"{source or space.source}: op probabilities: {problem}")
    return {lay.name: lay.candidates[top_index(arch_probs[lay.name])]
            for lay in space.searchable_layers}  # fmt: skip


def entropies(arch_probs: ArchProbs) -> dict[str, float]:
    """Natural-log entropy of each layer's op distribution (ln N when uniform, 0 when decided)."""
    return {
        layer: -sum(p * math.log(p) for p in probs if p > 0) for layer, probs in arch_probs.items()
    }


def layout_problem(arch_probs: Any, space: SearchSpace) -> str | None:
    """What keeps ``arch_probs`` from holding one value per candidate op of each searchable
    layer of ``space`` (and nothing else), or None when nothing does."""
    if not isinstance(arch_probs, Mapping):
        return f"expected {{layer: [op probabilities]}}, got {_shown(arch_probs)}"
    sizes = {lay.name: len(lay.candidates) for lay in space.searchable_layers}
    if missing := [name for name in sizes if name not in arch_probs]:
        return f"has no probabilities for layer {missing[0]} of {space.name}"
    if extra := [name for name in arch_probs if name not in sizes]:
        return f"names {extra[0]!r}, not a searchable layer of {space.name}"
    for layer, size in sizes.items():
        values = arch_probs[layer]
        if not hasattr(values, "__len__") or len(values) != size:
            count = len(values) if hasattr(values, "__len__") else _shown(values)
            return f"layer {layer}: {count} values for {size} candidate ops"
    return None


def probability_problem(arch_probs: Any, space: SearchSpace | None = None) -> str | None:
    """What keeps ``arch_probs`` from being one op distribution per layer (laid out as
    ``space``'s searchable layers, :func:`layout_problem`, when given), or None when nothing
    does. Each value lies in 0..1 and a layer's sum to 1 within 0.01, which a plugin's
    probabilities computed in half precision (bf16 keeps about 3 digits) still meet."""
    if not isinstance(arch_probs, Mapping) or not arch_probs:
        return f"expected {{layer: [op probabilities]}}, got {_shown(arch_probs)}"
    if space is not None and (problem := layout_problem(arch_probs, space)):
        return problem
    for layer, probs in arch_probs.items():
        try:
            values = [float(p) for p in probs]
        except (TypeError, ValueError):
            return f"layer {layer}: expected a list of numbers, got {_shown(probs)}"
        if not values:
            return f"layer {layer}: no op probability (at least one op per layer)"
        if not all(-1e-6 <= v <= 1 + 1e-6 for v in values) or abs(sum(values) - 1) > 0.01:
            return (f"layer {layer}: {_shown(values)} are not op probabilities (each in 0..1, "
                    "summing to 1): the search diverged, or these are scores")  # fmt: skip
    return None


def _shown(value: Any, width: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."


def decisiveness(arch_probs: ArchProbs) -> float:
    """Mean over layers of the top op probability: 1 is fully decided, 1/#ops is uniform."""
    if problem := probability_problem(arch_probs):
        raise DnasError(f"decisiveness: {problem}")
    tops = [max(map(float, p)) for p in arch_probs.values()]
    return sum(tops) / len(tops)


def undecided_layers(arch_probs: ArchProbs) -> list[str]:
    """Layers whose top op probability is below ``UNDECIDED``: their argmax breaks near-ties."""
    return [layer for layer, probs in arch_probs.items() if max(probs) < UNDECIDED]


def uniform_choices(layers: Iterable[Layer], rng: np.random.Generator) -> dict[str, str]:
    """One op per layer, each drawn uniformly from its candidates (one ``rng.integers`` each)."""
    return {lay.name: lay.candidates[rng.integers(len(lay.candidates))] for lay in layers}
