"""dnas export: batch norm folded, ONNX Runtime output equals PyTorch's (max abs diff < 1e-4)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import torch
from click.testing import CliRunner

from dnas.checkpoint import save_atomic
from dnas.cli import cli
from dnas.nn.export import fold_batchnorm
from dnas.nn.network import Network
from dnas.space.graph import load_space


def trained_like(name: str, outputs: int) -> Network:
    """A net with non-trivial BN statistics and affine parameters, as after training."""
    torch.manual_seed(0)
    net = Network(load_space(name), outputs)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return net.eval()


def test_folding_keeps_the_function():
    net = trained_like("efficientpose-a", 16)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = net(x)
        folded = fold_batchnorm(net)
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
        torch.testing.assert_close(folded(x), ref, atol=1e-5, rtol=1e-5)


def test_cli_export_matches_onnx_runtime(tmp_path):
    net = trained_like("efficientpose-a", 17)
    save_atomic(net.state_dict(), tmp_path / "w.pt")
    out = tmp_path / "net.onnx"
    result = CliRunner().invoke(cli, ["export", "--arch", "efficientpose-a", "--weights",
                                      str(tmp_path / "w.pt"), "-o", str(out), "--input-size",
                                      "128x96"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "17 outputs" in result.output
    graph = onnx.load(str(out)).graph
    assert not [n for n in graph.node if n.op_type == "BatchNormalization"]
    x = torch.randn(3, 3, 128, 96)  # a batch of 3: the batch axis is dynamic
    with torch.no_grad():
        ref = net(x).numpy()
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = session.run(None, {"input": x.numpy()})[0]
    assert got.shape == (3, 17, 32, 24)
    assert float(np.abs(got - ref).max()) < 1e-4


def test_an_fpn_lite_export_names_its_output_size(tmp_path):
    """The exporter leaves a resize-to-another-tensor's axes unnamed; the file states them."""
    import tasks.segmentation  # noqa: F401  (fpn_lite)
    from dnas.nn.export import export_onnx
    from dnas.space.graph import space_from_dict

    data = load_space("efficientpose-a").to_dict()
    data["head"] = {"type": "fpn_lite", "inputs": ["stage2", "stage4"], "width": 8}
    net = Network(space_from_dict(data, source="<test>"), 3).eval()
    path = export_onnx(net, (64, 96), tmp_path / "seg.onnx")
    dims = onnx.load(str(path)).graph.output[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch" and [d.dim_value for d in dims[1:]] == [3, 8, 12]
    got = ort.InferenceSession(str(path)).run(None, {"input": np.zeros((2, 3, 64, 96), "f4")})
    assert got[0].shape == (2, 3, 8, 12)
