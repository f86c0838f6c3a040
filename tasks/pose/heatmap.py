"""Gaussian heatmap targets and their argmax decoding (HRNet/SimpleBaseline conventions)."""

from __future__ import annotations

import cv2
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
    weight = (vis > 0).astype(np.float32)[:, None]
    # all joints at once (a loop over joints was a third of the data loading of a training step)
    seen = np.where(weight > 0, joints, 0)  # unlabelled joints may hold anything, even NaN
    mu = (seen / stride + 0.5).astype(int)  # HRNet: int(joint / stride + 0.5)
    weight[((mu - radius) >= (w, h)).any(1) | ((mu + radius) < 0).any(1)] = 0
    dx = np.arange(w, dtype=np.float32) - mu[:, :1]  # (J, w)
    dy = np.arange(h, dtype=np.float32) - mu[:, 1:]  # (J, h)
    g = np.exp(-(dx[:, None, :] ** 2 + dy[:, :, None] ** 2) / (2 * sigma**2))
    window = (np.abs(dx) <= radius)[:, None, :] & (np.abs(dy) <= radius)[:, :, None]
    target = (g * window * weight[:, :, None]).astype(np.float32)
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


def decode_dark(heatmaps: np.ndarray, kernel: int = 11) -> tuple[np.ndarray, np.ndarray]:
    """DARK sub-pixel decoding (Zhang et al., CVPR 2020): smooth each map (keeping its peak
    height), take the log, and refine the argmax by one Newton step of a 2-D Taylor expansion.
    Returns (N, J, 2) coordinates in heatmap pixels and (N, J) peak values."""
    coords_t, maxvals_t = decode(torch.from_numpy(np.ascontiguousarray(heatmaps)))
    n, j, h, w = heatmaps.shape
    coords = np.floor(coords_t.numpy() + 0.5)  # back to the integer argmax
    maxvals = maxvals_t.numpy()
    hm = heatmaps.astype(np.float64).copy()
    for i in range(n):
        for k in range(j):
            peak = hm[i, k].max()
            hm[i, k] = cv2.GaussianBlur(hm[i, k], (kernel, kernel), 0)
            if hm[i, k].max() > 0:
                hm[i, k] *= peak / hm[i, k].max()
    hm = np.log(np.maximum(hm, 1e-10))
    for i in range(n):
        for k in range(j):
            x, y = int(coords[i, k, 0]), int(coords[i, k, 1])
            if maxvals[i, k] <= 0 or not (1 < x < w - 2 and 1 < y < h - 2):
                continue
            m = hm[i, k]
            dx = 0.5 * (m[y, x + 1] - m[y, x - 1])
            dy = 0.5 * (m[y + 1, x] - m[y - 1, x])
            dxx = 0.25 * (m[y, x + 2] - 2 * m[y, x] + m[y, x - 2])
            dyy = 0.25 * (m[y + 2, x] - 2 * m[y, x] + m[y - 2, x])
            dxy = 0.25 * (m[y + 1, x + 1] - m[y - 1, x + 1] - m[y + 1, x - 1] + m[y - 1, x - 1])
            det = dxx * dyy - dxy**2
            if det != 0:
                hessian_inv = np.array([[dyy, -dxy], [-dxy, dxx]]) / det
                coords[i, k] -= hessian_inv @ np.array([dx, dy])
    coords[maxvals <= 0] = 0
    return coords.astype(np.float32), maxvals
