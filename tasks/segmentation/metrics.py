"""Segmentation scores from a confusion matrix accumulated over a whole split.

IoU_c = TP / (TP + FP + FN); mIoU is the mean over the classes that occur in the ground truth
or the prediction (a class absent from both has no IoU and is left out of the mean). Pixel
accuracy is correct / labelled pixels; ignore pixels (255) are never counted.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from tasks.segmentation.coco import IGNORE


def confusion(pred: Tensor, label: Tensor, num_classes: int) -> Tensor:
    """(K, K) int64 counts, rows ground truth and columns prediction, ignore pixels skipped."""
    keep = label != IGNORE
    index = label[keep].long() * num_classes + pred[keep].long()
    return torch.bincount(index, minlength=num_classes**2).reshape(num_classes, num_classes)


def scores(matrix: np.ndarray) -> dict[str, float | list[float | None]]:
    """``mIoU``, ``pixel_acc``, ``mAcc`` (percent) and per-class ``iou`` (None when absent)."""
    matrix = np.asarray(matrix, np.float64)
    tp = np.diag(matrix)
    gt, pred = matrix.sum(1), matrix.sum(0)
    union = gt + pred - tp
    iou = [float(100.0 * t / u) if u > 0 else None for t, u in zip(tp, union, strict=True)]
    present = [v for v in iou if v is not None]
    acc = [float(100.0 * t / g) for t, g in zip(tp, gt, strict=True) if g > 0]
    total = matrix.sum()
    return {
        "mIoU": float(np.mean(present)) if present else 0.0,
        "pixel_acc": 100.0 * float(tp.sum() / total) if total > 0 else 0.0,
        "mAcc": float(np.mean(acc)) if acc else 0.0,
        "iou": iou,
    }


def format_table(result: dict, class_names: list[str]) -> str:
    """A markdown table: one row per class (IoU, or '-' when absent), then the summary."""
    lines = ["| class | IoU |", "|---|---|"]
    for name, value in zip(class_names, result["iou"], strict=True):
        lines.append(f"| {name} | {'-' if value is None else f'{value:.2f}'} |")
    summary = f"| {result['mIoU']:.2f} | {result['pixel_acc']:.2f} | {result['mAcc']:.2f} |"
    lines += ["", "| mIoU | pixel acc | mAcc |", "|---|---|---|", summary]
    return "\n".join(lines)
