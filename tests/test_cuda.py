"""The CUDA path, end to end on tiny inputs: a search step per strategy in each precision, a
training step, channels-last, ONNX parity of a net trained on the device, a torchrun search.

Marked ``cuda``: they run on the device that ``DNAS_CHECK_DEVICE`` names (default ``cuda``) and
are skipped where it is absent, so ``make test`` on a CPU machine skips them; ``make gpu-check``
runs them on a GPU, and ``benchmarks/gpu_check.sh --device cpu --quick`` runs them on the CPU to
test the check itself (on the tiny test space that ``DNAS_CHECK_SPACE`` names then).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner
from conftest import write_experiment

from dnas import checkpoint
from dnas.cli import cli
from dnas.config import load_experiment
from dnas.engine.train import run_train
from dnas.nn.network import Network
from dnas.search.cost_model import get_cost_model
from dnas.search.run import run_search
from dnas.space.graph import load_space
from tasks.pose.synth import write_synthetic_mpii

DEVICE = os.environ.get("DNAS_CHECK_DEVICE", "cuda")
pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(DEVICE == "cuda" and not torch.cuda.is_available(), reason="no CUDA"),
]
SPACE = os.environ.get("DNAS_CHECK_SPACE", "mbv2_pose_small")
ARCH = "efficientpose-a"


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth")
    write_synthetic_mpii(root, n_train=24, n_val=4, seed=0, image_size=64)
    return root


def experiment(tmp_path: Path, root: Path, **sections) -> Path:
    return write_experiment(tmp_path / "exp.yaml", root, SPACE, device=DEVICE, **sections)


@pytest.mark.parametrize(
    ("strategy", "precision", "channels_last"),
    [("darts", "fp32", False), ("darts", "bf16", True), ("gumbel", "bf16", True),
     ("binary_gates", "fp16", True), ("random", "fp32", False)],
)  # fmt: skip
def test_search_step(strategy, precision, channels_last, synth, tmp_path):
    search = {"strategy": strategy, "warmup_epochs": 1, "epochs": 1, "steps_per_epoch": 1,
              "random": {"samples": 2, "epochs_per_arch": 1}}  # fmt: skip
    low, high = get_cost_model("flops").table(load_space(SPACE), (64, 64), 16).cost_range()
    budget = {"form": "budget", "target": (low + high) / 2}
    exp = experiment(tmp_path, synth, search=search, precision=precision,
                     channels_last=channels_last, cost_model=budget)  # fmt: skip
    result = run_search(load_experiment(exp), tmp_path / "run")
    assert f"device {DEVICE}" in (tmp_path / "run" / "log.txt").read_text()
    assert all(np.isfinite(p).all() for p in result["arch_probs"].values())
    assert np.isfinite(result["final_cost"]) and np.isfinite(result.get("lambda", 0.0))


@pytest.mark.parametrize(("precision", "channels_last"), [("fp32", False), ("bf16", True),
                                                        ("fp16", True)])  # fmt: skip
def test_train_steps(precision, channels_last, synth, tmp_path):
    exp = experiment(tmp_path, synth, precision=precision, channels_last=channels_last,
                     train={"epochs": 1, "steps_per_epoch": 3, "eval_every": 1})  # fmt: skip
    metrics = run_train(load_experiment(exp), ARCH, tmp_path / "run")  # fails on a NaN loss
    assert f"device {DEVICE}" in (tmp_path / "run" / "log.txt").read_text()
    assert np.isfinite(metrics.score)
    state = checkpoint.load(tmp_path / "run" / "model.pt")
    assert all(torch.isfinite(t).all() for t in state.values() if t.is_floating_point())


def test_net_trained_on_the_device_exports_with_parity(synth, tmp_path):
    exp = experiment(tmp_path, synth, train={"epochs": 1, "steps_per_epoch": 3})
    run_train(load_experiment(exp), ARCH, tmp_path / "run")
    out = tmp_path / "net.onnx"
    result = CliRunner().invoke(cli, ["export", "--arch", ARCH, "--weights",
                                      str(tmp_path / "run" / "model.pt"), "-o", str(out),
                                      "--input-size", "64x64"])  # fmt: skip
    assert result.exit_code == 0, result.output
    net = Network(load_space(ARCH), 16)
    net.load_state_dict(checkpoint.load(tmp_path / "run" / "model.pt"))
    net = net.eval().to(DEVICE)
    x = torch.randn(2, 3, 64, 64)
    tf32 = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False  # full fp32 convolutions for the comparison
    try:
        with torch.no_grad():
            ref = net(x.to(DEVICE)).cpu().numpy()
    finally:
        torch.backends.cudnn.allow_tf32 = tf32
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = session.run(None, {"input": x.numpy()})[0]
    assert float(np.abs(got - ref).max()) < 1e-4


def test_one_process_torchrun_search(synth, tmp_path):
    exp = experiment(tmp_path, synth, search={"strategy": "gumbel", "steps_per_epoch": 2})
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc_per_node=1", "-m", "dnas", "search", str(exp), "--out",
                str(tmp_path / "run")]  # fmt: skip
    done = subprocess.run(launcher, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "run" / "search.json").read_text())
    assert all(np.isfinite(p).all() for p in result["arch_probs"].values())
    assert f"device {DEVICE}" in (tmp_path / "run" / "log.txt").read_text()
