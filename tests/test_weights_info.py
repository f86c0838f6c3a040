"""Trained weights carry what they are (architecture, input size, outputs, preprocessing):
eval, export and predict use it when not told, and refuse a mismatch in one line naming both
values; model.pt stays a plain state_dict and the ONNX file records the same."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from conftest import write_experiment

from dnas.cli import cli
from dnas.nn.network import Network
from dnas.nn.weights import weights_info
from dnas.space.graph import load_space
from tasks.pose.synth import write_synthetic_mpii

ARCH = str(Path(__file__).parent / "data" / "tiny_arch.yaml")


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("weights")
    write_synthetic_mpii(root / "data", n_train=16, n_val=4, seed=0, image_size=64)
    exp = write_experiment(root / "exp.yaml", root / "data", train={"epochs": 1})
    result = CliRunner().invoke(cli, ["train", str(exp), "--arch", ARCH, "-o", str(root / "t")])
    assert result.exit_code == 0, result.output
    return exp, root / "t" / "model.pt"


def test_model_pt_is_a_state_dict_that_says_what_it_is(trained):
    _, weights = trained
    net = Network(load_space(ARCH), 16)
    net.load_state_dict(torch.load(weights, weights_only=True))  # as any PyTorch user would
    info = weights_info(weights)
    assert info["arch"]["name"] == "tiny-arch" and info["input_size"] == [64, 64]
    assert info["num_outputs"] == 16 and info["task"] == "pose"
    assert info["preprocess"]["mean"] == pytest.approx([0.485, 0.456, 0.406])
    best = weights_info(weights.parent / "best.pt")  # a training checkpoint tells the same
    assert best["arch"] == info["arch"] and best["input_size"] == [64, 64]


def test_eval_uses_the_recorded_architecture_and_refuses_another_size(trained, tmp_path):
    exp, weights = trained
    runner = CliRunner()
    ok = runner.invoke(
        cli, ["eval", str(exp), "--weights", str(weights), "-o", str(tmp_path / "e")]
    )
    assert ok.exit_code == 0, ok.output
    assert (tmp_path / "e" / "arch.yaml").exists() and "tiny-arch" in ok.output
    big = runner.invoke(cli, ["eval", str(exp), "--weights", str(weights), "-o",
                              str(tmp_path / "e2"), "--set", "input_size=[128, 128]"])  # fmt: skip
    assert big.exit_code == 1 and big.output.strip().count("\n") == 0
    assert "trained with input size 64x64, not 128x128" in big.output
    other = runner.invoke(cli, ["eval", str(exp), "--weights", str(weights), "--arch",
                                "efficientpose-a", "-o", str(tmp_path / "e3")])  # fmt: skip
    assert other.exit_code == 1
    assert "architecture 'tiny-arch', not 'efficientpose-a'" in other.output


def test_export_records_the_net_in_the_onnx_metadata(trained, tmp_path):
    _, weights = trained
    runner = CliRunner()
    out = tmp_path / "net.onnx"
    done = runner.invoke(cli, ["export", "--weights", str(weights), "-o", str(out)])
    assert done.exit_code == 0, done.output
    assert "16 outputs at 64x64" in done.output
    model = onnx.load(str(out))
    props = {p.key: p.value for p in model.metadata_props}
    assert props["dnas.architecture"] == "tiny-arch" and props["dnas.input_size"] == "64x64"
    assert props["dnas.num_outputs"] == "16" and '"mean"' in props["dnas.preprocess"]
    outputs = json.loads(props["dnas.outputs"])  # what a deployer needs to read the maps
    assert outputs["dataset"] == "mpii" and len(outputs["joint_names"]) == 16
    assert outputs["heatmap_stride"] == 4
    arch = tmp_path / "from_onnx.yaml"  # the recorded architecture rebuilds and costs the net
    arch.write_text(props["dnas.arch"])
    assert runner.invoke(cli, ["cost", str(arch), "--input-size", "64x64"]).exit_code == 0
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim[1:]]
    assert dims == [3, 64, 64]
    wrong = runner.invoke(cli, ["export", "--weights", str(weights), "-o",
                                str(tmp_path / "x.onnx"), "--input-size", "128x128"])  # fmt: skip
    assert wrong.exit_code == 1 and "input size 64x64, not 128x128" in wrong.output


def test_predict_needs_no_arch_and_refuses_another_joint_set(trained, tmp_path):
    _, weights = trained
    image = tmp_path / "p.jpg"
    cv2.imwrite(str(image), np.full((80, 60, 3), 128, np.uint8))
    runner = CliRunner()
    done = runner.invoke(cli, ["predict", str(image), "--weights", str(weights), "-o",
                               str(tmp_path / "p.png")])  # fmt: skip
    assert done.exit_code == 0, done.output
    keypoints = json.loads(done.output.strip().splitlines()[-1])["keypoints"]
    assert len(keypoints) == 16 and all({"drawn", "in_image"} <= k.keys() for k in keypoints)
    every = runner.invoke(cli, ["predict", str(image), "--weights", str(weights), "-o",
                                str(tmp_path / "all.png"), "--min-score", "0"])  # fmt: skip
    listed = json.loads(every.output.strip().splitlines()[-1])["keypoints"]
    for k in keypoints:  # the threshold decides (scores in the JSON are rounded to 1e-4)
        assert k["drawn"] == (k["score"] >= 0.2) or abs(k["score"] - 0.2) < 1e-4
    assert sum(k["drawn"] for k in listed) >= sum(k["drawn"] for k in keypoints)
    assert all(k["drawn"] == (k["score"] >= 0) or abs(k["score"]) < 1e-4 for k in listed)
    assert all(k["in_image"] == (0 <= k["x"] < 60 and 0 <= k["y"] < 80) for k in listed)
    coco = runner.invoke(cli, ["predict", str(image), "--weights", str(weights), "--dataset",
                               "coco", "-o", str(tmp_path / "c.png")])  # fmt: skip
    assert coco.exit_code == 1 and "outputs 16, not 17" in coco.output
    outside = runner.invoke(cli, ["predict", str(image), "--weights", str(weights), "--box",
                                  "70,10,20,20", "-o", str(tmp_path / "o.png")])  # fmt: skip
    assert outside.exit_code == 1 and "the box lies outside the 60x80 image" in outside.output
