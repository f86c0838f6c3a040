"""Pictures that task plugins write (``dnas eval --save-vis``, ``dnas predict``): RGB panels
side by side, written as PNG."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from dnas.errors import DnasError


def panels(images: list[np.ndarray], gap: int = 8) -> np.ndarray:
    """Same-height RGB images left to right with white gaps."""
    spacer = np.full((images[0].shape[0], gap, 3), 255, np.uint8)
    parts = [p for image in images for p in (image, spacer)][:-1]
    return np.concatenate(parts, axis=1)


def write_png(path: Path, image_rgb: np.ndarray) -> None:
    """Write an RGB image as PNG, creating the folder; a failure is a one-line error."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR)):
        raise DnasError(f"{path}: could not write the image")
