"""Pictures of segmentations: class colours blended over the image, panels side by side."""

from __future__ import annotations

import cv2
import numpy as np

from tasks.segmentation.coco import IGNORE

_FONT = cv2.FONT_HERSHEY_SIMPLEX
_SCALE = 0.5


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


def legend(items: list[tuple[str, np.ndarray]], width: int) -> np.ndarray:
    """A white strip ``width`` px wide naming each (name, RGB colour) beside a swatch of its
    colour, wrapped onto as many rows as the names need."""
    row_h, swatch, pad = 26, 16, 10
    rows: list[list[tuple[str, np.ndarray, int]]] = [[]]  # (name, colour, x) per row
    x = pad
    for name, colour in items:
        item_w = swatch + 6 + cv2.getTextSize(name, _FONT, _SCALE, 1)[0][0] + 2 * pad
        if rows[-1] and x + item_w > width:
            rows.append([])
            x = pad
        rows[-1].append((name, colour, x))
        x += item_w
    strip = np.full((row_h * len(rows) + pad // 2, width, 3), 255, np.uint8)
    for r, row in enumerate(rows):
        top = r * row_h + (row_h - swatch) // 2
        for name, colour, x in row:
            corner = (x + swatch, top + swatch)
            cv2.rectangle(strip, (x, top), corner, tuple(int(c) for c in colour), cv2.FILLED)
            cv2.rectangle(strip, (x, top), corner, (96, 96, 96), 1)
            cv2.putText(strip, name, (x + swatch + 6, top + swatch - 3), _FONT, _SCALE,
                        (0, 0, 0), 1, cv2.LINE_AA)  # fmt: skip
    return strip
