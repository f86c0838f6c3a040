"""Baselines and head variants through the same builder (paper Tables 2-3, 6-8)."""

from __future__ import annotations

import pytest
import torch
import yaml
from click.testing import CliRunner

from dnas.cli import cli
from dnas.errors import ConfigError
from dnas.nn.network import Network
from dnas.nn.profile import count_params
from dnas.space.graph import load_space
from dnas.space.ops import Bottleneck, parse_op


def cost(ref: str, *args: str) -> dict:
    result = CliRunner().invoke(cli, ["cost", ref, "--format", "json", *args])
    assert result.exit_code == 0, result.output
    return yaml.safe_load(result.output)


def test_simplebaseline_r50_has_the_published_size():
    report = cost("simplebaseline-r50", "--input-size", "256x192", "--joints", "17")
    assert report["params"] == 33_999_697  # SimpleBaseline: 34.0M
    assert report["backbone_params"] == 23_508_032  # torchvision ResNet-50 without its fc
    net = Network(load_space("simplebaseline-r50"), 17).eval()
    with torch.no_grad():
        assert net(torch.zeros(1, 3, 256, 192)).shape == (1, 17, 64, 48)


def test_mobilenetv2_baseline_size():
    report = cost("mobilenetv2")
    assert report["params"] == 1_535_408  # the paper's 1.5M
    assert report["macs"] == 553_664_512


def test_bottleneck_projects_only_when_the_shape_changes():
    torch.manual_seed(0)
    same, down = Bottleneck(64, 64, 3, 1), Bottleneck(64, 128, 3, 2)
    assert isinstance(same.shortcut, torch.nn.Identity)
    assert isinstance(down.shortcut, torch.nn.Sequential)
    assert down(torch.randn(1, 64, 8, 8)).shape == (1, 128, 4, 4)
    assert count_params(same) == 64 * 16 + 16 * 16 * 9 + 16 * 64 + 2 * (16 + 16 + 64)
    assert parse_op("res3").kind == "res" and parse_op("maxpool3").kind == "maxpool"


def test_op_shape_rules_are_validated(tmp_path):
    data = load_space("simplebaseline-r50").to_dict()
    data["stem"][1]["width"] = 32  # maxpool cannot change 64 -> 32 channels
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=r"stem\[1\].op: 'maxpool3' on layer stem.1 keeps the"):
        load_space(path)
    data = load_space("simplebaseline-r50").to_dict()
    data["stages"][0]["width"] = 258
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=r"'res3' on layer stage1.0 needs a width divisible by 4"):
        load_space(path)


@pytest.mark.parametrize(
    ("head", "check"),
    [
        ({"sic": False}, lambda a, b: a["head_params"] - b["head_params"] == 32 * 9),
        ({"deconv_widths": [96, 96]}, lambda a, b: b["head_macs"] > a["head_macs"]),
        ({"upsample": "separable"}, lambda a, b: b["head_macs"] < a["head_macs"] / 2),
    ],
)
def test_head_variants_from_yaml(tmp_path, head, check):
    base = load_space("efficientpose-a").to_dict()
    variant = yaml.safe_load(yaml.safe_dump(base))
    variant["head"].update(head)
    path = tmp_path / "variant.yaml"
    path.write_text(yaml.safe_dump(variant))
    a, b = cost("efficientpose-a"), cost(str(path))
    assert a["backbone_macs"] == b["backbone_macs"]
    assert check(a, b)
    net = Network(load_space(path), 16).eval()
    with torch.no_grad():
        assert net(torch.zeros(1, 3, 64, 64)).shape == (1, 16, 16, 16)
