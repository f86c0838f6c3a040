"""MPII in the HRNet/mmpose layout: ``annot/{train,valid}.json``, ``gt_valid.mat``, ``images/``.

Json entries: ``image``, ``center`` and ``joints`` in 1-based MATLAB pixels, ``scale`` (person
height / 200), ``joints_vis``. As in HRNet, joints become 0-based, the centre moves down by
15 x scale and the box grows by 1.25 before cropping.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from dnas.errors import DnasError
from tasks.pose import heatmap
from tasks.pose.pckh import MPII_FLIP_PAIRS
from tasks.pose.transforms import affine_transform, apply_affine, flip_joints, warp

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
NUM_JOINTS = 16


@dataclass
class Augment:
    """SimpleBaseline/HRNet training augmentation (defaults: MPII)."""

    scale_factor: float = 0.25
    rotation: float = 30.0
    rotation_prob: float = 0.6
    flip: bool = True


@dataclass
class Record:
    image: str
    center: np.ndarray
    scale: float
    joints: np.ndarray  # (16, 2) 0-based pixels
    vis: np.ndarray  # (16,)


def _read_records(path: Path) -> list[Record]:
    try:
        entries = json.loads(path.read_text())
    except OSError as exc:
        raise DnasError(f"{path}: cannot read MPII annotations ({exc.strerror})") from None
    except json.JSONDecodeError as exc:
        raise DnasError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(entries, list):
        raise DnasError(f"{path}: expected a JSON list of MPII person entries")
    records = []
    for i, e in enumerate(entries):
        try:
            joints = np.asarray(e["joints"], np.float32).reshape(NUM_JOINTS, 2) - 1.0
            vis = np.asarray(e["joints_vis"], np.float32).reshape(NUM_JOINTS)
            center = np.asarray(e["center"], np.float32).reshape(2)
            scale = float(e["scale"])
            image = str(e["image"])
        except (KeyError, TypeError, ValueError) as exc:
            raise DnasError(
                f"{path}: entry {i}: not an MPII person (need image, center [x, y], scale, "
                f"joints 16x2, joints_vis 16): {type(exc).__name__}: {exc}"
            ) from None
        if center[0] != -1:  # HRNet: MPII centres sit high and boxes are tight
            center[1] += 15 * scale
        records.append(Record(image, center, scale * 1.25, joints, vis))
    return records


class MPIIDataset(Dataset):
    """Top-down crops of annotated people with heatmap targets (and optional augmentation)."""

    def __init__(
        self,
        root: Path,
        split: str,
        input_hw: tuple[int, int],
        sigma: float = 2.0,
        heatmap_stride: int = 4,
        augment: Augment | None = None,
        seed: int = 0,
    ) -> None:
        self.root = Path(root)
        self.split = split
        self.records = _read_records(self.root / "annot" / f"{split}.json")
        self.input_wh = (input_hw[1], input_hw[0])
        self.heatmap_wh = (input_hw[1] // heatmap_stride, input_hw[0] // heatmap_stride)
        self.sigma = sigma
        self.augment = augment
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self.records)

    def read_image(self, name: str) -> np.ndarray:
        path = self.root / "images" / name
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            raise DnasError(f"{path}: missing or unreadable image")
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)

    def _sample_augmentation(self) -> tuple[float, float, bool]:
        aug = self.augment
        if aug is None:
            return 1.0, 0.0, False
        rng = self.rng
        s = float(
            np.clip(
                rng.standard_normal() * aug.scale_factor + 1,
                1 - aug.scale_factor,
                1 + aug.scale_factor,
            )
        )
        r = 0.0
        if rng.random() < aug.rotation_prob:
            r = float(
                np.clip(rng.standard_normal() * aug.rotation, -2 * aug.rotation, 2 * aug.rotation)
            )
        return s, r, bool(aug.flip and rng.random() < 0.5)

    def __getitem__(self, index: int) -> dict:
        rec = self.records[index]
        image = self.read_image(rec.image)
        joints, vis, center = rec.joints.copy(), rec.vis.copy(), rec.center.copy()
        s, r, flip = self._sample_augmentation()
        scale = np.array([rec.scale * s, rec.scale * s], np.float32)
        if flip:
            image = image[:, ::-1]
            joints, vis = flip_joints(joints, vis, image.shape[1], MPII_FLIP_PAIRS)
            center[0] = image.shape[1] - center[0] - 1
        matrix = affine_transform(center, scale, r, self.input_wh)
        crop = warp(np.ascontiguousarray(image), matrix, self.input_wh)
        crop_joints = apply_affine(joints, matrix)
        target, weight = heatmap.encode(
            crop_joints, vis, self.input_wh, self.heatmap_wh, self.sigma
        )
        x = (crop.astype(np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
        return {
            "input": torch.from_numpy(x.transpose(2, 0, 1).copy()),
            "target": torch.from_numpy(target),
            "target_weight": torch.from_numpy(weight),
            "center": torch.from_numpy(center),
            "scale": torch.from_numpy(scale),
            "index": index,
        }
