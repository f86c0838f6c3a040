"""MixedOp maths (Eq. 3), the two parameter groups, and drop-path."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY_SPACE

from dnas.nn.mixed_op import MixedOp, drop_path
from dnas.nn.network import Network
from dnas.space.graph import load_space
from dnas.space.ops import parse_op


def test_weighted_sum_equals_manual_sum():
    torch.manual_seed(0)
    specs = [parse_op(s) for s in ("k3e3", "k5e6", "skip")]
    op = MixedOp(specs, 8, 8, 1).eval()
    x = torch.randn(2, 8, 10, 10)
    w = torch.softmax(torch.randn(3), 0)
    manual = sum(w[i] * op.ops[i](x) for i in range(3))
    torch.testing.assert_close(op(x, w), manual)
    assert torch.equal(op.ops[2](x), x)  # skip is the identity


def test_zero_weight_paths_are_not_run():
    specs = [parse_op(s) for s in ("k3e3", "k5e3")]
    op = MixedOp(specs, 4, 4, 1).eval()
    calls = []
    op.ops[1].register_forward_hook(lambda *_: calls.append(1))
    x = torch.randn(1, 4, 6, 6)
    torch.testing.assert_close(op(x, torch.tensor([1.0, 0.0])), op.ops[0](x))
    assert calls == []


def test_arch_parameters_are_a_separate_group():
    net = Network(load_space(TINY_SPACE), 16)
    arch = {id(p) for p in net.arch_parameters()}
    weights = {id(p) for p in net.weight_parameters()}
    assert arch and weights and not arch & weights
    assert arch | weights == {id(p) for p in net.parameters()}
    assert len(net.arch_parameters()) == len(net.space.searchable_layers) == 5


def test_network_uses_softmax_of_alphas():
    torch.manual_seed(0)
    net = Network(load_space(TINY_SPACE), 16).eval()
    x = torch.randn(2, 3, 64, 64)
    probs = [torch.softmax(a, 0) for a in net.alphas]
    torch.testing.assert_close(net(x), net(x, probs))
    assert net(x).shape == (2, 16, 16, 16)


def test_drop_path_zeroes_whole_samples_and_keeps_the_mean():
    torch.manual_seed(0)
    x = torch.ones(4000, 3, 2, 2)
    y = drop_path(x, 0.25)
    per_sample = y.flatten(1)
    values = per_sample[:, 0].unique()
    assert len(values) == 2 and float(values[0]) == 0.0
    assert float(values[1]) == pytest.approx(4 / 3)
    assert torch.all(per_sample == per_sample[:, :1])
    assert abs(float(y.mean()) - 1.0) < 0.05
