"""Heatmap MSE loss with per-joint target weights (SimpleBaseline/HRNet JointsMSELoss)."""

from __future__ import annotations

from torch import Tensor


def joints_mse(output: Tensor, target: Tensor, weight: Tensor) -> Tensor:
    """0.5 * mean over joints of the pixel-mean squared error, invisible joints weighted 0."""
    n, j = output.shape[:2]
    w = weight.reshape(n, j, 1)
    diff = (output.reshape(n, j, -1) - target.reshape(n, j, -1)) * w
    return 0.5 * diff.pow(2).mean()
