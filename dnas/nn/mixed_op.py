"""MixedOp: the continuous relaxation of one searchable layer (paper Eq. 3)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from dnas.space.ops import OpSpec, build_op, op_kind


def drop_path(x: Tensor, rate: float, generator: torch.Generator | None = None) -> Tensor:
    """Zero whole samples of one candidate path with probability ``rate`` (rescaled, as DARTS)."""
    if rate <= 0.0:
        return x
    keep = 1.0 - rate
    mask = torch.empty((x.shape[0],) + (1,) * (x.dim() - 1), device=x.device, dtype=x.dtype)
    return x * mask.bernoulli_(keep, generator=generator) / keep


class MixedOp(nn.Module):
    """x_out = sum_o w_o * o(x) over the candidate ops; the weights come from the strategy.

    The op modules are ordinary weights; the architecture parameters live elsewhere (in
    :class:`dnas.nn.network.Network`), so the two parameter groups never mix. ``weights`` may be
    dense (DARTS softmax) or sparse (sampled paths): zero-weight paths are not computed.

    Drop-path (DARTS) zeroes candidate paths per sample to decouple them; it applies only when
    every path runs: with sampled paths there is nothing to decouple, and dropping the one path
    would wipe the whole layer, its residual included.
    """

    def __init__(self, specs: list[OpSpec], cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.names = [s.name for s in specs]
        self.identity = [op_kind(s).identity for s in specs]  # never dropped by drop-path
        self.ops = nn.ModuleList(build_op(s, cin, cout, stride) for s in specs)
        self.drop_path_rate = 0.0
        self.generator: torch.Generator | None = None

    def forward(self, x: Tensor, weights: Tensor, active: list[int] | None = None,
                probe: bool = False) -> Tensor:  # fmt: skip
        """sum_o w_o * o(x), over ``active`` paths only when given (single-path strategies).

        ``probe``: the other candidates also run, without gradient to their weights, so that
        each path weight w_o gets its exact gradient <dL/dx_out, o(x)> although only the active
        paths are trained (the straight-through estimator's full Jacobian)."""
        out = None
        dense = active is None
        indices = range(len(self.ops)) if dense else active
        for i in indices:
            w, op = weights[i], self.ops[i]
            if dense and not w.requires_grad and float(w) == 0.0:
                continue
            y = op(x)
            if self.training and dense and not self.identity[i]:
                y = drop_path(y, self.drop_path_rate, self.generator)
            out = w * y if out is None else out + w * y
        if out is None:
            raise ValueError("MixedOp received all-zero weights")
        if probe and not dense:
            with torch.no_grad():
                others = [(i, op(x).detach()) for i, op in enumerate(self.ops) if i not in active]
            for i, y in others:
                out = out + weights[i] * y
        return out
