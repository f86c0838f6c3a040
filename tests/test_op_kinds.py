"""An op kind is one registered record (``dnas.space.ops.OpKind``): the avgpool kind of
docs/adding_an_op.md, added with no other edit, parses, builds, counts, checks shapes, runs
in a network and is drawn; every built-in record's parameter count matches its module."""

from __future__ import annotations

import pytest
import torch
import yaml
from torch import nn

from dnas.errors import ConfigError, DnasError
from dnas.nn.network import Network
from dnas.registry import OP_KINDS
from dnas.search.cost_model import cost_table
from dnas.space.graph import load_space
from dnas.space.ops import OpKind, OpSpec, build_op, param_count, parse_op, shape_problem
from dnas.vis.plot import architecture_figure, block_colour

AVGPOOL = OpKind(
    "avgpool", r"avgpool(\d+)", "'avgpoolK'",
    build=lambda s, cin, cout, stride: nn.AvgPool2d(s.kernel, stride, s.kernel // 2),
    params=lambda s, cin, cout, stride: 0,
    shape_problem=lambda s, cin, cout, stride: "keeps the channel count" if cin != cout else None,
    colour=lambda s: "#64b5cd", legend=lambda s: "avg pool",
)  # fmt: skip


@pytest.fixture
def avgpool(monkeypatch):
    monkeypatch.setitem(OP_KINDS._items, "avgpool", AVGPOOL)  # as register_op_kind, undone after


def test_a_new_op_kind_is_one_record(avgpool, tmp_path):
    spec = parse_op("avgpool3")
    assert spec == OpSpec("avgpool3", "avgpool", 3)
    module = build_op(spec, 8, 8, 2)
    assert module(torch.zeros(1, 8, 16, 16)).shape == (1, 8, 8, 8)
    assert param_count(spec, 8, 8, 2) == 0
    assert shape_problem(spec, 8, 16, 1) == "keeps the channel count"
    assert block_colour("avgpool3") == "#64b5cd"
    with pytest.raises(ValueError, match="op 'avgpool4': kernel must be odd"):
        parse_op("avgpool4")
    with pytest.raises(ValueError, match="unknown op 'avg3' .*'avgpoolK'"):
        parse_op("avg3")
    space = {"name": "pooled", "stem": [{"op": "conv3", "width": 8, "stride": 2}],
             "stages": [{"name": "s1", "width": 8, "stride": 2, "layers": 2,
                         "ops": ["k3e3", "avgpool3"], "skip": True}],
             "head": {"type": "slim_deconv", "deconv_widths": [8]}}  # fmt: skip
    path = tmp_path / "pooled.yaml"
    path.write_text(yaml.safe_dump(space))
    net = Network(load_space(str(path)), 4)
    assert net(torch.zeros(2, 3, 32, 32)).shape == (2, 4, 16, 16)
    fixed = load_space(str(path)).with_choices({"s1.0": "avgpool3", "s1.1": "skip"})
    assert architecture_figure(fixed) is not None


def test_without_its_record_an_op_is_unknown():
    with pytest.raises(ValueError, match="unknown op 'avgpool3'"):
        parse_op("avgpool3")


@pytest.mark.parametrize("op", ["k3e6", "k5e1", "k7e3", "conv3", "res3", "maxpool3", "skip"])
@pytest.mark.parametrize(("cin", "cout", "stride"), [(8, 8, 1), (8, 16, 2), (16, 16, 2)])
def test_every_records_parameter_count_matches_its_module(op, cin, cout, stride):
    spec = parse_op(op)
    if shape_problem(spec, cin, cout, stride):
        return
    module = build_op(spec, cin, cout, stride)
    assert param_count(spec, cin, cout, stride) == sum(p.numel() for p in module.parameters())


def test_a_malformed_record_or_op_string_is_a_clear_error(monkeypatch):
    from dnas.space.ops import register_op_kind

    three = OpKind("three", r"t(\d)(\d)(\d)", "'tABC'", build=AVGPOOL.build, params=AVGPOOL.params)
    with pytest.raises(ValueError, match="op kind 'three': .* 3 groups, expected at most 2"):
        register_op_kind(three)
    optional = OpKind("dw", r"dw(\d+)(?:x(\d+))?", "'dwK[xE]'", build=AVGPOOL.build,
                      params=AVGPOOL.params)  # fmt: skip
    monkeypatch.setitem(OP_KINDS._items, "dw", optional)
    assert parse_op("dw3") == OpSpec("dw3", "dw", 3, 0)  # an empty optional group reads as 0
    assert parse_op("dw3x2") == OpSpec("dw3x2", "dw", 3, 2)
    letters = OpKind("word", r"w(\w+)", "'wK'", build=AVGPOOL.build, params=AVGPOOL.params)
    monkeypatch.setitem(OP_KINDS._items, "word", letters)
    with pytest.raises(ValueError, match=r"op 'wab': expected digits in \('ab',\)"):
        parse_op("wab")


def test_a_shape_keeping_op_in_a_widening_ops_stage_points_at_blocks(avgpool, tmp_path):
    """docs/adding_an_op.md: every layer of a 'layers' + 'ops' stage takes every op, so a
    channel-keeping op there fails on the stage's first layer; 'blocks:' places it."""
    stage = {"name": "s1", "width": 16, "stride": 2, "layers": 3, "ops": ["k3e3", "avgpool3"]}
    space = {"name": "pooled", "stem": [{"op": "conv3", "width": 8, "stride": 2}],
             "stages": [stage], "head": {"type": "slim_deconv", "deconv_widths": [8]}}  # fmt: skip
    path = tmp_path / "pooled.yaml"
    path.write_text(yaml.safe_dump(space))
    with pytest.raises(ConfigError, match=r"stages\[0\]\.ops: 'avgpool3' on layer s1\.0 keeps "
                       r"the channel count, but it maps 8 -> 16 channels with stride 2 \(every "
                       r"layer of a 'layers' \+ 'ops' stage takes every op: list each layer's "
                       r"ops with 'blocks:'\)"):  # fmt: skip
        load_space(str(path))
    stage["layers"] = 1  # one layer: 'blocks:' would not help, so no hint
    path.write_text(yaml.safe_dump(space))
    with pytest.raises(ConfigError, match=r"with stride 2$"):
        load_space(str(path))
    stage.pop("layers"), stage.pop("ops")
    stage["blocks"] = ["k3e3", ["k3e3", "avgpool3"], ["k3e3", "avgpool3"]]
    path.write_text(yaml.safe_dump(space))
    assert [layer.candidates for layer in load_space(str(path)).searchable_layers] == [
        ("k3e3", "avgpool3"), ("k3e3", "avgpool3")]  # fmt: skip


def test_an_op_kind_whose_module_breaks_the_layers_shape_is_named(monkeypatch, tmp_path):
    """Every check, cost and network trusts the shapes the graph infers: an op kind whose module
    ignores its stride is found when its costs are profiled, as one line naming the kind."""
    lazy = OpKind("lazy", r"lazy(\d+)", "'lazyK'",
                  build=lambda s, cin, cout, stride: nn.AvgPool2d(s.kernel, 1, s.kernel // 2),
                  params=lambda s, cin, cout, stride: 0)  # fmt: skip
    monkeypatch.setitem(OP_KINDS._items, "lazy", lazy)
    space = {"name": "lazy", "stem": [{"op": "conv3", "width": 8, "stride": 2}],
             "stages": [{"name": "s1", "width": 8, "stride": 2, "blocks": [["k3e3", "lazy3"]]}],
             "head": {"type": "slim_deconv", "deconv_widths": [8]}}  # fmt: skip
    path = tmp_path / "lazy.yaml"
    path.write_text(yaml.safe_dump(space))
    match = (r"^op kind 'lazy' \(test_op_kinds\): lazy3 on layer s1.0 \(8x16x16, stride 2\) "
             r"gives 8x16x16, not the layer's 8x8x8$")  # fmt: skip
    with pytest.raises(DnasError, match=match):
        cost_table(load_space(str(path)), (32, 32), outputs=4)
