"""MPII in the HRNet/mmpose layout: ``annot/{train,valid}.json``, ``gt_valid.mat``, ``images/``.

Json entries: ``image``, ``center`` and ``joints`` in 1-based MATLAB pixels, ``scale`` (person
height / 200), ``joints_vis``. As in HRNet, joints become 0-based, the centre moves down by
15 x scale and the box grows by 1.25 before cropping. Scored by PCKh with ``gt_{split}.mat``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import scipy.io

from dnas.errors import DnasError, brief
from dnas.schema import is_finite_number, read_json
from dnas.task import Metrics
from tasks.pose.pckh import (
    MPII_FLIP_PAIRS,
    MPII_JOINTS,
    format_table,
    load_gt_valid_mat,
    pckh_table,
)
from tasks.pose.topdown import DATASETS, PersonRecord, TopDownDataset


def read_json_list(path: Path, what: str) -> list:
    """A JSON file that must hold a list of ``what``."""
    return as_list(read_json(path, what), path, what)


def as_list(entries: Any, path: Path, what: str) -> list:
    """``entries`` read from ``path`` when a list, else a one-line error saying what it lacks."""
    if not isinstance(entries, list):
        raise DnasError(f"{path}: expected a JSON list of {what}")
    return entries


def _entry_problem(
    image: object, joints: np.ndarray, vis: np.ndarray, center: np.ndarray, scale: object
) -> str | None:
    """What is wrong with the numbers of one MPII person, or None."""
    if not isinstance(image, str) or not image:
        return f"image must be a file name, got {image!r}"[:200]
    for name, values in (("joints", joints), ("joints_vis", vis), ("center", center)):
        if not np.isfinite(values).all():
            return f"{name} must be finite numbers"
    if not (is_finite_number(scale) and scale > 0):  # a number, not a string that parses
        return f"scale must be a positive number, got {scale!r}"[:200]
    return None


@DATASETS.register("mpii")
class MPIIDataset(TopDownDataset):
    joint_names = tuple(MPII_JOINTS)
    flip_pairs = MPII_FLIP_PAIRS
    upper_body_ids = (7, 8, 9, 10, 11, 12, 13, 14, 15)
    skeleton = ((0, 1), (1, 2), (2, 6), (3, 6), (3, 4), (4, 5), (6, 7), (7, 8), (8, 9),
                (10, 11), (11, 12), (12, 7), (7, 13), (13, 14), (14, 15))  # fmt: skip

    def load_records(self) -> list[PersonRecord]:
        path = self.root / "annot" / f"{self.split}.json"
        records = []
        for i, e in enumerate(read_json_list(path, "MPII annotations")):
            try:
                joints = np.asarray(e["joints"], np.float32).reshape(16, 2) - 1.0
                vis = np.asarray(e["joints_vis"], np.float32).reshape(16)
                center = np.asarray(e["center"], np.float32).reshape(2)
                scale = e["scale"]
                image = self.root / "images" / str(e["image"])
            except (KeyError, TypeError, ValueError, OverflowError) as exc:
                raise DnasError(
                    f"{path}: entry {i}: not an MPII person (need image, center [x, y], scale, "
                    f"joints 16x2, joints_vis 16): {brief(exc)}"
                ) from None
            problem = _entry_problem(e["image"], joints, vis, center, scale)
            if problem:
                raise DnasError(f"{path}: entry {i}: {problem}")
            scale = float(scale)
            if center[0] != -1:  # HRNet: MPII centres sit high and boxes are tight
                center[1] += 15 * scale
            records.append(PersonRecord(image, center, np.full(2, scale * 1.25, np.float32),
                                        joints, vis))  # fmt: skip
        return records

    def head_boxes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The split's ``gt_<split>.mat`` (:func:`load_gt_valid_mat`), one entry per person."""
        gt_path = self.root / "annot" / f"gt_{self.split}.mat"
        if not gt_path.exists():
            raise DnasError(f"{gt_path}: missing; PCKh needs the head boxes of split "
                            f"{self.split!r} in HRNet's gt_valid.mat format")  # fmt: skip
        gt, missing, head_sizes = load_gt_valid_mat(gt_path)
        if len(gt) != len(self.records):
            raise DnasError(f"{gt_path}: {len(gt)} people, but split {self.split!r} has "
                            f"{len(self.records)}")  # fmt: skip
        return gt, missing, head_sizes

    def check_scorable(self) -> None:
        self.head_boxes()

    def evaluate(self, preds: np.ndarray, scores: np.ndarray, out_dir: Path | None) -> Metrics:
        gt, missing, head_sizes = self.head_boxes()
        preds = preds + 1.0  # 1-based, like the ground truth
        table = pckh_table(preds, gt, missing, head_sizes)
        files = {}
        if out_dir is not None:
            out_dir.mkdir(parents=True, exist_ok=True)
            pred_path = out_dir / "pred.mat"
            scipy.io.savemat(str(pred_path), {"preds": preds})
            files["predictions"] = str(pred_path)
        return Metrics(table, "Mean", format_table(table), files, "PCKh@0.5, mean of joints (%)")
