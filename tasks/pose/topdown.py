"""The top-down pipeline shared by every pose dataset: person box -> augmented crop -> heatmaps.

A dataset subclass only says how to read its people (``load_records``) and how to score
predictions (``evaluate``); registering it in ``DATASETS`` makes it selectable as
``task.dataset`` in the experiment YAML (as mmpose's dataset registry does).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from dnas.registry import Registry
from dnas.task import Metrics
from dnas.vis.images import read_rgb
from tasks.pose import heatmap
from tasks.pose.transforms import affine_transform, apply_affine, flip_joints, warp

DATASETS = Registry("pose dataset")
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


@dataclass
class Augment:
    """SimpleBaseline/HRNet training augmentation; defaults are MPII's (COCO: scale 0.35,
    half_body_prob 0.3)."""

    scale_factor: float = field(default=0.25, metadata={"min": 0.0, "max": 0.9})
    rotation: float = field(default=30.0, metadata={"min": 0.0, "max": 180.0})
    rotation_prob: float = field(default=0.6, metadata={"min": 0.0, "max": 1.0})
    flip: bool = True
    half_body_prob: float = field(default=0.0, metadata={"min": 0.0, "max": 1.0})
    half_body_min_joints: int = field(default=8, metadata={"min": 1})


def box_to_center_scale(
    box: tuple[float, float, float, float], input_wh: tuple[int, int], padding: float = 1.25
) -> tuple[np.ndarray, np.ndarray]:
    """A box (x, y, w, h) -> centre and scale (units of 200 px) widened to the input's aspect
    ratio and padded (HRNet's _box2cs)."""
    x, y, w, h = box
    aspect = input_wh[0] / input_wh[1]
    center = np.array([x + w * 0.5, y + h * 0.5], np.float32)
    if w > aspect * h:
        h = w / aspect
    elif w < aspect * h:
        w = h * aspect
    return center, np.array([w / 200.0, h / 200.0], np.float32) * padding


def to_input(crop: np.ndarray) -> torch.Tensor:
    """An RGB uint8 crop -> the (3, H, W) float tensor the nets take (ImageNet mean/std)."""
    x = (crop.astype(np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
    return torch.from_numpy(x.transpose(2, 0, 1).copy())


@dataclass
class PersonRecord:
    """One annotated (or detected) person: box as centre and scale (w, h in units of 200 px),
    joints in 0-based image pixels, per-joint visibility, and what the evaluator needs."""

    image: Path
    center: np.ndarray
    scale: np.ndarray
    joints: np.ndarray
    vis: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)


class TopDownDataset(Dataset, ABC):
    joint_names: ClassVar[tuple[str, ...]]
    flip_pairs: ClassVar[list[tuple[int, int]]]
    upper_body_ids: ClassVar[tuple[int, ...]] = ()
    skeleton: ClassVar[tuple[tuple[int, int], ...]] = ()  # limbs to draw
    default_splits: ClassVar[tuple[str, str]] = ("train", "valid")  # (training, validation)
    default_augment: ClassVar[dict[str, Any]] = {}  # overrides of Augment's (MPII) defaults

    def __init__(
        self,
        root: Path,
        split: str,
        input_hw: tuple[int, int],
        sigma: float = 2.0,
        heatmap_stride: int = 4,
        augment: Augment | None = None,
        seed: int = 0,
        options: Any = None,
    ) -> None:
        self.root = Path(root)
        self.split = split
        self.options = options
        self.input_wh = (input_hw[1], input_hw[0])
        self.heatmap_wh = (input_hw[1] // heatmap_stride, input_hw[0] // heatmap_stride)
        self.sigma = sigma
        self.augment = augment
        self.rng = np.random.default_rng(seed)
        self.records = self.load_records()

    @classmethod
    def num_joints(cls) -> int:
        return len(cls.joint_names)

    @abstractmethod
    def load_records(self) -> list[PersonRecord]:
        """Read the split's people; raise DnasError naming the file on malformed input."""

    @abstractmethod
    def evaluate(self, preds: np.ndarray, scores: np.ndarray, out_dir: Path | None) -> Metrics:
        """Score (N, J, 2) 0-based image-coordinate predictions with (N, J) peak values."""

    def check_scorable(self) -> None:
        """Refuse (DnasError naming the file) a split that :meth:`evaluate` could not score,
        for what it reads beyond the records (MPII's head boxes): called when the split is
        built for scoring, so that a training does not find out at its first evaluation."""

    def __len__(self) -> int:
        return len(self.records)

    def read_image(self, path: Path) -> np.ndarray:
        return read_rgb(path)

    def box_to_center_scale(
        self, x: float, y: float, w: float, h: float, padding: float = 1.25
    ) -> tuple[np.ndarray, np.ndarray]:
        return box_to_center_scale((x, y, w, h), self.input_wh, padding)

    def _half_body(self, joints: np.ndarray, vis: np.ndarray):
        """Centre and scale of the upper or lower body only (HRNet half-body augmentation)."""
        visible = np.flatnonzero(vis > 0)
        upper = [j for j in visible if j in self.upper_body_ids]
        lower = [j for j in visible if j not in self.upper_body_ids]
        chosen = upper if (self.rng.random() < 0.5 and len(upper) > 2) else lower
        if len(chosen) < 2:
            chosen = upper
        if len(chosen) < 2:
            return None
        pts = joints[chosen]
        lo, hi = pts.min(0), pts.max(0)
        center, scale = self.box_to_center_scale(lo[0], lo[1], hi[0] - lo[0], hi[1] - lo[1], 1.0)
        return (lo + hi) / 2, scale * 1.5

    def _sample_augmentation(self, rec: PersonRecord) -> tuple[np.ndarray, np.ndarray, float, bool]:
        center, scale = rec.center.copy(), rec.scale.copy()
        aug = self.augment
        if aug is None:
            return center, scale, 0.0, False
        rng = self.rng
        if (
            aug.half_body_prob > 0
            and (rec.vis > 0).sum() > aug.half_body_min_joints
            and rng.random() < aug.half_body_prob
        ):
            half = self._half_body(rec.joints, rec.vis)
            if half is not None:
                center, scale = half
        sf, rf = aug.scale_factor, aug.rotation
        scale = scale * float(np.clip(rng.standard_normal() * sf + 1, 1 - sf, 1 + sf))
        rotation = 0.0
        if rng.random() < aug.rotation_prob:
            rotation = float(np.clip(rng.standard_normal() * rf, -2 * rf, 2 * rf))
        return center, scale, rotation, bool(aug.flip and rng.random() < 0.5)

    def __getitem__(self, index: int) -> dict:
        rec = self.records[index]
        image = self.read_image(rec.image)
        center, scale, rotation, flip = self._sample_augmentation(rec)
        joints, vis = rec.joints.copy(), rec.vis.copy()
        if flip:
            image = cv2.flip(image, 1)  # the mirrored copy, 7x quicker than numpy's [:, ::-1] copy
            joints, vis = flip_joints(joints, vis, image.shape[1], self.flip_pairs)
            center[0] = image.shape[1] - center[0] - 1
        matrix = affine_transform(center, scale, rotation, self.input_wh)
        crop = warp(np.ascontiguousarray(image), matrix, self.input_wh)  # a plugin may give a view
        target, weight = heatmap.encode(
            apply_affine(joints, matrix), vis, self.input_wh, self.heatmap_wh, self.sigma
        )
        return {
            "input": to_input(crop),
            "target": torch.from_numpy(target),
            "target_weight": torch.from_numpy(weight),
            "center": torch.from_numpy(center.astype(np.float32)),
            "scale": torch.from_numpy(scale.astype(np.float32)),
            "index": index,
        }
