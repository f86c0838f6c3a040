"""Architectures read from op probabilities, each rule written once: the most probable op per
layer (what ``dnas derive`` keeps), the op entropy, the decisiveness figure and the undecided
layers, and a uniformly random architecture of a space."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

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
    choices = {}
    for layer in space.searchable_layers:
        probs = arch_probs.get(layer.name)
        if probs is None or len(probs) != len(layer.candidates):
            raise DnasError(f"{source or space.source}: op probabilities do not match the "
                            f"candidates of layer {layer.name}")  # fmt: skip
        choices[layer.name] = layer.candidates[top_index(probs)]
    return choices


def entropies(arch_probs: ArchProbs) -> dict[str, float]:
    """Natural-log entropy of each layer's op distribution (ln N when uniform, 0 when decided)."""
    return {
        layer: -sum(p * math.log(p) for p in probs if p > 0) for layer, probs in arch_probs.items()
    }


def decisiveness(arch_probs: ArchProbs) -> float:
    """Mean over layers of the top op probability: 1 is fully decided, 1/#ops is uniform."""
    if not isinstance(arch_probs, Mapping) or not all(map(len, arch_probs.values())):
        raise DnasError("decisiveness: expected {layer: [op probabilities]} with at least one "
                        "op per layer")  # fmt: skip
    tops = [max(p) for p in arch_probs.values()]
    if not all(-1e-6 <= top <= 1 + 1e-6 for top in tops):  # NaN fails too
        raise DnasError(f"decisiveness: op probabilities outside 0..1 (top {max(tops)!r}): the "
                        "search diverged, or these are not probabilities")  # fmt: skip
    return sum(tops) / max(len(tops), 1)


def undecided_layers(arch_probs: ArchProbs) -> list[str]:
    """Layers whose top op probability is below ``UNDECIDED``: their argmax breaks near-ties."""
    return [layer for layer, probs in arch_probs.items() if max(probs) < UNDECIDED]


def uniform_choices(layers: Iterable[Layer], rng: np.random.Generator) -> dict[str, str]:
    """One op per layer, each drawn uniformly from its candidates (one ``rng.integers`` each)."""
    return {lay.name: lay.candidates[rng.integers(len(lay.candidates))] for lay in layers}
