"""FNA parameter remapping from a (randomly initialised) torchvision MobileNetV2 checkpoint."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner
from conftest import TINY_SPACE, write_experiment

from dnas.checkpoint import save_atomic
from dnas.cli import cli
from dnas.errors import DnasError
from dnas.nn.network import Network
from dnas.nn.remap import map_conv, remap_into
from dnas.space.graph import load_space

MBV2 = [(1, 16, 1), (6, 24, 2), (6, 32, 3), (6, 64, 4), (6, 96, 3), (6, 160, 3), (6, 320, 1)]


def _bn(sd: dict, prefix: str, n: int) -> None:
    sd[f"{prefix}.weight"], sd[f"{prefix}.bias"] = torch.randn(n), torch.randn(n)
    sd[f"{prefix}.running_mean"], sd[f"{prefix}.running_var"] = torch.randn(n), torch.rand(n) + 0.5
    sd[f"{prefix}.num_batches_tracked"] = torch.tensor(7)


def torchvision_mobilenet_v2_state_dict() -> dict:
    """Random tensors under torchvision's mobilenet_v2 keys and shapes."""
    gen = torch.manual_seed(1234)
    assert gen is not None
    sd = {"features.0.0.weight": torch.randn(32, 3, 3, 3)}
    _bn(sd, "features.0.1", 32)
    cin, index = 32, 1
    for t, c, n in MBV2:
        for _ in range(n):
            hid, p = cin * t, f"features.{index}.conv"
            if t == 1:
                sd[f"{p}.0.0.weight"] = torch.randn(hid, 1, 3, 3)
                _bn(sd, f"{p}.0.1", hid)
                sd[f"{p}.1.weight"] = torch.randn(c, hid, 1, 1)
                _bn(sd, f"{p}.2", c)
            else:
                sd[f"{p}.0.0.weight"] = torch.randn(hid, cin, 1, 1)
                _bn(sd, f"{p}.0.1", hid)
                sd[f"{p}.1.0.weight"] = torch.randn(hid, 1, 3, 3)
                _bn(sd, f"{p}.1.1", hid)
                sd[f"{p}.2.weight"] = torch.randn(c, hid, 1, 1)
                _bn(sd, f"{p}.3", c)
            cin, index = c, index + 1
    sd["features.18.0.weight"] = torch.randn(1280, 320, 1, 1)
    _bn(sd, "features.18.1", 1280)
    sd["classifier.1.weight"], sd["classifier.1.bias"] = torch.randn(1000, 1280), torch.randn(1000)
    return sd


@pytest.fixture()
def seed(tmp_path):
    sd = torchvision_mobilenet_v2_state_dict()
    path = tmp_path / "mobilenet_v2.pth"
    save_atomic(sd, path)
    return sd, path


def test_kernel_centre_embedding_and_crop():
    w = torch.arange(2 * 1 * 3 * 3, dtype=torch.float32).reshape(2, 1, 3, 3)
    big = map_conv(w, torch.Size([2, 1, 7, 7]))
    assert torch.equal(big[:, :, 2:5, 2:5], w) and float(big.abs().sum()) == float(w.abs().sum())
    assert torch.equal(map_conv(w, torch.Size([2, 1, 1, 1])), w[:, :, 1:2, 1:2])
    wider = map_conv(torch.randn(4, 2, 1, 1), torch.Size([6, 3, 1, 1]))
    assert torch.equal(wider[4:], wider[:2]) and torch.equal(wider[:, 2], wider[:, 0])


def test_derived_net_tensors_are_mapped_exactly(seed):
    sd, path = seed
    net = Network(load_space("efficientpose-a"), 16)
    report = remap_into(net, path)
    b = net.blocks
    # stem: features.0 and features.1 (16 channels, same as the seed)
    assert torch.equal(b["stem_0"][0].weight, sd["features.0.0.weight"])
    assert torch.equal(b["stem_1"].body[1][0].weight, sd["features.1.conv.1.weight"])
    # stage1.0 = k3e6 16 -> 24: features.2 exactly
    assert torch.equal(b["stage1_0"].body[0][0].weight, sd["features.2.conv.0.0.weight"])
    assert torch.equal(b["stage1_0"].body[1][0].weight, sd["features.2.conv.1.0.weight"])
    assert torch.equal(b["stage1_0"].body[1][1].running_var, sd["features.2.conv.1.1.running_var"])
    # stage1.1 = k7e3 (hidden 72) from features.3 (hidden 144): first 72 channels, 3x3 at centre
    dw = b["stage1_1"].body[1][0].weight
    assert dw.shape == (72, 1, 7, 7)
    assert torch.equal(dw[:, :, 2:5, 2:5], sd["features.3.conv.1.0.weight"][:72])
    assert float(dw[:, :, 0].detach().abs().sum()) == 0.0
    assert torch.equal(b["stage1_1"].body[2][0].weight, sd["features.3.conv.2.weight"][:, :72])
    # depth: stage1 has 4 layers, the seed's 24-channel stage 2; layers 2 and 3 read features.3
    assert torch.equal(b["stage1_3"].body[0][0].weight, sd["features.3.conv.0.0.weight"][:72])
    # stage4.0 (96 channels, from 64) reads features.11
    assert torch.equal(b["stage4_0"].body[2][1].bias, sd["features.11.conv.3.bias"])
    assert len(report) == 1 + 2 + 3 * 26  # stem conv, stem.1's 2 units, 3 units x 26 MBConvs


def test_super_net_candidates_read_the_same_seed_layer(seed):
    sd, path = seed
    net = Network(load_space("mbv2_pose_small"), 16)
    remap_into(net, path)
    mixed = net.blocks["stage2_1"]  # 32 -> 32, seed features.5
    for name, op in zip(mixed.names, mixed.ops, strict=True):
        if name == "skip":
            continue
        e, k = int(name[3]), int(name[1])
        hidden = 32 * e
        dw = op.body[1][0].weight
        off = (k - 3) // 2
        assert torch.equal(dw[:, :, off : off + 3, off : off + 3],
                           sd["features.5.conv.1.0.weight"][:hidden]), name  # fmt: skip


def test_cli_and_errors(seed, tmp_path, real_mpii_root):
    _, path = seed
    exp = write_experiment(tmp_path / "exp.yaml", real_mpii_root, space="mbv2_pose_small")
    result = CliRunner().invoke(
        cli,
        [
            "train",
            str(exp),
            "--arch",
            "efficientpose-a",
            "--out",
            str(tmp_path / "t"),
            "--remap-from",
            str(path),
            "--set",
            "train.epochs=1",
            "--set",
            "train.eval_every=5",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "remapped 81 convolutions" in result.output
    bad = tmp_path / "bad.pth"
    save_atomic({"features.0.0.weight": torch.zeros(1)}, bad)
    with pytest.raises(DnasError, match="not a torchvision MobileNetV2 state_dict"):
        remap_into(Network(load_space(TINY_SPACE), 16), bad)
