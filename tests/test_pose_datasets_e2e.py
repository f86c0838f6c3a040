"""COCO and LSP through the experiment YAML and the CLI: train, eval, and file scoring."""

from __future__ import annotations

import json

import numpy as np
import scipy.io
import yaml
from click.testing import CliRunner
from conftest import DATA, TINY_SPACE, need

from dnas.cli import cli

TINY_ARCH = TINY_SPACE.with_name("tiny_arch.yaml")


def invoke(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


def train_and_eval(tmp_path, task: dict, input_size: list[int]) -> dict:
    """Train the tiny fixed net one step with ``task``, evaluate it, return results.json."""
    exp = {
        "task": task,
        "input_size": input_size,
        "device": "cpu",
        "train": {"epochs": 1, "batch_size": 4, "steps_per_epoch": 1, "eval_every": 5},
    }
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(exp))  # fmt: skip
    invoke("train", path, "--arch", TINY_ARCH, "--out", tmp_path / "train")
    invoke("eval", path, "--arch", TINY_ARCH, "--weights", tmp_path / "train" / "model.pt",
           "--out", tmp_path / "eval")  # fmt: skip
    return json.loads((tmp_path / "eval" / "results.json").read_text())


def test_coco_train_eval_and_coco_ap(tmp_path):
    root = need(DATA / "coco-mini")
    results = train_and_eval(tmp_path, {"name": "pose", "dataset": "coco", "root": str(root)},
                             [64, 48])  # fmt: skip
    assert {"AP", "AP50", "AP75", "APM", "APL", "AR"} <= set(results)
    assert 0.0 <= results["AP"] <= 1.0 and results["primary_metric"] == "AP"
    written = tmp_path / "eval" / "keypoints_val2017_results.json"
    assert written.exists()
    gt = root / "annotations" / "person_keypoints_val2017.json"
    again = json.loads(invoke("pose", "coco-ap", "--gt", gt, "--results", written, "--format",
                              "json"))  # fmt: skip
    assert again["AP"] == results["AP"]
    # ground truth written as results scores AP 1.0 through the CLI
    anns = json.loads(gt.read_text())["annotations"]
    perfect = [
        {"image_id": a["image_id"], "category_id": 1, "keypoints": a["keypoints"], "score": 1.0}
        for a in anns
        if a["num_keypoints"] > 0 and not a["iscrowd"]
    ]
    (tmp_path / "gt_results.json").write_text(json.dumps(perfect))
    table = invoke("pose", "coco-ap", "--gt", gt, "--results", tmp_path / "gt_results.json")
    assert "1.000" in table


def test_lsp_train_eval(tmp_path):
    root = need(DATA / "lspet")
    task = {"name": "pose", "dataset": "lsp", "root": str(root),
            "dataset_options": {"train_range": [0, 8], "val_range": [1800, 1816]}}  # fmt: skip
    results = train_and_eval(tmp_path, task, [64, 64])
    assert {"Head", "Wrist", "Mean"} <= set(results) and results["primary_metric"] == "Mean"
    preds = tmp_path / "eval" / "pred_lsp.mat"
    assert scipy.io.loadmat(preds)["preds"].shape == (16, 14, 2)
    assert np.isfinite(results["Mean"])
