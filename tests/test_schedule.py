"""The training lr schedules: the cosine schedule's maths (SGDR without restarts, with a linear
warm-up) and that a training run follows it step by step, resume included."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from conftest import write_experiment

from dnas import checkpoint
from dnas.checkpoint import Checkpointer
from dnas.config import TrainConfig, load_experiment
from dnas.engine.progress import Reporter
from dnas.engine.schedule import Schedule, cosine_factor
from dnas.engine.train import run_train
from dnas.errors import ConfigError
from tasks.pose.synth import write_synthetic_mpii

ARCH = str(Path(__file__).parent / "data" / "tiny_arch.yaml")


def test_cosine_factor_is_sgdr_after_a_linear_warm_up():
    assert [cosine_factor(s, 10, 0) for s in (0, 5, 10)] == pytest.approx([1.0, 0.5, 0.0])
    assert cosine_factor(2, 10, 0) == pytest.approx((1 + math.cos(math.pi * 0.2)) / 2)
    # warm-up 2 of 10 steps: 1/2, 2/2, then half a cosine over the 8 steps after it
    got = [cosine_factor(s, 10, 2) for s in range(11)]
    want = [0.5, 1.0] + [(1 + math.cos(math.pi * t / 8)) / 2 for t in range(9)]
    assert got == pytest.approx(want)
    assert cosine_factor(50, 10, 2) == pytest.approx(0.0)  # past the end: stays at 0


def test_schedule_steps_per_step_for_cosine_and_per_epoch_for_step():
    def lr_after(cfg: TrainConfig, steps: int, epochs: int) -> float:
        opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        sched = Schedule(opt, cfg, steps)
        for _ in range(epochs):
            for _ in range(steps):
                opt.step()
                sched.after_step()
            sched.after_epoch()
        return opt.param_groups[0]["lr"]

    cosine = TrainConfig(epochs=4, schedule="cosine", warmup_steps=2)
    assert lr_after(cosine, 5, 1) == pytest.approx(cosine_factor(5, 20, 2))
    assert lr_after(cosine, 5, 4) == pytest.approx(0.0, abs=1e-12)
    step = TrainConfig(epochs=4, milestones=[2], gamma=0.1)
    assert lr_after(step, 5, 1) == pytest.approx(1.0)
    assert lr_after(step, 5, 2) == pytest.approx(0.1)


def test_a_cosine_training_run_follows_the_schedule_and_resumes_exactly(tmp_path):
    root = tmp_path / "synth"
    write_synthetic_mpii(root, n_train=24, n_val=4, seed=0, image_size=64)
    exp = load_experiment(write_experiment(
        tmp_path / "exp.yaml", root,
        train={"epochs": 2, "steps_per_epoch": 3, "lr": 0.01, "schedule": "cosine",
               "warmup_steps": 2},
        checkpoint={"every_steps": 1, "keep_last": 100},
    ))  # fmt: skip
    quiet, run = Reporter(lambda _: None), tmp_path / "run"
    run_train(exp, ARCH, run, report=quiet)
    ckpts = Checkpointer(run / "checkpoints", 100, print)
    for step, path in enumerate(ckpts.files(), start=1):
        lr = checkpoint.load(path)["optimizer"]["param_groups"][0]["lr"]
        assert lr == pytest.approx(0.01 * cosine_factor(step, 6, 2)), step
    full = checkpoint.load(run / "model.pt")
    for path in ckpts.files()[4:]:
        path.unlink()
    run_train(exp, ARCH, run, report=quiet, resume=True)
    resumed = checkpoint.load(run / "model.pt")
    for key, tensor in full.items():
        assert torch.allclose(tensor.float(), resumed[key].float(), atol=1e-6), key


def test_an_unknown_schedule_is_named(tmp_path):
    path = write_experiment(tmp_path / "exp.yaml", tmp_path, train={"schedule": "linear"})
    with pytest.raises(ConfigError, match="train.schedule: expected one of step, cosine"):
        load_experiment(path)
