"""Runtimes a latency table is measured in: eager PyTorch and ONNX Runtime run the same
function, and a table records (and is checked for) the runtime it was built in."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import TINY_SPACE

from cost_models.latency import LatencyCostModel, LatencyOptions
from cost_models.runtimes import OnnxRuntime, TorchEager, get_runtime
from dnas.cli import cli
from dnas.errors import DnasError
from dnas.nn.heads import build_head
from dnas.nn.network import Network
from dnas.nn.profile import _HeadOnInputs
from dnas.space.graph import load_space
from dnas.space.ops import build_op, parse_op

CPU = torch.device("cpu")


@pytest.mark.parametrize("op", ["k5e6", "skip", "conv3"])
def test_onnxruntime_runs_the_same_op_as_eager_pytorch(op):
    torch.manual_seed(0)
    module = build_op(parse_op(op), 8, 8, 2 if op != "skip" else 1).eval()
    for bn in module.modules():  # non-trivial statistics, so folding them is tested
        if isinstance(bn, torch.nn.BatchNorm2d):
            bn.running_mean.uniform_(-1, 1)
            bn.running_var.uniform_(0.5, 2)
    x = torch.randn(2, 8, 16, 16)
    eager = TorchEager(CPU, 1).prepare(module, [x])()
    [ort] = OnnxRuntime(CPU, 1).prepare(module, [x])()
    np.testing.assert_allclose(ort, eager.numpy(), rtol=1e-4, atol=1e-4)


def test_onnxruntime_runs_a_multi_input_head():
    import tasks.segmentation  # noqa: F401  (fpn_lite)
    from dnas.space.graph import space_from_dict

    data = load_space(TINY_SPACE).to_dict()
    data["head"] = {"type": "fpn_lite", "inputs": ["stage2", "stage3"], "width": 8}
    space = space_from_dict(data, source="<test>")
    shapes = space.infer_shapes(64, 64)
    head = _HeadOnInputs(build_head(space, 4)).eval()
    feats = [torch.randn(1, *shapes[n]) for n in space.head_inputs()]
    [ort] = OnnxRuntime(CPU, 1).prepare(head, feats)()
    np.testing.assert_allclose(ort, TorchEager(CPU, 1).prepare(head, feats)().numpy(),
                               rtol=1e-4, atol=1e-4)  # fmt: skip


def test_runtime_errors_are_one_line():
    with pytest.raises(DnasError, match=r"unknown runtime 'tvm' \(registered: onnxruntime, torch"):
        get_runtime("tvm", CPU, 1)
    with pytest.raises(DnasError, match="--runtime torch: runs on cpu, cuda, not mps"):
        get_runtime("torch", torch.device("mps"), 1)
    with pytest.raises(DnasError, match="--runtime onnxruntime: runs on cpu, not cuda"):
        get_runtime("onnxruntime", torch.device("cuda"), 1)


def test_an_onnxruntime_table_builds_checks_and_predicts_the_exported_net(tmp_path, monkeypatch):
    prepared = []  # (runtime, module class, first input's shape) of every session or forward

    def recording(runtime):
        original = runtime.prepare

        def prepare(self, module, inputs):
            prepared.append((runtime.name, type(module).__name__, tuple(inputs[0].shape)))
            return original(self, module, inputs)

        return prepare

    for runtime in (OnnxRuntime, TorchEager):
        monkeypatch.setattr(runtime, "prepare", recording(runtime))
    table = tmp_path / "ort.json"
    quick = ["--min-time", "0.01", "--rounds", "1", "--allow-noise", "--in-process"]
    result = CliRunner().invoke(cli, ["lut", "build", "--space", str(TINY_SPACE), "--input",
                                      "64x64", "--runtime", "onnxruntime", "--calibration", "8",
                                      *quick, "-o", str(table)])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "onnxruntime batch 1, cpu" in result.output
    assert {r for r, _, _ in prepared} == {"onnxruntime"}  # every op and net timed in ORT
    assert {"Network", "_HeadOnInputs"} <= {m for _, m, _ in prepared}
    built = json.loads(table.read_text())
    assert built["meta"]["runtime"] == "onnxruntime" and built["meta"]["runtime_version"]
    prepared.clear()
    check = CliRunner().invoke(cli, ["lut", "check", "--table", str(table), "--runtime",
                                     "onnxruntime", "--samples", "4", *quick, "--format",
                                     "json"])  # fmt: skip
    assert check.exit_code == 0, check.output
    # the check times whole exported networks in ORT, nothing else and nothing in eager
    assert set(prepared) == {("onnxruntime", "Network", (1, 3, 64, 64))}
    report = json.loads(check.stdout)  # progress lines go to stderr
    assert report["runtime"] == "onnxruntime" and len(report["rows"]) == 4
    rows = report["rows"]
    assert all(r["predicted_ms"] > 0 and r["measured_ms"] > 0 for r in rows)
    # a sub-millisecond net timed once on a shared CPU moves 2-10x (measured under load), so
    # this bound only catches a mix-up of units or of what is timed (op entries in seconds, a
    # session per op summed over a net's hundreds); the table's fidelity in ORT is measured by
    # benchmarks/lut_fidelity.py --runtime onnxruntime (docs/benchmarks.md)
    ratio = np.median([r["predicted_ms"] / r["measured_ms"] for r in rows])
    assert 1 / 20 < ratio < 20
    space = load_space(TINY_SPACE)
    options = LatencyOptions(str(table), runtime="onnxruntime", batch=1, device="cpu")
    LatencyCostModel(options).table(space, (64, 64), 16)
    with pytest.raises(DnasError, match=r"runtime torch \(table has onnxruntime\)"):
        LatencyCostModel(LatencyOptions(str(table), runtime="torch")).table(space, (64, 64), 16)
    net = Network(space.with_choices({lay.name: lay.candidates[0]
                                      for lay in space.searchable_layers}), 16)  # fmt: skip
    [out] = OnnxRuntime(CPU, 1).prepare(net, [torch.zeros(1, 3, 64, 64)])()
    assert out.shape == (1, 16, 16, 16)


def test_onnxruntime_preparations_are_reused_across_rounds_eager_ones_are_not():
    from cost_models.latency_build import Bench

    calls = []

    def prepare():
        calls.append(1)
        return lambda: None

    job = Bench(OnnxRuntime(CPU, 1)).job(prepare)
    job(), job(), job()
    assert len(calls) == 1  # one export and session for all rounds
    job = Bench(TorchEager(CPU, 1)).job(prepare)
    job(), job()
    assert len(calls) == 3  # eager modules and inputs are made afresh (no tensors held)
