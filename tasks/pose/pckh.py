"""PCKh for MPII, HRNet convention (reproduces the published per-joint tables).

A joint is correct when its error is <= threshold x head size; head size = 0.6 x head-box
diagonal (``gt_valid.mat``) or Newell's ``normalize`` (``valid.h5``, the same quantity).
Missing joints are skipped. Head = head_top; Shoulder..Ankle = mean of left and right;
Mean = correct / visible pooled over all joints except pelvis and thorax.
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import numpy as np
import scipy.io

from dnas.errors import DnasError, brief

MPII_JOINTS = [
    "r_ankle", "r_knee", "r_hip", "l_hip", "l_knee", "l_ankle", "pelvis", "thorax",
    "upper_neck", "head_top", "r_wrist", "r_elbow", "r_shoulder", "l_shoulder", "l_elbow",
    "l_wrist",
]  # fmt: skip
MPII_FLIP_PAIRS = [(0, 5), (1, 4), (2, 3), (10, 15), (11, 14), (12, 13)]
HEAD_BIAS = 0.6
# table row -> (right, left) joint indices; Head is head_top alone.
GROUPS = {
    "Head": (9, 9), "Shoulder": (12, 13), "Elbow": (11, 14), "Wrist": (10, 15),
    "Hip": (2, 3), "Knee": (1, 4), "Ankle": (0, 5),
}  # fmt: skip
TABLE_KEYS = [*GROUPS, "Mean", "Mean@0.1"]


def read_mat(path: Path, what: str = "a readable MATLAB file") -> dict[str, Any]:
    """``scipy.io.loadmat`` in a forked child process where the platform has fork.

    A corrupt file can crash scipy's compiled reader (a segmentation fault, seen with scipy 1.17
    on a joints.mat with a few flipped bytes); that must end in a one-line error, not take the
    whole run down. Whatever the reader raises on bad bytes (its own errors, but also
    ZeroDivisionError or UnboundLocalError from inside scipy) becomes one DnasError naming it."""
    try:
        if "fork" not in multiprocessing.get_all_start_methods():
            return scipy.io.loadmat(str(path))
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("fork")) as pool:
            return pool.submit(scipy.io.loadmat, str(path)).result()
    except BrokenProcessPool:
        raise DnasError(f"{path}: not {what} (the MATLAB reader crashed)") from None
    except Exception as exc:  # noqa: BLE001 - a third-party parser fed untrusted bytes
        raise DnasError(f"{path}: not {what} ({brief(exc)})") from None


def load_gt_valid_mat(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """HRNet's gt_valid.mat -> (gt (N,16,2) 1-based, missing (N,16) bool, head sizes (N,)).

    A file that is not one (unreadable, truncated, wrong entries or shapes) is a one-line
    DnasError naming it."""
    what = "HRNet's gt_valid.mat (pos_gt_src 16x2xN, jnt_missing 16xN, headboxes_src 2x2xN)"
    mat = read_mat(path, what)
    try:
        arrays = [np.asarray(mat[k], np.float64)
                  for k in ("pos_gt_src", "jnt_missing", "headboxes_src")]  # fmt: skip
    except KeyError as exc:
        raise DnasError(f"{path}: not {what}: no {exc} entry") from None
    except (ValueError, TypeError) as exc:
        raise DnasError(f"{path}: not {what}: {brief(exc)}") from None
    pos, jnt_missing, boxes = arrays
    n = pos.shape[-1] if pos.ndim == 3 else -1
    if pos.shape[:2] != (16, 2) or jnt_missing.shape != (16, n) or boxes.shape != (2, 2, n):
        raise DnasError(f"{path}: not {what}: shapes {pos.shape}, {jnt_missing.shape}, "
                        f"{boxes.shape}")  # fmt: skip
    gt = np.transpose(pos, (2, 0, 1))
    missing = np.transpose(jnt_missing, (1, 0)).astype(bool)
    head_sizes = np.linalg.norm(boxes[1, :, :] - boxes[0, :, :], axis=0) * HEAD_BIAS
    return gt, missing, head_sizes


def per_joint(
    pred: np.ndarray, gt: np.ndarray, missing: np.ndarray, sizes: np.ndarray, threshold: float
) -> tuple[np.ndarray, np.ndarray]:
    """(correct count, visible count) per joint: a joint not ``missing`` is correct when its
    error is at most ``threshold`` x its person's reference size (MPII: the head size); pred
    and gt in one pixel convention."""
    visible = ~missing
    err = np.linalg.norm(pred - gt, axis=-1) / sizes[:, None]
    correct = ((err <= threshold) & visible).sum(axis=0)
    return correct.astype(np.float64), visible.sum(axis=0).astype(np.float64)


def pck_rows(correct: np.ndarray, count: np.ndarray, groups: dict[str, tuple[int, int]],
             keep: np.ndarray) -> dict[str, float]:  # fmt: skip
    """A PCK table in percent: each group's mean of its two joints' PCK (right and left), and
    ``Mean`` pooled over the ``keep`` joints' counts (MPII's and LSP's evaluation code)."""
    pck = 100.0 * correct / np.maximum(count, 1)
    table = {name: float(0.5 * (pck[right] + pck[left])) for name, (right, left) in groups.items()}
    table["Mean"] = float(100.0 * correct[keep].sum() / max(count[keep].sum(), 1))
    return table


def pckh_table(
    pred: np.ndarray, gt: np.ndarray, missing: np.ndarray, head_sizes: np.ndarray
) -> dict[str, float]:
    """The per-joint PCKh@0.5 table, Mean, and Mean@0.1, in percent."""
    keep = np.ones(16, bool)
    keep[[6, 7]] = False  # pelvis and thorax are not scored
    table = pck_rows(*per_joint(pred, gt, missing, head_sizes, 0.5), GROUPS, keep)
    table["Mean@0.1"] = pck_rows(*per_joint(pred, gt, missing, head_sizes, 0.1), {}, keep)["Mean"]
    return table


def format_table(
    table: dict[str, float], title: str = "PCKh@0.5", keys: list[str] = TABLE_KEYS
) -> str:
    """A metric table as a one-row Markdown table, the row named by its metric (the layout of
    every pose PCK table)."""
    header = "| | " + " | ".join(keys) + " |"
    rule = "|" + "---|" * (len(keys) + 1)
    row = f"| {title} | " + " | ".join(f"{table[k]:.2f}" for k in keys) + " |"
    return "\n".join([header, rule, row])
