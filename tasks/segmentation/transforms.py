"""Image/label geometry for segmentation: random scale + crop + flip, and letterboxing.

Images are resized bilinearly and labels by nearest neighbour with the same scale and offsets,
so they stay aligned pixel for pixel; padding is the ImageNet mean colour (0 after
normalisation) in the image and the ignore index in the label.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from tasks.segmentation.coco import IGNORE

MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)
PAD_RGB = tuple(int(round(255 * m)) for m in MEAN)


def resize_pair(
    image: np.ndarray, label: np.ndarray, scale: float
) -> tuple[np.ndarray, np.ndarray]:
    """Both scaled by ``scale`` (at least 1 pixel a side): bilinear image, nearest label
    (pixel-centre aligned, as the bilinear image: cv2.INTER_NEAREST is off by half a pixel)."""
    h, w = label.shape
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return (cv2.resize(image, size, interpolation=cv2.INTER_LINEAR),
            cv2.resize(label, size, interpolation=cv2.INTER_NEAREST_EXACT))  # fmt: skip


def place(image: np.ndarray, label: np.ndarray, out_hw: tuple[int, int], top: int,
          left: int) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """An ``out_hw`` canvas holding the pair with its top-left corner at (top, left), which may
    be negative (a crop) or positive (padding)."""
    oh, ow = out_hw
    canvas = np.empty((oh, ow, 3), np.uint8)
    canvas[:] = PAD_RGB
    target = np.full((oh, ow), IGNORE, np.uint8)
    h, w = label.shape
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(top + h, oh), min(left + w, ow)
    if y1 > y0 and x1 > x0:
        canvas[y0:y1, x0:x1] = image[y0 - top : y1 - top, x0 - left : x1 - left]
        target[y0:y1, x0:x1] = label[y0 - top : y1 - top, x0 - left : x1 - left]
    return canvas, target


def fit_scale(hw: tuple[int, int], out_hw: tuple[int, int]) -> float:
    """The largest scale at which an ``hw`` image fits inside ``out_hw``."""
    return min(out_hw[0] / hw[0], out_hw[1] / hw[1])


def letterbox(image: np.ndarray, label: np.ndarray,
              out_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Scaled to fit ``out_hw`` with the aspect ratio kept, top-left, padded (label: ignore)."""
    image, label = resize_pair(image, label, fit_scale(label.shape, out_hw))
    return place(image, label, out_hw, 0, 0)


def letterbox_image(image: np.ndarray, out_hw: tuple[int, int]) -> tuple[np.ndarray, float]:
    """The image alone letterboxed as :func:`letterbox` does (``dnas segment``), and its scale."""
    scale = fit_scale(image.shape[:2], out_hw)
    blank = np.zeros(image.shape[:2], np.uint8)
    return letterbox(image, blank, out_hw)[0], scale


def unletterbox_classes(logits: torch.Tensor, hw: tuple[int, int], scale: float,
                        chunk: int = 8) -> torch.Tensor:  # fmt: skip
    """(C, H, W) logits at the letterboxed input size -> the (h, w) class map of the original
    image: its part of the canvas (padding cut off) resized bilinearly, then the argmax. Done
    ``chunk`` classes at a time, so a photo's full-size logits of 81 classes never fill memory
    at once (ties go to the lower class, as ``argmax``)."""
    h, w = hw
    part = logits[None, :, : max(1, round(h * scale)), : max(1, round(w * scale))]
    best = classes = None
    for start in range(0, part.shape[1], chunk):
        up = F.interpolate(part[:, start : start + chunk], size=hw, mode="bilinear",
                           align_corners=False)[0]  # fmt: skip
        value, index = up.max(0)
        if best is None:
            best, classes = value, index
        else:
            better = value > best
            best = torch.where(better, value, best)
            classes = torch.where(better, index + start, classes)
    return classes


def random_scale_crop(image: np.ndarray, label: np.ndarray, out_hw: tuple[int, int],
                      rng: np.random.Generator, scale_range: tuple[float, float],
                      flip: bool) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """The letterbox scale times a uniform factor in ``scale_range``, a random ``out_hw`` window
    (padded where the image is smaller), and a horizontal flip with probability 0.5 if ``flip``."""
    factor = rng.uniform(*scale_range)
    image, label = resize_pair(image, label, fit_scale(label.shape, out_hw) * factor)
    h, w = label.shape
    top = -int(rng.integers(0, h - out_hw[0] + 1)) if h > out_hw[0] else 0
    left = -int(rng.integers(0, w - out_hw[1] + 1)) if w > out_hw[1] else 0
    image, label = place(image, label, out_hw, top, left)
    if flip and rng.random() < 0.5:
        image, label = image[:, ::-1], label[:, ::-1]
    return np.ascontiguousarray(image), np.ascontiguousarray(label)


def to_input(image: np.ndarray) -> torch.Tensor:
    """An RGB uint8 image -> the (3, H, W) float tensor the nets take (ImageNet mean/std)."""
    x = (image.astype(np.float32) / 255.0 - MEAN) / STD
    return torch.from_numpy(x.transpose(2, 0, 1).copy())


def to_image(x: torch.Tensor) -> np.ndarray:
    """The inverse of ``to_input``: a (3, H, W) tensor -> an RGB uint8 image."""
    rgb = x.detach().cpu().numpy().transpose(1, 2, 0) * STD + MEAN
    return np.clip(np.round(rgb * 255.0), 0, 255).astype(np.uint8)
