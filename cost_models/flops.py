"""Analytic cost models: MACs (``flops``) and parameter count (``params``) per candidate op."""

from __future__ import annotations

import torch
from torch import nn

from dnas.cost_model import CostModel, CostTable
from dnas.heads import build_head
from dnas.ops import build_op, parse_op
from dnas.profile import count_macs, count_params
from dnas.registry import COST_MODELS
from dnas.search_space import SearchSpace


class _HeadOnInputs(nn.Module):
    """Lets the profiler run a head that takes a list of features."""

    def __init__(self, head: nn.Module) -> None:
        super().__init__()
        self.head = head

    def forward(self, *features: torch.Tensor) -> torch.Tensor:
        return self.head(list(features))


def op_costs(
    space: SearchSpace, input_hw: tuple[int, int], num_outputs: int
) -> tuple[dict[str, dict[str, tuple[int, int]]], tuple[int, int]]:
    """(MACs, params) of each candidate at its layer's exact input shape, and of the head."""
    shapes = space.infer_shapes(*input_hw)
    per_layer: dict[str, dict[str, tuple[int, int]]] = {}
    for layer in space.layers:
        cin, h, w = shapes[layer.input]
        x = torch.zeros(1, cin, h, w)
        per_layer[layer.name] = {}
        for op in layer.candidates:
            module = build_op(parse_op(op), cin, layer.width, layer.stride)
            per_layer[layer.name][op] = (count_macs(module, x), count_params(module))
    head = _HeadOnInputs(build_head(space, num_outputs))
    feats = [torch.zeros(1, *shapes[n]) for n in space.head_inputs()]
    return per_layer, (count_macs(head, *feats), count_params(head))


class _AnalyticCostModel(CostModel):
    index: int  # 0 = MACs, 1 = params
    scale = 1e6

    def build(self, space: SearchSpace, input_hw: tuple[int, int], num_outputs: int) -> CostTable:
        per_layer, head = op_costs(space, input_hw, num_outputs)
        searchable = {layer.name for layer in space.searchable_layers}
        fixed = head[self.index] + sum(
            next(iter(ops.values()))[self.index]
            for name, ops in per_layer.items()
            if name not in searchable
        )
        layers = {
            name: {op: c[self.index] / self.scale for op, c in ops.items()}
            for name, ops in per_layer.items()
            if name in searchable
        }
        return CostTable(self.metric, self.unit, fixed / self.scale, layers, key={})


@COST_MODELS.register("flops")
class FlopsCostModel(_AnalyticCostModel):
    """Multiply-accumulates at batch 1, in millions (MMAC)."""

    metric, unit, index = "macs", "MMAC", 0


@COST_MODELS.register("params")
class ParamsCostModel(_AnalyticCostModel):
    """Learnable parameters, in millions."""

    metric, unit, index = "params", "Mparams", 1
