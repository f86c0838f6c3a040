"""Pictures of segmentations: class colours blended over the image, panels side by side."""

from __future__ import annotations

import numpy as np

from tasks.segmentation.coco import IGNORE


def palette(num_classes: int) -> np.ndarray:
    """(256, 3) RGB colours: background black, classes the PASCAL VOC bit pattern, ignore white."""
    colours = np.zeros((256, 3), np.uint8)
    for c in range(1, num_classes):
        bits, r, g, b = c, 0, 0, 0
        for shift in range(7, -1, -1):
            r |= (bits & 1) << shift
            g |= ((bits >> 1) & 1) << shift
            b |= ((bits >> 2) & 1) << shift
            bits >>= 3
        colours[c] = (r, g, b)
    colours[IGNORE] = (255, 255, 255)
    return colours


def overlay(image: np.ndarray, labels: np.ndarray, colours: np.ndarray,
            alpha: float = 0.55) -> np.ndarray:  # fmt: skip
    """The RGB image with every non-background pixel blended towards its class colour."""
    out = image.astype(np.float32)
    mask = labels > 0
    out[mask] = (1 - alpha) * out[mask] + alpha * colours[labels[mask]].astype(np.float32)
    return np.round(out).astype(np.uint8)
