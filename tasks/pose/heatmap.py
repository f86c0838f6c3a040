"""Gaussian heatmap targets and their argmax decoding (HRNet/SimpleBaseline conventions)."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def encode(
    joints: np.ndarray,
    vis: np.ndarray,
    input_wh: tuple[int, int],
    heatmap_wh: tuple[int, int],
    sigma: float,
) -> tuple[np.ndarray, np.ndarray]:
    """(J, h, w) Gaussian targets (peak 1, 3-sigma window) and (J, 1) weights.

    Joints are in input-crop pixels; a joint whose window falls outside the map gets weight 0.
    """
    w, h = heatmap_wh
    stride = np.array([input_wh[0] / w, input_wh[1] / h])
    radius = sigma * 3
    target = np.zeros((len(joints), h, w), np.float32)
    weight = (vis > 0).astype(np.float32)[:, None]
    xs = np.arange(w, dtype=np.float32)
    ys = np.arange(h, dtype=np.float32)[:, None]
    for j, joint in enumerate(joints):
        if weight[j, 0] == 0:
            continue
        mu_x, mu_y = (joint / stride + 0.5).astype(int)
        if mu_x - radius >= w or mu_y - radius >= h or mu_x + radius < 0 or mu_y + radius < 0:
            weight[j, 0] = 0
            continue
        g = np.exp(-((xs - mu_x) ** 2 + (ys - mu_y) ** 2) / (2 * sigma**2))
        window = (np.abs(xs - mu_x) <= radius) & (np.abs(ys - mu_y) <= radius)
        target[j] = g * window
    return target, weight


def decode(heatmaps: Tensor) -> tuple[Tensor, Tensor]:
    """Argmax of each (N, J, h, w) map with HRNet's quarter-pixel shift toward the higher
    neighbour; returns (N, J, 2) coordinates in heatmap pixels and (N, J) peak values."""
    n, j, h, w = heatmaps.shape
    flat = heatmaps.reshape(n, j, -1)
    maxvals, idx = flat.max(dim=-1)
    x = (idx % w).float()
    y = torch.div(idx, w, rounding_mode="floor").float()
    hm = heatmaps.reshape(n * j, h, w)
    xi, yi = x.long().reshape(-1), y.long().reshape(-1)
    rows = torch.arange(n * j)
    inner_x = (xi > 0) & (xi < w - 1)
    inner_y = (yi > 0) & (yi < h - 1)
    dx = hm[rows, yi, (xi + 1).clamp(max=w - 1)] - hm[rows, yi, (xi - 1).clamp(min=0)]
    dy = hm[rows, (yi + 1).clamp(max=h - 1), xi] - hm[rows, (yi - 1).clamp(min=0), xi]
    x = x + (torch.sign(dx) * 0.25 * inner_x).reshape(n, j)
    y = y + (torch.sign(dy) * 0.25 * inner_y).reshape(n, j)
    coords = torch.stack([x, y], dim=-1)
    coords[maxvals <= 0] = 0  # HRNet: no positive response -> no prediction
    return coords, maxvals
