"""Analytic cost models: MACs (``flops``) and parameter count (``params``) per candidate op."""

from __future__ import annotations

from dnas.nn.profile import op_costs
from dnas.registry import COST_MODELS
from dnas.search.cost_model import CostModel, CostTable
from dnas.space.graph import SearchSpace


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
