"""``dnas pose ...``: score prediction files with the pose metrics, outside any training run."""

from __future__ import annotations

import json
from pathlib import Path

import click
import h5py
import numpy as np
import scipy.io

from dnas.errors import DnasError
from dnas.registry import COMMANDS
from tasks.pose.pckh import TABLE_KEYS, format_table, load_gt_valid_mat, pckh_table


def _read_array(path: Path, key: str) -> np.ndarray:
    """``key`` from a MATLAB (.mat) or HDF5 (.h5) file."""
    try:
        if path.suffix == ".h5":
            with h5py.File(path, "r") as f:
                return np.asarray(f[key][()], np.float64)
        return np.asarray(scipy.io.loadmat(str(path))[key], np.float64)
    except KeyError:
        raise DnasError(f"{path}: no {key!r} entry") from None
    except (OSError, ValueError) as exc:
        raise DnasError(f"{path}: cannot read ({exc})") from None


def load_mpii_ground_truth(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(gt (N,16,2) 1-based, missing (N,16), head sizes (N,)) from HRNet's gt_valid.mat or
    Newell's valid.h5 (whose ``normalize`` is already 0.6 x the head-box diagonal)."""
    if not path.is_file():
        raise DnasError(f"{path}: no such ground-truth file")
    if path.suffix == ".h5":
        gt = _read_array(path, "part")
        heads = _read_array(path, "normalize")
        return gt, (gt == 0).all(-1), heads
    if path.suffix != ".mat":
        raise DnasError(f"{path}: expected gt_valid.mat (HRNet) or valid.h5 (Newell)")
    try:
        return load_gt_valid_mat(path)
    except KeyError as exc:
        raise DnasError(f"{path}: not HRNet's gt_valid.mat (no {exc} entry)") from None
    except ValueError as exc:
        raise DnasError(f"{path}: cannot read ({exc})") from None


def load_mpii_predictions(path: Path, n_people: int) -> np.ndarray:
    """``preds`` as (N, 16, 2), accepting the transposed (2, 16, N) layout of some files."""
    if not path.is_file():
        raise DnasError(f"{path}: no such prediction file")
    preds = _read_array(path, "preds")
    if preds.shape == (2, 16, n_people) and n_people != 2:
        preds = preds.transpose(2, 1, 0)
    if preds.shape != (n_people, 16, 2):
        raise DnasError(f"{path}: preds has shape {preds.shape}, expected ({n_people}, 16, 2) "
                        f"or (2, 16, {n_people}) to match the ground truth")  # fmt: skip
    return preds


@click.group("pose")
def pose() -> None:
    """Pose-estimation tools: score prediction files."""


@pose.command("pckh")
@click.option(
    "--gt",
    "gt_path",
    type=click.Path(path_type=Path),
    required=True,
    help="gt_valid.mat (HRNet head boxes) or valid.h5 (Newell, 'normalize').",
)
@click.option(
    "--preds",
    "preds_path",
    type=click.Path(path_type=Path),
    required=True,
    help=".mat or .h5 with 'preds', N x 16 x 2 or 2 x 16 x N, 1-based.",
)
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text")
def pckh(gt_path: Path, preds_path: Path, fmt: str) -> None:  # fmt: skip
    """MPII PCKh@0.5 per joint, Mean and Mean@0.1 (HRNet convention) of a prediction file."""
    gt, missing, heads = load_mpii_ground_truth(gt_path)
    preds = load_mpii_predictions(preds_path, len(gt))
    table = pckh_table(preds, gt, missing, heads)
    if fmt == "json":
        click.echo(json.dumps({key: round(table[key], 4) for key in TABLE_KEYS}))
    else:
        click.echo(format_table(table))


@pose.command("coco-ap")
@click.option(
    "--gt",
    "gt_path",
    type=click.Path(path_type=Path),
    required=True,
    help="COCO person-keypoints annotation json (ground truth).",
)
@click.option(
    "--results",
    "results_path",
    type=click.Path(path_type=Path),
    required=True,
    help="Keypoint results json in the official COCO results format.",
)
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text")
def coco_ap(gt_path: Path, results_path: Path, fmt: str) -> None:  # fmt: skip
    """COCO keypoint AP, AP50, AP75, APM, APL, AR of a results file (pycocotools COCOeval)."""
    from tasks.pose.coco import coco_keypoint_ap, format_coco_table

    stats = coco_keypoint_ap(gt_path, results_path)
    click.echo(json.dumps(stats) if fmt == "json" else format_coco_table(stats))


COMMANDS.register("pose")(pose)
