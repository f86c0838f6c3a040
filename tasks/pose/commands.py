"""The pose plugin's commands: ``dnas pose ...`` (score prediction files with the pose metrics,
outside any training run), ``dnas predict`` and ``dnas data synth-mpii``."""

from __future__ import annotations

import json
import math
from pathlib import Path

import click
import h5py
import numpy as np

from dnas.cli import SIZE, FiniteRange, example, out_opt
from dnas.errors import DnasError
from dnas.files import check_writable
from dnas.registry import COMMANDS, DATA_COMMANDS
from dnas.synthetic import already_there
from tasks.pose.pckh import TABLE_KEYS, format_table, load_gt_valid_mat, pckh_table, read_mat

MIN_PERSON_PX = 32  # predict warns below this: a person this small is a blur at any input size


def _read_array(path: Path, key: str) -> np.ndarray:
    """``key`` from a MATLAB (.mat) or HDF5 (.h5) file."""
    try:
        if path.suffix == ".h5":
            with h5py.File(path, "r") as f:
                if not isinstance(f.get(key), h5py.Dataset):
                    raise KeyError(key)  # absent, or a group
                array = np.asarray(f[key][()], np.float64)
        else:
            array = np.asarray(read_mat(path)[key], np.float64)
    except KeyError:
        raise DnasError(f"{path}: no {key!r} array") from None
    except (OSError, ValueError, TypeError) as exc:
        raise DnasError(f"{path}: cannot read ({exc})") from None
    if not np.isfinite(array).all():
        raise DnasError(f"{path}: {key} holds NaN or infinite values")
    return array


def input_file(path: Path, what: str, patterns: tuple[str, ...]) -> None:
    """A one-line error unless ``path`` is a file; for a folder (``annot/`` for the
    gt_valid.mat in it) it names the files there that match ``patterns``, else the patterns."""
    if path.is_file():
        return
    if not path.is_dir():
        raise DnasError(f"{path}: no such {what} file")
    found = sorted(str(f) for pattern in patterns for f in path.glob(pattern) if f.is_file())
    expected = " or ".join(found) if found else f"{' or '.join(patterns)} (none in it)"
    raise DnasError(f"{path}: a folder; expected the {what} file itself: {expected}")


def load_mpii_ground_truth(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(gt (N,16,2) 1-based, missing (N,16), head sizes (N,)) from HRNet's gt_valid.mat or
    Newell's valid.h5 (whose ``normalize`` is already 0.6 x the head-box diagonal)."""
    input_file(path, "ground-truth", ("gt_valid.mat", "valid.h5"))
    if path.suffix == ".h5":
        gt = _read_array(path, "part")
        heads = _read_array(path, "normalize").reshape(-1)
        if gt.ndim != 3 or gt.shape[1:] != (16, 2) or heads.shape != (len(gt),):
            raise DnasError(f"{path}: expected part (N, 16, 2) and normalize (N,), got "
                            f"{gt.shape} and {heads.shape}")  # fmt: skip
        if (heads <= 0).any():
            raise DnasError(f"{path}: normalize: every head size must be positive")
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
    input_file(path, "prediction", ("pred.mat",))
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


@pose.command(
    "pckh",
    epilog=example("dnas pose pckh --gt data/mpii/annot/gt_valid.mat --preds runs/eval/pred.mat"),
)
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


@pose.command(
    "coco-ap",
    epilog=example(
        "dnas pose coco-ap --gt person_keypoints_val2017.json "
        "--results runs/eval/keypoints_val2017_results.json"
    ),
)
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
    help="Keypoint results json in the official COCO results format (dnas eval writes "
    "keypoints_<split>_results.json).",
)
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text")
def coco_ap(gt_path: Path, results_path: Path, fmt: str) -> None:  # fmt: skip
    """COCO keypoint AP, AP50, AP75, APM, APL, AR of a results file (pycocotools COCOeval)."""
    from tasks.pose.coco import coco_keypoint_ap, format_coco_table

    input_file(gt_path, "ground-truth", ("person_keypoints_*.json",))
    input_file(results_path, "results", ("keypoints_*_results.json",))
    stats = coco_keypoint_ap(gt_path, results_path)
    click.echo(json.dumps(stats) if fmt == "json" else format_coco_table(stats))


def parse_box(ctx: click.Context, param: click.Parameter,
              text: str | None) -> tuple[float, float, float, float] | None:  # fmt: skip
    """``--box x,y,w,h``: finite pixels, positive width and height."""
    if text is None:
        return None
    try:
        x, y, w, h = (float(v) for v in text.split(","))
    except ValueError:
        raise click.BadParameter(f"expected x,y,w,h in pixels, got {text!r}") from None
    if not all(map(math.isfinite, (x, y, w, h))):
        raise click.BadParameter(f"expected finite numbers, got {text!r}")
    if w <= 0 or h <= 0:
        raise click.BadParameter(f"width and height must be positive, got {text!r}")
    return x, y, w, h


def check_box_centre(box: tuple[float, float, float, float], width: int, height: int) -> None:
    """The crop is centred on the box, so its centre must lie in the image: the box may run
    past the border (MPII's people cut off by it do; the crop pads, as HRNet's and mmpose's
    top-down crops do), but a centre outside leaves the net looking at padding."""
    x, y, w, h = box
    cx, cy = x + w / 2, y + h / 2
    if not (0 <= cx < width and 0 <= cy < height):
        raise click.BadParameter(
            f"{x:g},{y:g},{w:g},{h:g}: its centre ({cx:g}, {cy:g}) lies outside the "
            f"{width}x{height} image; expected x,y,w,h of the person in the image (the box may "
            "run past the border, its centre not; leave --box out for the whole image)",
            param_hint="'--box'",
        )


@click.command(
    "predict",
    epilog=example(
        "dnas predict photo.jpg --arch runs/arch.yaml --weights runs/train/model.pt -o pose.png",
        "dnas predict photo.jpg --arch efficientpose-a --weights a.pt --box 40,20,200,380",
    ),
)
@click.argument("image", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--arch", help="Architecture YAML or shipped name (default: the weights' own).")
@click.option("--weights", type=click.Path(path_type=Path), required=True,
              help="Weights file or train run directory (its model.pt).")  # fmt: skip
@click.option("--box", callback=parse_box,
              help="Person box x,y,w,h in pixels (default: the whole image).")  # fmt: skip
@click.option(
    "--dataset",
    help="The joint set the weights predict (a registered pose dataset; default: the one they "
    "were trained on, else mpii).",
)
@click.option("--input-size", type=SIZE, help="HxW of the crop (default: the weights' training "
              "size, else 256x256).")  # fmt: skip
@out_opt("output", file=True, required=False,
         help="PNG to write (default: IMAGE's name + _pose.png, here).")  # fmt: skip
@click.option("--no-flip", is_flag=True, help="Skip the flip test.")
@click.option("--min-score", type=FiniteRange(0.0), default=0.2, show_default=True,
              help="Draw joints whose heatmap peak is at least this (the JSON lists them all, "
              "each with 'drawn' and 'in_image').")  # fmt: skip
@click.option("--force", is_flag=True, help="Overwrite --out.")
def predict(image: Path, arch: str | None, weights: Path,
            box: tuple[float, float, float, float] | None, dataset: str | None,
            input_size: tuple[int, int] | None, output: Path | None, no_flip: bool,
            min_score: float, force: bool) -> None:  # fmt: skip
    """Predict one person's keypoints in IMAGE: writes the skeleton as a PNG, prints json."""
    from dnas.cli import guard_picture, warn_if_truncated
    from dnas.nn.network import Network
    from dnas.nn.weights import check_fits, load_weights, resolve, weights_file
    from dnas.task import check_weights_task
    from dnas.vis.images import legend, read_rgb, write_png
    from tasks.pose.draw import LEGEND, draw_box, draw_pose
    from tasks.pose.inference import predict_batch
    from tasks.pose.topdown import DATASETS, box_to_center_scale, to_input
    from tasks.pose.transforms import affine_transform, warp

    output = output or Path(f"{image.stem}_pose.png")
    guard_picture(output, force, "pose.png")
    weights = weights_file(weights)
    space, (height, width), info = resolve(weights, arch, input_size)
    check_weights_task(info, weights, "pose", "dnas predict draws pose keypoints")
    given = dataset
    dataset = dataset or (info or {}).get("outputs", {}).get("dataset", "mpii")
    try:
        cls = DATASETS.get(dataset)
    except DnasError as exc:
        if given is None:  # the weights' own: theirs to blame
            raise
        raise click.BadParameter(str(exc), param_hint="'--dataset'") from None
    check_fits(info, weights, "outputs", info and info.get("num_outputs"), cls.num_joints(),
               f" (the {dataset} joint set; pass the --dataset they were trained on)")  # fmt: skip
    net = Network(space, cls.num_joints())
    load_weights(net, weights)
    warn_if_truncated(image, "predicted on")
    picture = read_rgb(image, allow_truncated=True)  # warned about above
    h, w = picture.shape[:2]
    if box:
        check_box_centre(box, w, h)
    person = box or (0.0, 0.0, float(w), float(h))
    if max(person[2], person[3]) < MIN_PERSON_PX:
        click.echo(f"warning: {image}: the person is {person[2]:g}x{person[3]:g} px, under "
                   f"{MIN_PERSON_PX} px along its longer side; keypoints from so few pixels "
                   "are guesses", err=True)  # fmt: skip
    center, scale = box_to_center_scale(person, (width, height))
    crop = warp(picture, affine_transform(center, scale, 0.0, (width, height)), (width, height))
    preds, scores = predict_batch(net, to_input(crop)[None], center[None], scale[None],
                                  cls.flip_pairs, flip=not no_flip)  # fmt: skip
    shown = scores[0] >= min_score
    drawn = draw_pose(draw_box(picture, box) if box else picture, preds[0], shown,
                      cls.joint_names, cls.skeleton)  # fmt: skip
    write_png(output, np.concatenate([drawn, legend(LEGEND, drawn.shape[1])], axis=0))
    keypoints = [
        {"name": n, "x": round(float(x), 2), "y": round(float(y), 2), "score": round(float(s), 4),
         "drawn": bool(d), "in_image": bool(0 <= x < w and 0 <= y < h)}
        for n, (x, y), s, d in zip(cls.joint_names, preds[0], scores[0], shown, strict=True)
    ]  # fmt: skip
    click.echo(json.dumps({"image": str(image), "box": list(person), "output": str(output),
                           "keypoints": keypoints}))  # fmt: skip


COMMANDS.register("pose")(pose)
COMMANDS.register("predict")(predict)


@click.command(
    "synth-mpii", epilog=example("dnas data synth-mpii data/synth-mpii --train 3000 --val 300")
)
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--train", "n_train", type=click.IntRange(1), default=3000, show_default=True)
@click.option("--val", "n_val", type=click.IntRange(1), default=300, show_default=True)
@click.option("--seed", type=click.IntRange(0), default=0, show_default=True)
@click.option("--size", "image_size", type=click.IntRange(64, 4096), default=256,
              show_default=True, help="Image side in pixels.")  # fmt: skip
@click.option("--force", is_flag=True, help="Regenerate even if OUT holds a different set.")
def synth_mpii(out: Path, n_train: int, n_val: int, seed: int, image_size: int, force: bool):
    """Draw a synthetic pose dataset into OUT in the MPII (HRNet json) layout."""
    from tasks.pose.synth import write_synthetic_mpii

    check_writable(out / "synth.json")
    wanted = {"n_train": n_train, "n_val": n_val, "seed": seed, "image_size": image_size}
    if already_there(out, wanted, force, ["images", "annot"]):
        click.echo(f"{out}: synthetic MPII set already there (cached), nothing to do")
        return
    write_synthetic_mpii(out, n_train, n_val, seed, image_size)
    click.echo(f"wrote {n_train} train and {n_val} val images to {out} "
               "(annot/train.json, annot/valid.json, annot/gt_valid.mat, images/)")  # fmt: skip


DATA_COMMANDS.register("synth-mpii")(synth_mpii)
