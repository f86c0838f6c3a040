"""Shared fixtures: real data from ../shared/data (skipped when absent) and tiny experiments."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.io
import yaml

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("DNAS_TEST_DATA", REPO.parent / "shared" / "data"))
TINY_SPACE = Path(__file__).parent / "data" / "tiny_space.yaml"
TINY_ARCH = Path(__file__).parent / "data" / "tiny_arch.yaml"


def start_busy(count: int) -> list[subprocess.Popen]:
    """``count`` processes that keep a core busy each (a concurrent load); ``stop_busy`` ends
    them."""
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]


def stop_busy(load: list[subprocess.Popen]) -> None:
    for process in load:
        process.kill()
    for process in load:
        process.wait()


def need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"real data not found at {path} (set DNAS_TEST_DATA to ../shared/data)")
    return path


@pytest.fixture(scope="session")
def mpii_samples() -> Path:
    return need(DATA / "mmpose-samples" / "mpii")


@pytest.fixture(scope="session")
def mpii_valid_h5() -> Path:
    return need(DATA / "mpii-val" / "valid.h5")


@pytest.fixture(scope="session")
def real_mpii_root(tmp_path_factory, mpii_samples, mpii_valid_h5) -> Path:
    """The 5 real MPII samples in the HRNet layout; gt_valid.mat head boxes are built so that
    0.6 x diagonal equals valid.h5's ``normalize`` of rows 0-4 (the same people)."""
    root = tmp_path_factory.mktemp("mpii5")
    (root / "annot").mkdir()
    (root / "images").mkdir()
    entries = json.loads((mpii_samples / "test_mpii.json").read_text())
    for e in entries:
        shutil.copy(mpii_samples / e["image"], root / "images" / e["image"])
    for split in ("train", "valid"):
        (root / "annot" / f"{split}.json").write_text(json.dumps(entries))
    with h5py.File(mpii_valid_h5) as f:
        part, normalize = f["part"][:5], f["normalize"][:5]
    side = normalize / 0.6 / np.sqrt(2)
    boxes = np.zeros((2, 2, 5))
    boxes[1] = np.stack([side, side])
    scipy.io.savemat(root / "annot" / "gt_valid.mat", {
        "pos_gt_src": part.transpose(1, 2, 0),
        "jnt_missing": (part == 0).all(-1).T.astype(np.int64),
        "headboxes_src": boxes,
    })  # fmt: skip
    return root


def quick_bench():
    """Short timings that never stop a test on a busy CI machine (noise kept, not refused):
    tests that need real figures or the noise guard set their own policy."""
    import torch

    from cost_models.latency_build import Bench
    from cost_models.runtimes import get_runtime
    from cost_models.timing import NoisePolicy

    return Bench(get_runtime("torch", torch.device("cpu"), torch.get_num_threads()),
                 min_time=0.01, policy=NoisePolicy(rounds=1, strict=False))  # fmt: skip


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory) -> Path:
    """A small synthetic MPII set at 64x64 (40 train, 4 val images), shared read-only."""
    from tasks.pose.synth import write_synthetic_mpii

    root = tmp_path_factory.mktemp("synth")
    write_synthetic_mpii(root, n_train=40, n_val=4, seed=0, image_size=64)
    return root


def write_experiment(path: Path, root: Path, space: Path | str = TINY_SPACE, **sections) -> Path:
    """A tiny experiment YAML: 64x64 input, few steps, a fresh cost-table cache."""
    exp = {
        "task": {"name": "pose", "root": str(root)},
        "space": str(space),
        "input_size": [64, 64],
        "search": {"warmup_epochs": 1, "epochs": 1, "batch_size": 4, "steps_per_epoch": 2},
        "train": {"epochs": 2, "batch_size": 4, "steps_per_epoch": 2, "milestones": [1],
                  "eval_every": 1},
        "device": "cpu",
        # no TensorBoard pictures (about a second a search, a tenth of the suite); the tests of
        # the pictures ask for them
        "pictures": False,
    }  # fmt: skip
    for key, value in sections.items():
        exp[key] = {**exp.get(key, {}), **value} if isinstance(value, dict) else value
    path.write_text(yaml.safe_dump(exp))
    return path


@pytest.fixture(scope="module")
def finished(tmp_path_factory, synth_root) -> dict[str, Path]:
    """A finished search and a finished training of the tiny space (once per test module)."""
    from click.testing import CliRunner

    from dnas.cli import cli

    base = tmp_path_factory.mktemp("runs")
    exp = write_experiment(base / "exp.yaml", synth_root)
    train = ["train", str(exp), "--arch", str(TINY_ARCH), "--out", str(base / "train")]
    for args in (["search", str(exp), "--out", str(base / "search")], train):
        assert CliRunner().invoke(cli, args).exit_code == 0
    return {"exp": exp, "search": base / "search", "train": base / "train"}


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("DNAS_CACHE_DIR", str(tmp_path / "cache"))


def wait_for_checkpoint(job: subprocess.Popen, out: Path, seconds: float) -> list[str]:
    """Wait until the run ``job`` writes into ``out`` has saved a checkpoint (it must not end
    first); the pids of its children."""
    deadline = time.monotonic() + seconds
    while not any((out / "checkpoints").glob("step-*.pt")):
        assert job.poll() is None, job.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "the run never reached its first checkpoint"
        time.sleep(0.05)
    return Path(f"/proc/{job.pid}/task/{job.pid}/children").read_text().split()
