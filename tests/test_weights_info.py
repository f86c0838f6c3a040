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


def test_export_at_another_size_keeps_the_stride_and_warns(trained, tmp_path):
    """A fully convolutional net deploys at another input size (mmpose's export takes any
    shape); one whose strides would not divide it is refused in one line."""
    _, weights = trained
    runner = CliRunner()
    out = tmp_path / "big.onnx"
    done = runner.invoke(cli, ["export", "--weights", str(weights), "-o", str(out),
                               "--input-size", "128x96"])  # fmt: skip
    assert done.exit_code == 0, done.output
    assert "warning: " in done.output and "trained at 64x64, used here at 128x96" in done.output
    model = onnx.load(str(out))
    props = {p.key: p.value for p in model.metadata_props}
    assert props["dnas.input_size"] == "128x96"
    out_dims = [d.dim_value for d in model.graph.output[0].type.tensor_type.shape.dim[1:]]
    assert out_dims == [16, 32, 24]  # heatmap stride 4, as trained
    odd = runner.invoke(cli, ["export", "--weights", str(weights), "-o",
                              str(tmp_path / "x.onnx"), "--input-size", "100x100"])  # fmt: skip
    assert odd.exit_code == 1 and odd.output.strip().count("\n") == 0
    assert "input size 100x100: the net's output would be" in odd.output
    assert "not the input / 4 as at 64x64" in odd.output and not (tmp_path / "x.onnx").exists()


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
    assert outside.exit_code == 1 and "(80, 20) lies outside the 60x80 image" in outside.output


def test_predict_warns_on_a_truncated_jpeg_and_a_tiny_person(trained, tmp_path):
    """OpenCV decodes half a JPEG without a word (the rest grey), and a 1-pixel person gives
    keypoints all the same: predict says so in one warning line each."""
    _, weights = trained
    rng = np.random.default_rng(0)
    whole = cv2.imencode(".jpg", rng.integers(0, 255, (120, 90, 3), np.uint8))[1].tobytes()
    runner = CliRunner()

    def predict(image: Path, *extra: str) -> list[str]:
        out = tmp_path / f"{image.stem}.png"
        done = runner.invoke(cli, ["predict", str(image), "--weights", str(weights), "-o",
                                   str(out), "--force", *extra])  # fmt: skip
        assert done.exit_code == 0, done.output
        assert json.loads(done.output.strip().splitlines()[-1])["keypoints"]
        return [line for line in done.output.splitlines() if line.startswith("warning: ")]

    good = tmp_path / "good.jpg"
    good.write_bytes(whole)
    assert predict(good) == []
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(whole[: len(whole) // 2])
    [warning] = predict(cut)
    assert f"{cut}: the JPEG ends before its end marker" in warning
    [small] = predict(good, "--box", "10,10,4,3")
    assert "the person is 4x3 px, under 32 px along its longer side" in small
    tiny = tmp_path / "tiny.png"
    cv2.imwrite(str(tiny), np.full((1, 1, 3), 128, np.uint8))
    assert "the person is 1x1 px" in predict(tiny)[0]


def test_weights_whose_head_alone_differs_say_so(tmp_path):
    """A net trained with an experiment's own head (fpn_lite, other outputs) loaded into the
    shipped architecture: the one line says the head differs, not only torch's first key."""
    from dnas.checkpoint import save_atomic
    from dnas.errors import DnasError
    from dnas.nn.weights import load_weights

    space = load_space("efficientpose-a")
    save_atomic(Network(space, 4).state_dict(), tmp_path / "w.pt")
    with pytest.raises(DnasError) as info:
        load_weights(Network(space, 16), tmp_path / "w.pt")
    message = str(info.value)
    assert "size mismatch for head." in message and "; 1 more problem;" in message
    assert message.endswith(
        "only the head differs: they were trained with another head (an experiment's head: "
        "section); use the architecture they were trained as, e.g. the run's arch.yaml or none "
        "(the one they record)"
    )
    save_atomic({k: v for k, v in Network(space, 16).state_dict().items()
                 if not k.startswith("blocks.stem")}, tmp_path / "v.pt")  # fmt: skip
    with pytest.raises(DnasError, match="Missing key") as info:
        load_weights(Network(space, 16), tmp_path / "v.pt")
    assert "only the head" not in str(info.value)
