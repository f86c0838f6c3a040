"""Test-time inference shared by evaluation and ``dnas predict``: flip test, decoding, and the
mapping of heatmap peaks back to image coordinates (HRNet's protocol)."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from tasks.pose import heatmap
from tasks.pose.transforms import affine_transform, apply_affine


def infer_heatmaps(model: nn.Module, images: Tensor, flip_pairs: list[tuple[int, int]],
                   flip: bool = True, shift: bool = True) -> Tensor:  # fmt: skip
    """The model's heatmaps, averaged with those of the mirrored images when ``flip``; the
    mirrored maps swap left/right joints and, with ``shift``, move one pixel right (HRNet)."""
    output = model(images).float()
    if not flip:
        return output
    flipped = model(images.flip(-1)).float().flip(-1)
    order = list(range(flipped.shape[1]))
    for a, b in flip_pairs:
        order[a], order[b] = b, a
    flipped = flipped[:, order]
    if shift:
        flipped[..., 1:] = flipped[..., :-1].clone()
    return (output + flipped) * 0.5


def heatmaps_to_image(output: Tensor, centers: np.ndarray, scales: np.ndarray,
                      decoding: str = "argmax") -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """(N, J, 2) 0-based image coordinates and (N, J) peak values from (N, J, h, w) heatmaps
    of crops taken at ``centers``/``scales`` (no rotation at test time)."""
    if decoding == "dark":
        coords, maxvals = heatmap.decode_dark(output.numpy())
    else:
        coords_t, maxvals_t = heatmap.decode(output)
        coords, maxvals = coords_t.numpy(), maxvals_t.numpy()
    hm_wh = (output.shape[3], output.shape[2])
    preds = np.stack([
        apply_affine(coords[k], affine_transform(centers[k], scales[k], 0.0, hm_wh, inverse=True))
        for k in range(len(coords))
    ])  # fmt: skip
    return preds, maxvals


@torch.no_grad()
def predict_batch(model: nn.Module, images: Tensor, centers: np.ndarray, scales: np.ndarray,
                  flip_pairs: list[tuple[int, int]], flip: bool = True, shift: bool = True,
                  decoding: str = "argmax") -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    model.eval()
    output = infer_heatmaps(model, images, flip_pairs, flip, shift).cpu()
    return heatmaps_to_image(output, centers, scales, decoding)
