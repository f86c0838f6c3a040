"""Pictures of segmentations: class colours blended over the image, panels side by side."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from dnas.errors import DnasError
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


def panels(images: list[np.ndarray], gap: int = 8) -> np.ndarray:
    """Same-height RGB images left to right with white gaps."""
    spacer = np.full((images[0].shape[0], gap, 3), 255, np.uint8)
    parts = [p for image in images for p in (image, spacer)][:-1]
    return np.concatenate(parts, axis=1)


def write_png(path: Path, image_rgb: np.ndarray) -> None:
    """Write an RGB image as PNG, creating the folder; a failure is a one-line error."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR)):
        raise DnasError(f"{path}: could not write the image")
