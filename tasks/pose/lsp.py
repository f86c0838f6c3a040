"""Leeds Sports Pose (LSP) and LSP-extended: ``root/joints.mat`` and ``root/images/``.

``joints.mat`` holds ``joints`` as (14, 3, N) in LSP-extended (images ``im%05d.jpg``) or
(3, 14, N) in the original LSP (images ``im%04d.jpg``); the shape says which. Rows are x, y in
1-based pixels and a flag with opposite meanings: LSP-extended's flag is 1 = visible, 0 = not
visible (its README), the original LSP's is 1 = occluded, 0 = visible (its converters, e.g.
Wei Yang's gen_lsp.m, use ``1 - flag``). The flag is kept as ``meta["visible"]`` (1 = visible).

Target weight and scoring follow the coordinates, not the flag: a joint counts as annotated
when both 1-based coordinates are positive. LSP-extended marks joints out of frame with 0
or negative coordinates (on the first 2000 LSPET people the flag is 0 exactly for those, bar two
head tops just above the frame, and no joint lies past the right or bottom edge), while the
original LSP gives coordinates for occluded joints, and MPII trains on its occluded joints too.

Splits are 0-based [start, stop) index ranges into ``joints.mat`` (``train_range``,
``val_range``). The person box is the annotated joints' bounding box, grown to at least half
the ~150 px person height the images are scaled to, then padded 1.25x; a person with no
annotated joint has no box and is left out. Scored by PCK@0.2 of the torso diameter, every
person of the split (``reference_sizes`` says which diameter when a torso joint is missing).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.io

from dnas.errors import ConfigError, DnasError, brief
from dnas.task import Metrics
from tasks.pose import pckh
from tasks.pose.topdown import DATASETS, PersonRecord, TopDownDataset

LSP_JOINTS = [
    "r_ankle", "r_knee", "r_hip", "l_hip", "l_knee", "l_ankle", "r_wrist", "r_elbow",
    "r_shoulder", "l_shoulder", "l_elbow", "l_wrist", "neck", "head_top",
]  # fmt: skip
LSP_FLIP_PAIRS = [(0, 5), (1, 4), (2, 3), (6, 11), (7, 10), (8, 9)]
# PCK's reference distance, the torso diameter: the person's left shoulder to right hip, the
# pair of the MPII benchmark's LSP code (Sapp & Taskar's PCK; bearpaw/eval_pose's eval_pck.m,
# "right shoulder and left hip" as the viewer sees them). On the LSP test set every joint has
# coordinates, so that code needs no other rule; LSP-extended leaves joints out of frame
# without coordinates, and for those people the next rule that applies is used (see pck).
TORSO_PAIR = (9, 2)
OTHER_DIAGONAL = (8, 3)  # right shoulder to left hip: median ratio 1.00 to TORSO_PAIR on LSPET
REFERENCES = ("left shoulder-right hip", "right shoulder-left hip", "median of the split")
# table row -> (right, left) joint indices; Head averages neck and head_top.
GROUPS = {
    "Head": (12, 13), "Shoulder": (8, 9), "Elbow": (7, 10), "Wrist": (6, 11),
    "Hip": (2, 3), "Knee": (1, 4), "Ankle": (0, 5),
}  # fmt: skip
TABLE_KEYS = [*GROUPS, "Mean"]
PERSON_PX = 150.0  # the LSP readmes: images are scaled so the person is ~150 px long
PADDING = 1.25


@dataclass
class LSPOptions:
    """0-based [start, stop) index ranges into joints.mat for the two splits."""

    train_range: list[int] = field(default_factory=lambda: [0, 1800], metadata={"min": 0})
    val_range: list[int] = field(default_factory=lambda: [1800, 2000], metadata={"min": 0})


def _diagonal(gt: np.ndarray, annotated: np.ndarray, pair: tuple[int, int]) -> np.ndarray:
    """(N,) distance between the pair's joints; 0 where either is not annotated."""
    a, b = pair
    size = np.linalg.norm(gt[:, a] - gt[:, b], axis=-1)
    return np.where(annotated[:, a] & annotated[:, b], size, 0.0)


def torso_sizes(gt: np.ndarray, annotated: np.ndarray) -> np.ndarray:
    """(N,) left shoulder to right hip distances (the published diameter); 0 where missing."""
    return _diagonal(gt, annotated, TORSO_PAIR)


def reference_sizes(gt: np.ndarray, annotated: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N,) PCK reference distances and (N,) which rule gave each (index into REFERENCES).

    1. the published diameter, left shoulder to right hip;
    2. else the other diagonal, right shoulder to left hip (the same size: median ratio 1.00,
       IQR 0.87-1.15, over the 1,419 of the first 2000 LSPET people who have both);
    3. else the median diameter of the split's people found by rules 1-2: LSP scales every
       person to ~150 px, so diameters are narrow (36-60 px for 80 % of the first 2000).
    Rule 3 is left out (size 0, person not scored) only when no one in the split has a torso.
    """
    first, second = torso_sizes(gt, annotated), _diagonal(gt, annotated, OTHER_DIAGONAL)
    size = np.where(first > 0, first, second)
    rule = np.where(first > 0, 0, np.where(second > 0, 1, 2))
    if (size > 0).any():
        size = np.where(size > 0, size, np.median(size[size > 0]))
    return size, rule


def pck(
    preds: np.ndarray, gt: np.ndarray, annotated: np.ndarray, threshold: float = 0.2
) -> dict[str, float]:
    """PCK table in percent: a joint is correct when its error is <= threshold x the person's
    reference distance (``reference_sizes``).

    Joints not annotated are skipped; left and right (and neck and head_top) are averaged per
    row; Mean is pooled over all 14 joints. ``Mean_strict`` is Mean over only the people with
    the published diameter, as the published code scores (every LSP test person has it)."""
    size, rule = reference_sizes(gt, annotated)
    table = _table(preds, gt, annotated & (size > 0)[:, None], size, threshold)
    strict = _table(preds, gt, annotated & (rule == 0)[:, None], size, threshold)
    return table | {"Mean_strict": strict["Mean"]}


def _table(preds: np.ndarray, gt: np.ndarray, counted: np.ndarray, size: np.ndarray,
           threshold: float) -> dict[str, float]:  # fmt: skip
    correct, count = pckh.per_joint(preds, gt, ~counted, np.maximum(size, 1e-12), threshold)
    return pckh.pck_rows(correct, count, GROUPS, np.ones(len(correct), bool))


def scored_note(gt: np.ndarray, annotated: np.ndarray, strict: float | None = None) -> str:
    """How many people were scored, by which reference distance, and the ``strict`` Mean."""
    size, rule = reference_sizes(gt, annotated)
    parts = [f"{int(((rule == k) & (size > 0)).sum())} by the {name}"
             for k, name in enumerate(REFERENCES)]  # fmt: skip
    text = f"{int((size > 0).sum())} of {len(gt)} people scored ({', '.join(parts)}"
    if (rule == 2).any() and (size > 0).any():
        text += f" = {size[rule == 2][0]:.1f} px"
    value = "" if strict is None else f" {strict:.2f}"
    return text + f"); Mean_strict{value}: only those with the left shoulder-right hip diameter"


def format_table(table: dict[str, float], title: str = "PCK@0.2") -> str:
    """The PCK table as one Markdown row, in the layout of the MPII PCKh table."""
    return pckh.format_table(table, title, TABLE_KEYS)


def load_joints(path: Path) -> tuple[np.ndarray, np.ndarray, str]:
    """joints.mat -> (joints (N, 14, 2) 1-based, visible (N, 14) with 1 = visible, image
    name pattern), from either the LSP-extended or the original LSP layout."""
    if not path.exists():
        raise DnasError(f"{path}: missing; LSP needs joints.mat beside images/")
    what = "a MATLAB file with a numeric 'joints' array"
    try:
        raw = np.asarray(pckh.read_mat(path, what)["joints"], np.float64)
    except (KeyError, TypeError, ValueError) as exc:
        raise DnasError(f"{path}: not {what} ({brief(exc)})") from None
    if not np.isfinite(raw).all():
        raise DnasError(f"{path}: 'joints' holds NaN or infinite values")
    if raw.ndim == 3 and raw.shape[:2] == (14, 3):  # LSP-extended: flag 1 = visible
        arr = raw.transpose(2, 0, 1)
        return arr[..., :2], check_flags(arr[..., 2], path), "im{:05d}.jpg"
    if raw.ndim == 3 and raw.shape[:2] == (3, 14):  # original LSP: flag 1 = occluded
        arr = raw.transpose(2, 1, 0)
        return arr[..., :2], 1.0 - check_flags(arr[..., 2], path), "im{:04d}.jpg"
    raise DnasError(f"{path}: expected a 'joints' array of shape (14, 3, N) (LSP-extended) or "
                    f"(3, 14, N) (LSP), got {raw.shape}")  # fmt: skip


def check_flags(flags: np.ndarray, path: Path) -> np.ndarray:
    """The visibility flags of ``joints``, each 0 or 1 (else a one-line error naming one)."""
    wrong = flags[(flags != 0) & (flags != 1)]
    if wrong.size:
        raise DnasError(f"{path}: 'joints' visibility flags must be 0 or 1, found {wrong[0]:g}")
    return flags


@DATASETS.register("lsp")
class LSPDataset(TopDownDataset):
    joint_names = tuple(LSP_JOINTS)
    skeleton = ((0, 1), (1, 2), (2, 3), (3, 4), (4, 5), (6, 7), (7, 8), (8, 12), (9, 12),
                (9, 10), (10, 11), (12, 13), (2, 8), (3, 9))  # fmt: skip
    flip_pairs = LSP_FLIP_PAIRS
    upper_body_ids = (6, 7, 8, 9, 10, 11, 12, 13)
    default_splits = ("train", "val")
    Options = LSPOptions

    def split_range(self, total: int, path: Path) -> range:
        """The split's people, after checking both ranges against the file's N."""
        options = self.options or LSPOptions()
        ranges = {"train": options.train_range, "val": options.val_range}
        for name, bounds in ranges.items():
            if len(bounds) != 2 or not bounds[0] < bounds[1] <= total:
                raise ConfigError("", f"task.dataset_options.{name}_range", f"expected [start, "
                                  f"stop) with 0 <= start < stop <= {total} (the people in "
                                  f"{path}), got {bounds}")  # fmt: skip
        if self.split not in ranges:
            raise DnasError(f"{self.root}: lsp has splits 'train' and 'val' (index ranges set by "
                            f"task.dataset_options), got {self.split!r}")  # fmt: skip
        return range(*ranges[self.split])

    def load_records(self) -> list[PersonRecord]:
        path = self.root / "joints.mat"
        joints, visible, pattern = load_joints(path)
        records = []
        for i in self.split_range(len(joints), path):
            annotated = (joints[i] > 0).all(axis=-1)
            if not annotated.any():
                continue
            lo, hi = joints[i][annotated].min(0), joints[i][annotated].max(0)
            grow = np.maximum(0.5 * PERSON_PX - (hi - lo).max(), 0.0) * 0.5
            lo, hi = lo - grow - 1.0, hi + grow - 1.0  # 0-based
            center, scale = self.box_to_center_scale(*lo, *(hi - lo), PADDING)
            records.append(PersonRecord(
                self.root / "images" / pattern.format(i + 1), center, scale,
                (joints[i] - 1.0).astype(np.float32), annotated.astype(np.float32),
                {"index": i, "visible": visible[i].astype(np.float32)},
            ))  # fmt: skip
        return records

    def evaluate(self, preds: np.ndarray, scores: np.ndarray, out_dir: Path | None) -> Metrics:
        if len(preds) != len(self.records):
            raise DnasError(f"{self.root}: {len(preds)} predictions for the {len(self.records)} "
                            f"people of split {self.split!r}")  # fmt: skip
        gt = np.stack([r.joints for r in self.records]).astype(np.float64)
        annotated = np.stack([r.vis for r in self.records]) > 0
        table = pck(preds, gt, annotated)
        note = scored_note(gt, annotated, table["Mean_strict"])
        files = {}
        if out_dir is not None:
            out_dir.mkdir(parents=True, exist_ok=True)
            pred_path = out_dir / "pred_lsp.mat"
            scipy.io.savemat(str(pred_path), {"preds": preds + 1.0})  # 1-based like joints.mat
            files["predictions"] = str(pred_path)
        return Metrics(table, "Mean", format_table(table) + "\n\n" + note, files,
                       "PCK@0.2, mean of joints (%)")  # fmt: skip
