"""The rules written once (``dnas.space.choices``, ``dnas.files``): the most probable op, entropy,
decisiveness, uniform architectures, and atomic writes that never leave half a file."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import TINY_SPACE

from dnas.errors import DnasError
from dnas.files import write_atomic, write_text_atomic
from dnas.space.choices import (
    decisiveness,
    entropies,
    most_probable_ops,
    top_index,
    uniform_choices,
)
from dnas.space.graph import load_space


def test_most_probable_op_per_layer_first_on_ties():
    space = load_space(TINY_SPACE)
    layers = space.searchable_layers
    probs = {lay.name: [1 / len(lay.candidates)] * len(lay.candidates) for lay in layers}
    probs[layers[0].name] = [0.2, 0.5, 0.3][: len(layers[0].candidates)]
    chosen = most_probable_ops(space, probs)
    assert chosen[layers[0].name] == layers[0].candidates[1]
    assert all(chosen[lay.name] == lay.candidates[0] for lay in layers[1:])  # ties: the first
    assert top_index([0.1, 0.4, 0.4, 0.1]) == 1


def test_probabilities_that_do_not_fit_name_the_source_and_layer():
    space = load_space(TINY_SPACE)
    first = space.searchable_layers[0]
    probs = {lay.name: [0.5, 0.5] for lay in space.searchable_layers}
    match = f"^run/search.pt: op probabilities: layer {first.name}: 9 values for 2 candidate ops$"
    with pytest.raises(DnasError, match=match):
        most_probable_ops(space, {**probs, first.name: [1.0] * 9}, "run/search.pt")


def test_entropy_and_decisiveness():
    probs = {"uniform": [0.25] * 4, "decided": [0.0, 1.0], "half": [0.5, 0.5]}
    got = entropies(probs)
    assert got["uniform"] == pytest.approx(math.log(4)) and got["decided"] == 0.0
    assert got["half"] == pytest.approx(math.log(2))
    assert decisiveness(probs) == pytest.approx((0.25 + 1.0 + 0.5) / 3)


def test_uniform_choices_draw_one_integer_per_layer():
    layers = load_space(TINY_SPACE).searchable_layers
    got = uniform_choices(layers, np.random.default_rng(7))
    rng = np.random.default_rng(7)  # the same stream, one draw per layer in network order
    assert got == {lay.name: lay.candidates[rng.integers(len(lay.candidates))] for lay in layers}
    draws = [uniform_choices(layers, np.random.default_rng(s)) for s in range(200)]
    for lay in layers:  # every candidate is drawn
        assert {d[lay.name] for d in draws} == set(lay.candidates)


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "sub" / "search.json"
    write_text_atomic(path, '{"done": true}')
    assert path.read_text() == '{"done": true}'

    def crash(fh):
        fh.write(b'{"half')
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomic(path, crash)
    assert path.read_text() == '{"done": true}'  # the earlier result survives
    assert sorted(p.name for p in path.parent.iterdir()) == ["search.json"]  # no temp file left
