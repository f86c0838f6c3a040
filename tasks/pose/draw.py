"""Drawing poses on images: the person's right side red, left side blue, the rest green."""

from __future__ import annotations

import cv2
import numpy as np

RIGHT, LEFT, CENTRE = (220, 50, 50), (50, 90, 230), (40, 200, 80)  # RGB


def _colour(name: str) -> tuple[int, int, int]:
    return RIGHT if name.startswith("r_") else LEFT if name.startswith("l_") else CENTRE


def draw_pose(image: np.ndarray, joints: np.ndarray, visible: np.ndarray, names: tuple[str, ...],
              skeleton: tuple[tuple[int, int], ...]) -> np.ndarray:  # fmt: skip
    """A copy of the RGB ``image`` with the limbs and joints whose ``visible`` flag is set."""
    out = image.copy()
    size = max(2, round(max(image.shape[:2]) / 160))
    pts = [tuple(int(round(v)) for v in p) for p in joints]
    for a, b in skeleton:
        if visible[a] and visible[b]:
            colour = _colour(names[a]) if names[a][:2] == names[b][:2] else CENTRE
            cv2.line(out, pts[a], pts[b], colour, size, cv2.LINE_AA)
    for k, p in enumerate(pts):
        if visible[k]:
            cv2.circle(out, p, size + 1, _colour(names[k]), -1, cv2.LINE_AA)
    return out


def draw_box(image: np.ndarray, box: tuple[float, float, float, float]) -> np.ndarray:
    """``image`` with the person box x, y, w, h the crop was centred on, in grey."""
    x, y, w, h = (int(round(v)) for v in box)
    size = max(1, round(max(image.shape[:2]) / 320))
    return cv2.rectangle(image.copy(), (x, y), (x + w, y + h), (160, 160, 160), size, cv2.LINE_AA)


LEGEND = [("person's right", RIGHT), ("left", LEFT), ("centre", CENTRE)]
