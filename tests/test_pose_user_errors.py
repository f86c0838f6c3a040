"""User mistakes with the pose commands are one-line errors naming the option or key, the file
and what was expected: a --box off the image, a folder or the wrong JSON given as a file to
score, an empty results list, a heatmap stride the head does not give."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest
import scipy.io
import torch
from click.testing import CliRunner
from conftest import TINY_ARCH, write_experiment

from dnas.checkpoint import save_atomic
from dnas.cli import cli
from dnas.nn.network import Network
from dnas.nn.weights import with_info
from dnas.space.graph import load_space

COCO_JOINTS = 17


def one_line_error(args: list, *parts: str) -> str:
    """Run the CLI; it must fail with exit code 1 and one line holding every part."""
    result = CliRunner().invoke(cli, [str(a) for a in args])
    lines = result.output.strip().splitlines()
    assert result.exit_code == 1 and len(lines) == 1, result.output
    assert all(part in lines[0] for part in parts), lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def bare_weights(tmp_path_factory) -> Path:
    """Untrained tiny-arch weights (16 joints) with no metadata: --arch and --input-size say."""
    path = tmp_path_factory.mktemp("weights") / "w.pt"
    save_atomic(Network(load_space(TINY_ARCH), 16).state_dict(), path)
    return path


# ---------------------------------------------------------------- predict --box


def predict(image: Path, weights: Path, out: Path, box: str) -> list:
    return ["predict", image, "--arch", TINY_ARCH, "--weights", weights, "--input-size",
            "64x64", "-o", out, "--box", box]  # fmt: skip


@pytest.fixture
def photo(tmp_path) -> Path:
    path = tmp_path / "photo.jpg"
    cv2.imwrite(str(path), np.full((72, 128, 3), 100, np.uint8))  # 128 wide, 72 high
    return path


@pytest.mark.parametrize("box", ["1,1,500,500", "-200,10,250,20", "130,0,10,10"])
def test_predict_refuses_a_box_whose_centre_is_off_the_image(photo, bare_weights, tmp_path, box):
    """The crop is centred on the box: a centre off the image gives keypoints off it too
    (once: accepted, every keypoint outside). A box wholly outside is the same mistake."""
    out = tmp_path / "p.png"
    one_line_error(predict(photo, bare_weights, out, box), "Invalid value for '--box'",
                   f"{box}: its centre", "lies outside the 128x72 image",
                   "expected x,y,w,h of the person in the image")  # fmt: skip
    assert not out.exists()


def test_predict_takes_a_box_running_past_the_border(photo, bare_weights, tmp_path):
    """As MPII's people cut off by the border: the crop pads what lies outside."""
    out = tmp_path / "p.png"
    result = CliRunner().invoke(cli, [str(a) for a in predict(photo, bare_weights, out,
                                                              "90,20,60,80")])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["box"] == [90, 20, 60, 80] and out.is_file()


# ---------------------------------------------------------------- pose pckh


def test_pckh_names_the_file_in_a_folder_given_as_ground_truth(tmp_path):
    annot = tmp_path / "annot"
    annot.mkdir()
    preds = tmp_path / "pred.h5"
    with h5py.File(preds, "w") as f:
        f.create_dataset("preds", data=np.zeros((1, 16, 2)))
    one_line_error(["pose", "pckh", "--gt", annot, "--preds", preds],
                   f"{annot}: a folder; expected the ground-truth file itself: gt_valid.mat or "
                   "valid.h5 (none in it)")  # fmt: skip
    scipy.io.savemat(annot / "gt_valid.mat", {"pos_gt_src": np.ones((16, 2, 1)),
                                              "jnt_missing": np.zeros((16, 1)),
                                              "headboxes_src": np.ones((2, 2, 1))})  # fmt: skip
    one_line_error(["pose", "pckh", "--gt", annot, "--preds", preds],
                   f"{annot}: a folder; expected the ground-truth file itself: "
                   f"{annot / 'gt_valid.mat'}")  # fmt: skip
    one_line_error(
        ["pose", "pckh", "--gt", annot / "gt_valid.mat", "--preds", tmp_path],
        f"{tmp_path}: a folder; expected the prediction file itself: pred.mat",
    )
    one_line_error(
        ["pose", "pckh", "--gt", annot / "none.mat", "--preds", preds],
        f"{annot / 'none.mat'}: no such ground-truth file",
    )


# ---------------------------------------------------------------- pose coco-ap


@pytest.fixture
def coco_gt(tmp_path) -> Path:
    """One image with one annotated person (all 17 joints visible)."""
    keypoints = [v for j in range(COCO_JOINTS) for v in (20 + 3 * j, 30 + 2 * j, 2)]
    data = {
        "images": [{"id": 1, "file_name": "a.jpg", "width": 100, "height": 100}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "iscrowd": 0,
                         "bbox": [10, 20, 60, 70], "area": 4200.0, "keypoints": keypoints,
                         "num_keypoints": COCO_JOINTS}],
        "categories": [{"id": 1, "name": "person"}],
    }  # fmt: skip
    path = tmp_path / "person_keypoints_val2017.json"
    path.write_text(json.dumps(data))
    return path


def coco_ap(gt: Path, results: Path) -> list:
    return ["pose", "coco-ap", "--gt", gt, "--results", results]


def test_coco_ap_scores_a_results_list(coco_gt, tmp_path):
    """The well-formed case the refusals below stand beside: ground truth as results, AP 1."""
    keypoints = json.loads(coco_gt.read_text())["annotations"][0]["keypoints"]
    results = tmp_path / "keypoints_val2017_results.json"
    results.write_text(json.dumps([{"image_id": 1, "category_id": 1, "keypoints": keypoints,
                                    "score": 1.0}]))  # fmt: skip
    done = CliRunner().invoke(cli, [*map(str, coco_ap(coco_gt, results)), "--format", "json"])
    assert done.exit_code == 0, done.output
    assert json.loads(done.output)["AP"] == pytest.approx(1.0)


def test_coco_ap_refuses_an_empty_results_list(coco_gt, tmp_path):
    """pycocotools' loadRes fails on [] (IndexError); once: AP 0.000, exit 0, no word."""
    empty = tmp_path / "empty.json"
    empty.write_text("[]")
    one_line_error(coco_ap(coco_gt, empty), f"{empty}: an empty list: no keypoint results to "
                   "score")  # fmt: skip


def test_coco_ap_names_the_results_file_beside_a_runs_metrics(coco_gt, tmp_path):
    """eval's results.json holds the metrics and lists the keypoint results it wrote."""
    metrics = tmp_path / "results.json"
    written = str(tmp_path / "keypoints_val2017_results.json")
    metrics.write_text(json.dumps({"AP": 0.5, "primary_metric": "AP",
                                   "files": {"results": written}}))  # fmt: skip
    one_line_error(coco_ap(coco_gt, metrics), f"{metrics}: the metrics dnas eval or train "
                   f"writes (results.json), not COCO keypoint results; pass the keypoint results "
                   f"it lists: {written}")  # fmt: skip
    metrics.write_text(json.dumps({"AP": 0.5, "primary_metric": "AP"}))  # a train run's
    one_line_error(coco_ap(coco_gt, metrics), "pass the keypoints_<split>_results.json that "
                   "dnas eval writes with a COCO experiment")  # fmt: skip


def test_coco_ap_names_the_files_in_a_folder(coco_gt, tmp_path):
    run = tmp_path / "eval"
    run.mkdir()
    one_line_error(coco_ap(coco_gt, run), f"{run}: a folder; expected the results file itself: "
                   "keypoints_*_results.json (none in it)")  # fmt: skip
    (run / "keypoints_val2017_results.json").write_text("[]")
    one_line_error(coco_ap(coco_gt, run), f"expected the results file itself: "
                   f"{run / 'keypoints_val2017_results.json'}")  # fmt: skip
    one_line_error(coco_ap(tmp_path, run), f"{tmp_path}: a folder; expected the ground-truth "
                   f"file itself: {coco_gt}")  # fmt: skip


def test_coco_ap_example_scores_the_file_eval_writes():
    """The help's example once passed eval's metrics (results.json) as the results."""
    text = CliRunner().invoke(cli, ["pose", "coco-ap", "--help"]).output
    assert "--results runs/eval/keypoints_val2017_results.json" in text
    assert "results.json\n" not in text.replace("_results.json", "")


# ---------------------------------------------------------------- task.heatmap_stride


def test_a_heatmap_stride_the_head_does_not_give_names_that_key(bare_weights, tmp_path):
    """The tiny net's head gives heatmaps at input / 4; once the error blamed input_size."""
    (tmp_path / "data").mkdir()
    exp = write_experiment(tmp_path / "exp.yaml", tmp_path / "data")
    for stride in (8, 2):
        for command in (
            ["train", exp, "--arch", TINY_ARCH],
            ["eval", exp, "--arch", TINY_ARCH, "--weights", bare_weights],
        ):
            one_line_error([*command, "-o", tmp_path / "out", "--set",
                            f"task.heatmap_stride={stride}"],
                           f"--set: task.heatmap_stride: {stride}: the head's output (16, 16, 16) "
                           f"is at input / 4 of the 64x64 input",
                           "set task.heatmap_stride: 4")  # fmt: skip
    assert not (tmp_path / "out").exists()


def test_an_input_size_the_strides_do_not_divide_names_both_keys(tmp_path):
    """Neither key alone: the message names input_size and the stride it was paired with."""
    (tmp_path / "data").mkdir()
    exp = write_experiment(tmp_path / "exp.yaml", tmp_path / "data")
    one_line_error(["train", exp, "--arch", TINY_ARCH, "-o", tmp_path / "out", "--set",
                    "input_size=[72, 72]", "--set", "task.heatmap_stride=8"],
                   "--set: input_size: 72x72: the head's output (16, 20, 20) does not match "
                   "the heatmap targets (16, 9, 9)", "task.heatmap_stride: 8")  # fmt: skip


def test_tiny_net_output_is_at_stride_four():
    """What the stride tests above rest on."""
    out = Network(load_space(TINY_ARCH), 16)(torch.zeros(1, 3, 64, 64))
    assert tuple(out.shape) == (1, 16, 16, 16)


# ---------------------------------------------------------------- weights of another task


@pytest.mark.parametrize("command", ["eval", "train"])
def test_eval_and_train_init_name_the_task_of_weights_trained_for_another(tmp_path, command):
    """As predict does ("segmentation weights"), not "trained with outputs 4, not 16" or a
    shape mismatch of the head's last convolution."""
    space = load_space(TINY_ARCH)
    info = {"arch": space.to_dict(), "input_size": [64, 64], "num_outputs": 4,
            "task": "segmentation", "preprocess": {}, "outputs": {}}  # fmt: skip
    weights = tmp_path / "seg.pt"
    save_atomic(with_info(Network(space, 4).state_dict(), info), weights)
    (tmp_path / "data").mkdir()
    exp = write_experiment(tmp_path / "exp.yaml", tmp_path / "data")
    args = {"eval": ["eval", exp, "--weights", weights],
            "train": ["train", exp, "--arch", TINY_ARCH, "--init", weights]}[command]  # fmt: skip
    one_line_error([*args, "-o", tmp_path / "out"],
                   "these weights were trained with task 'segmentation', not 'pose'")  # fmt: skip
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- split names


@pytest.mark.parametrize("command,key", [("search", "train_split"), ("train", "val_split")])
def test_a_split_without_its_file_names_the_split_key(synth_root, tmp_path, command, key):
    """Once only the missing file was named, not the key that chose it."""
    exp = write_experiment(tmp_path / "exp.yaml", synth_root)
    args = [command, exp, "-o", tmp_path / "out", "--set", f"task.{key}=training"]
    if command == "train":
        args += ["--arch", TINY_ARCH]
    wanted = synth_root / "annot" / "training.json"
    one_line_error(args, f"--set: task.{key}: 'training': {wanted}: cannot read")


# ---------------------------------------------------------------- damaged images


def test_a_truncated_training_jpeg_is_one_line_naming_it(tmp_path, synth_root):
    """OpenCV decodes a JPEG cut short with its missing part grey (libjpeg only prints a line
    of its own): training on it is refused, as PIL refuses to load one."""
    import shutil

    root = shutil.copytree(synth_root, tmp_path / "data")
    image = sorted((root / "images").glob("train_*.jpg"))[3]
    data = image.read_bytes()
    image.write_bytes(data[: len(data) // 2])
    exp = write_experiment(tmp_path / "exp.yaml", root, train={"steps_per_epoch": 20})
    result = CliRunner().invoke(cli, ["train", str(exp), "--arch", TINY_ARCH, "-o",
                                      str(tmp_path / "out")])  # fmt: skip
    assert result.exit_code == 1  # after the run's header line, at the image's first read
    assert result.output.splitlines()[-1] == (
        f"Error: {image}: a truncated JPEG (it ends before its end marker); replace the file or "
        "leave it out of the annotations")  # fmt: skip


def test_mpii_head_boxes_missing_or_of_another_size_are_refused_at_set_up(tmp_path, synth_root):
    """PCKh needs annot/gt_valid.mat: found missing at set-up, not at the first evaluation
    after hours of training; one of another split's size too."""
    import shutil

    root = shutil.copytree(synth_root, tmp_path / "data")
    heads = root / "annot" / "gt_valid.mat"
    kept = heads.read_bytes()
    heads.unlink()
    exp = write_experiment(tmp_path / "exp.yaml", root)
    args = ["train", exp, "--arch", TINY_ARCH, "-o", tmp_path / "out"]
    one_line_error(args, f"{heads}: missing; PCKh needs the head boxes of split 'valid'")
    assert not (tmp_path / "out").exists()
    heads.write_bytes(kept)
    valid = root / "annot" / "valid.json"
    valid.write_text(json.dumps(json.loads(valid.read_text())[:-1]))  # one person fewer
    one_line_error(args, f"{heads}: 4 people, but split 'valid' has 3")
    assert not (tmp_path / "out").exists()


def test_the_truncation_check_walks_the_markers(tmp_path):
    """Bytes after the end marker (a phone's trailer, here with a stray start-of-scan in it),
    progressive scans and restart markers are whole files; a file cut anywhere is not."""
    from dnas.vis.images import truncated_jpeg

    image = (np.random.default_rng(0).random((60, 80, 3)) * 255).astype(np.uint8)
    variants = {"baseline": [], "progressive": [cv2.IMWRITE_JPEG_PROGRESSIVE, 1],
                "restarts": [cv2.IMWRITE_JPEG_RST_INTERVAL, 2]}  # fmt: skip
    for name, params in variants.items():
        path = tmp_path / f"{name}.jpg"
        assert cv2.imwrite(str(path), image, params)
        data = path.read_bytes()
        assert not truncated_jpeg(path), name
        path.write_bytes(data + bytes(range(256)) * 20 + b"\xff\xda\x00\x08trailer")
        assert not truncated_jpeg(path), name
        for cut in (len(data) // 3, len(data) - 2):
            path.write_bytes(data[:cut])
            assert truncated_jpeg(path), (name, cut)
    (tmp_path / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    assert not truncated_jpeg(tmp_path / "a.png")  # not a JPEG: the decoder's to judge


def test_train_init_names_the_architecture_of_weights_of_another_net(tmp_path):
    """--init with another net's weights said torch's list of missing keys; they record their
    net, as eval and predict say."""
    other = load_space("efficientpose-a")
    info = {"arch": other.to_dict(), "input_size": [64, 64], "num_outputs": 16, "task": "pose",
            "preprocess": {}, "outputs": {}}  # fmt: skip
    weights = tmp_path / "a.pt"
    save_atomic(with_info(Network(other, 16).state_dict(), info), weights)
    (tmp_path / "data").mkdir()
    exp = write_experiment(tmp_path / "exp.yaml", tmp_path / "data")
    one_line_error(["train", exp, "--arch", TINY_ARCH, "--init", weights, "-o", tmp_path / "out"],
                   "these weights were trained with architecture 'efficientpose-a', not "
                   "'tiny-arch' (--init takes weights of the net it trains)")  # fmt: skip
    assert not (tmp_path / "out").exists()
