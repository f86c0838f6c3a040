"""Checkpoints and resume: a search killed with SIGKILL mid-epoch continues exactly, a truncated
checkpoint falls back to the one before, a changed config needs --force; train and sweep too."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from conftest import write_experiment

from dnas import checkpoint
from dnas.checkpoint import Checkpointer
from dnas.cli import cli
from dnas.config import load_experiment
from dnas.engine.progress import Reporter
from dnas.engine.train import run_train
from dnas.search.run import run_search
from dnas.search.sweep import run_sweep
from tasks.pose.synth import write_synthetic_mpii

QUIET = Reporter(lambda _: None)


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth")
    write_synthetic_mpii(root, n_train=40, n_val=4, seed=0, image_size=64)
    return root


def search_experiment(tmp_path: Path, root: Path, strategy: str) -> Path:
    search = {"strategy": strategy, "warmup_epochs": 1, "epochs": 2, "batch_size": 4,
              "steps_per_epoch": 6, "drop_path": 0.2,
              "random": {"samples": 2, "epochs_per_arch": 2}}  # fmt: skip
    return write_experiment(tmp_path / f"{strategy}.yaml", root, search=search,
                            checkpoint={"every_steps": 1, "keep_last": 4})  # fmt: skip


def dnas(*args: str, env: dict | None = None) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "dnas", *args]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})  # fmt: skip


def finish(proc: subprocess.Popen) -> str:
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    return out + err


def kill_mid_epoch(proc: subprocess.Popen, ckpt_dir: Path, after_step: int) -> None:
    """SIGKILL the run as soon as the checkpoint of ``after_step`` exists."""
    target = ckpt_dir / f"step-{after_step:09d}.pt"
    deadline = time.monotonic() + 240
    while not target.exists():
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() < deadline, "the search never reached the step to kill at"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


@pytest.mark.parametrize("strategy", ["gumbel", "random"])
def test_sigkilled_search_resumes_exactly(tmp_path, synth_root, strategy):
    exp = search_experiment(tmp_path, synth_root, strategy)
    run_search(load_experiment(exp), tmp_path / "full", QUIET)  # uninterrupted, in this process

    run = tmp_path / "killed"
    kill_mid_epoch(dnas("search", str(exp), "--out", str(run)), run / "checkpoints", 8)
    files = Checkpointer(run / "checkpoints", 4, print).files()
    newest = checkpoint.load(files[-1])
    assert newest["position"]["step"] > 0  # killed in the middle of an epoch
    # A crash while writing: the newest file is cut short; the resume must fall back.
    files[-1].write_bytes(files[-1].read_bytes()[: files[-1].stat().st_size // 2])
    log = finish(dnas("search", str(exp), "--out", str(run), "--resume"))
    assert "skipping unreadable checkpoint" in log and files[-2].name in log

    full = json.loads((tmp_path / "full" / "search.json").read_text())
    resumed = json.loads((run / "search.json").read_text())
    assert resumed["choices"] == full["choices"]
    logged = [[json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]
              for d in (tmp_path / "full", run)]  # fmt: skip
    assert [r["global_step"] for r in logged[1]] == [r["global_step"] for r in logged[0]]
    assert logged[1][-1] == pytest.approx(logged[0][-1], abs=1e-6)  # each step logged once
    for layer, probs in full["arch_probs"].items():
        assert resumed["arch_probs"][layer] == pytest.approx(probs, abs=1e-6)
    a = checkpoint.load(tmp_path / "full" / "search.pt")["strategy"]
    b = checkpoint.load(run / "search.pt")["strategy"]
    if strategy == "random":
        assert a["history"] == b["history"]
    else:
        for key, tensor in a["model"].items():
            assert torch.allclose(tensor.float(), b["model"][key].float(), atol=1e-6), key


def test_resume_refuses_a_changed_config_without_force(tmp_path, synth_root):
    exp = search_experiment(tmp_path, synth_root, "darts")
    runner = CliRunner()
    base = ["search", str(exp), "--out", str(tmp_path / "run"), "--set", "search.epochs=0"]
    assert runner.invoke(cli, base).exit_code == 0
    changed = runner.invoke(cli, [*base[:-1], "search.epochs=1", "--resume"])
    assert changed.exit_code == 1
    assert "config differs" in changed.output and "--force" in changed.output
    assert len(changed.output.strip().splitlines()) == 1
    forced = runner.invoke(cli, [*base[:-1], "search.epochs=1", "--resume", "--force"])
    assert forced.exit_code == 0, forced.output
    assert checkpoint.load(tmp_path / "run" / "search.pt")["epoch"] == 2


def test_resume_without_a_checkpoint_starts_afresh_and_says_so(tmp_path, synth_root):
    exp = search_experiment(tmp_path, synth_root, "darts")
    runner = CliRunner()
    empty = runner.invoke(cli, ["search", str(exp), "--out", str(tmp_path / "none"), "--resume",
                                "--set", "search.epochs=0"])  # fmt: skip
    assert empty.exit_code == 0, empty.output
    assert "no search checkpoint in" in empty.output and "starting afresh" in empty.output
    assert (tmp_path / "none" / "search.json").exists()
    assert (tmp_path / "none" / "config.yaml").exists()


def test_train_resumes_exactly_from_a_mid_epoch_checkpoint(tmp_path, synth_root):
    exp = load_experiment(write_experiment(
        tmp_path / "exp.yaml", synth_root, train={"steps_per_epoch": 4},
        checkpoint={"every_steps": 1, "keep_last": 100},
    ))  # fmt: skip
    arch = str(Path(__file__).parent / "data" / "tiny_arch.yaml")
    run = tmp_path / "run"
    run_train(exp, arch, run, report=QUIET)
    full = checkpoint.load(run / "model.pt")
    ckpts = Checkpointer(run / "checkpoints", 100, print)
    for path in ckpts.files()[5:]:  # as if killed after step 5 (epoch 2, step 1)
        path.unlink()
    (run / "model.pt").unlink()
    run_train(exp, arch, run, report=QUIET, resume=True)
    resumed = checkpoint.load(run / "model.pt")
    for key, tensor in full.items():
        assert torch.allclose(tensor.float(), resumed[key].float(), atol=1e-6), key
    assert checkpoint.load(run / "best.pt")["best_score"] is not None
    assert len(ckpts.files()) == 8  # 2 epochs x 4 steps, the epoch ends included
    # last.pt is the epoch end's checkpoint, saved once and copied
    assert (run / "last.pt").read_bytes() == ckpts.files()[-1].read_bytes()
    assert "resumed from" in (run / "log.txt").read_text()
    # the resumed run steps on the multi-tensor kernels, as a fresh one does
    assert checkpoint.load(run / "last.pt")["optimizer"]["param_groups"][0]["foreach"] is True


def test_checkpoints_rotate_and_truncation_falls_back(tmp_path):
    warnings = []
    ckpts = Checkpointer(tmp_path, keep_last=2, warn=warnings.append)
    for step in (1, 2, 3):
        ckpts.save({"kind": "k", "step": step}, step)
    assert [p.name for p in ckpts.files()] == ["step-000000002.pt", "step-000000003.pt"]
    ckpts.files()[-1].write_bytes(b"PK\x03\x04 cut short")
    state, path = ckpts.latest("k")
    assert state["step"] == 2 and path.name == "step-000000002.pt"
    assert len(warnings) == 1 and "step-000000003.pt" in warnings[0]


def test_sweep_resume_keeps_finished_runs(tmp_path, synth_root):
    exp = load_experiment(write_experiment(tmp_path / "exp.yaml", synth_root,
                                           train={"epochs": 1}))  # fmt: skip
    lines: list[str] = []
    first = run_sweep(exp, "weight", [0.1], tmp_path / "sweep", QUIET)
    rows = run_sweep(exp, "weight", [0.1, 1.0], tmp_path / "sweep", Reporter(lines.append),
                     resume=True)  # fmt: skip
    assert rows[0] == first[0] and rows[1]["weight"] == 1.0
    assert any("already done" in line for line in lines)


def test_quiet_mode_prints_plain_periodic_lines(tmp_path, synth_root):
    lines: list[str] = []
    report = Reporter(lines.append, quiet=True, every_s=0.0)
    exp = load_experiment(write_experiment(tmp_path / "exp.yaml", synth_root))
    run_train(exp, str(Path(__file__).parent / "data" / "tiny_arch.yaml"), tmp_path / "r", None,
              report)  # fmt: skip
    progress = [line for line in lines if ": step " in line]
    assert progress and all("eta" in line and "steps/s" in line for line in progress)


def as_legacy(state: dict) -> dict:
    """A checkpoint as the two run loops wrote it before the shared scaffold (2026-12-01)."""
    state = dict(state)
    position, sums = state.pop("position"), state.pop("sums")
    if state["kind"] == "dnas-train":
        best = state.pop("best_score")
        state["progress"] = {**position, "loss_sum": sums.get("train/loss", 0.0),
                             "best_score": best}  # fmt: skip
    else:
        state["position"] = {**position, "arch_batches": state.pop("arch_batches")}
        state["sums"] = sums
    return state


@pytest.mark.parametrize("what", ["train", "search"])
def test_a_checkpoint_of_the_earlier_loops_resumes_exactly(tmp_path, synth_root, what):
    exp = load_experiment(write_experiment(
        tmp_path / "exp.yaml", synth_root, train={"steps_per_epoch": 3},
        search={"steps_per_epoch": 3, "warmup_epochs": 1, "epochs": 1},
        checkpoint={"every_steps": 1, "keep_last": 100},
    ))  # fmt: skip
    arch = str(Path(__file__).parent / "data" / "tiny_arch.yaml")
    run = tmp_path / "run"

    def go(resume: bool) -> dict:
        if what == "train":
            run_train(exp, arch, run, report=QUIET, resume=resume)
            return checkpoint.load(run / "model.pt")
        return {"probs": torch.tensor(sum(run_search(exp, run, QUIET, resume)["arch_probs"]
                                          .values(), []))}  # fmt: skip

    full = go(False)
    ckpts = Checkpointer(run / "checkpoints", 100, print)
    for path in ckpts.files()[4:]:  # as if killed after step 4 (epoch 2, step 1)
        path.unlink()
    newest = ckpts.files()[-1]
    checkpoint.save_atomic(as_legacy(checkpoint.load(newest)), newest)
    resumed = go(True)
    for key, tensor in full.items():
        assert torch.allclose(tensor.float(), resumed[key].float(), atol=1e-6), key
