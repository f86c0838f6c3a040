"""Run directories a user can trust: SIGINT/SIGTERM checkpoint and say how to resume, one run
at a time per directory (a stale lock is taken over), a fresh run over an old one leaves
nothing of it, training results on disk, and a resume with another architecture refused."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import write_experiment

from dnas import checkpoint
from dnas.checkpoint import Checkpointer
from dnas.cli import cli
from dnas.engine.rundir import LOCK
from dnas.errors import DnasError

ARCH = str(Path(__file__).parent / "data" / "tiny_arch.yaml")


def long_search(tmp_path: Path, root: Path) -> Path:
    """A search of many short steps (minutes if left alone), so a signal lands mid-epoch."""
    return write_experiment(tmp_path / "exp.yaml", root, search={
        "strategy": "gumbel", "warmup_epochs": 1, "epochs": 400, "batch_size": 4,
        "steps_per_epoch": 8})  # fmt: skip


def start(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "dnas", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip


def wait_for_steps(proc: subprocess.Popen, ckpt_dir: Path) -> None:
    """Until the run has finished its first epoch (a checkpoint exists) and is stepping on."""
    deadline = time.monotonic() + 240
    while not any(ckpt_dir.glob("step-*.pt")):
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() < deadline, "the run never reached its first checkpoint"
        time.sleep(0.05)
    time.sleep(0.5)


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_checkpoints_the_step_and_says_how_to_resume(tmp_path, synth_root, signum,
                                                              code):  # fmt: skip
    exp, run = long_search(tmp_path, synth_root), tmp_path / "run"
    proc = start("search", str(exp), "--out", str(run), "--quiet")
    wait_for_steps(proc, run / "checkpoints")
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    name = signal.Signals(signum).name
    lines = [line for line in err.splitlines() if "interrupted" in line]
    assert len(lines) == 1 and lines[0].startswith(f"interrupted ({name}) at epoch")  # no "Error:"
    assert "interrupted" not in out  # printed once, on stderr
    assert f"resume with: dnas search {exp} --out {run} --quiet --resume" in lines[0]
    assert f"interrupted ({name})" in (run / "log.txt").read_text()
    newest = checkpoint.load(Checkpointer(run / "checkpoints", 3, print).files()[-1])
    done = newest["position"]["global_step"]
    assert done > 8 and newest["position"]["step"] == done % 8  # the step it stopped at
    assert not (run / LOCK).exists()
    if signum == signal.SIGINT:
        return  # the resume below is the same after either signal
    # the resume command continues from that step
    again = start("search", str(exp), "--out", str(run), "--quiet", "--resume")
    position = newest["position"]
    resumed = f"epoch {position['epoch'] + 1}, step {position['step']}"
    deadline = time.monotonic() + 240
    while resumed not in (run / "log.txt").read_text():
        assert again.poll() is None and time.monotonic() < deadline, again.communicate()[1]
        time.sleep(0.05)
    again.send_signal(signal.SIGTERM)
    _, err = again.communicate(timeout=120)
    assert again.returncode == 143, err


def test_a_run_directory_in_use_is_refused_and_a_stale_lock_taken_over(tmp_path, synth_root):
    exp, run = long_search(tmp_path, synth_root), tmp_path / "run"
    first = start("search", str(exp), "--out", str(run), "--quiet")
    wait_for_steps(first, run / "checkpoints")
    second = start("search", str(exp), "--out", str(run), "--quiet", "--resume")
    _, err = second.communicate(timeout=120)
    assert second.returncode == 1
    holder = f"Error: {run}: in use by process {first.pid} (dnas search {exp} --out {run} --quiet"
    assert err.startswith(holder) and err.strip().count("\n") == 0
    assert "wait for it to end or stop it" in err
    first.send_signal(signal.SIGKILL)  # a killed run leaves its lock behind
    first.wait()
    assert json.loads((run / LOCK).read_text())["pid"] == first.pid
    runner = CliRunner()
    taken = runner.invoke(cli, ["search", str(exp), "--out", str(run), "--resume",
                                "--set", "search.epochs=0", "--force"])  # fmt: skip
    assert taken.exit_code == 0, taken.output
    assert f"process {first.pid} that locked this run directory is gone" in taken.output
    assert not (run / LOCK).exists()


@pytest.mark.parametrize("hard_links", [True, False])
def test_a_lock_is_whole_from_its_first_moment(tmp_path, monkeypatch, hard_links):
    """Written beside it and linked into place: a run starting at the same instant never reads
    a half-written lock and takes it for stale. Without hard links it is created in place."""
    from dnas.engine.rundir import RunLock

    if not hard_links:

        def no_link(src, dst):
            raise PermissionError(1, "Operation not permitted")

        monkeypatch.setattr(os, "link", no_link)
    lock = RunLock(tmp_path)
    lock.acquire(print)
    assert lock.held and json.loads((tmp_path / LOCK).read_text())["pid"] == os.getpid()
    assert sorted(p.name for p in tmp_path.iterdir()) == [LOCK]  # no scratch file left
    other = RunLock(tmp_path)
    with pytest.raises(DnasError, match="already in use by this process"):
        other.acquire(print)
    lock.release()
    assert not (tmp_path / LOCK).exists()


def test_a_fresh_run_over_an_old_one_keeps_nothing_of_it(tmp_path, synth_root):
    exp = write_experiment(tmp_path / "exp.yaml", synth_root)
    run, runner = tmp_path / "run", CliRunner()
    args = ["train", str(exp), "--arch", ARCH, "--out", str(run)]
    assert runner.invoke(cli, args).exit_code == 0
    (run / "notes.txt").write_text("mine")  # not a dnas output: kept
    forced = runner.invoke(cli, [*args, "--force"])
    assert forced.exit_code == 0, forced.output
    log = (run / "log.txt").read_text()
    assert log.count("train: ") == 1 and (run / "notes.txt").read_text() == "mine"
    assert len(list((run / "tb").glob("events.*"))) == 1


def test_training_writes_its_results_and_logs_the_table(tmp_path, synth_root):
    exp = write_experiment(tmp_path / "exp.yaml", synth_root)
    run = tmp_path / "run"
    result = CliRunner().invoke(cli, ["train", str(exp), "--arch", ARCH, "--out", str(run)])
    assert result.exit_code == 0, result.output
    results = json.loads((run / "results.json").read_text())
    assert results["primary_metric"] == "Mean" and 0 <= results["Mean"] <= 100
    assert results["params"] > 0 and results["macs"] > 0 and results["input_size"] == [64, 64]
    table = results["table"]
    logged = [line.split(" ", 1)[1] for line in (run / "log.txt").read_text().splitlines()]
    assert table.startswith("| | Head |") and table in "\n".join(logged)  # each line stamped
    assert result.output.count("| PCKh@0.5 |") == 1  # printed once, through the log
    assert str(run / "results.json") in result.output


def test_resuming_with_another_architecture_is_one_line(tmp_path, synth_root):
    exp = write_experiment(tmp_path / "exp.yaml", synth_root)
    run, runner = tmp_path / "run", CliRunner()
    assert runner.invoke(cli, ["train", str(exp), "--arch", ARCH, "--out", str(run)]).exit_code == 0
    other = runner.invoke(cli, ["train", str(exp), "--arch", "efficientpose-a", "--out", str(run),
                                "--resume", "--force"])  # fmt: skip
    assert other.exit_code == 1
    assert other.output.strip().count("\n") == 0
    assert (
        "trained architecture 'tiny-arch'" in other.output or "trained architecture" in other.output
    )
    assert "'efficientpose-a'" in other.output
    assert not (run / LOCK).exists()
    assert os.path.exists(run / "model.pt")  # the run's results are untouched


def test_every_step_is_logged_to_metrics_jsonl_and_tensorboard(tmp_path, synth_root):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    exp = write_experiment(tmp_path / "exp.yaml", synth_root)  # 2 epochs x 2 steps
    run = tmp_path / "run"
    assert (
        CliRunner().invoke(cli, ["train", str(exp), "--arch", ARCH, "-o", str(run)]).exit_code == 0
    )
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [(r["epoch"], r["step"], r["global_step"]) for r in records] == [
        (1, 1, 1), (1, 2, 2), (2, 1, 3), (2, 2, 4)]  # fmt: skip
    assert all(r["train/loss"] > 0 for r in records)
    events = EventAccumulator(str(run / "tb" / "steps"))
    events.Reload()
    logged = events.Scalars("train/loss")
    assert [e.step for e in logged] == [1, 2, 3, 4]
    assert [e.value for e in logged] == pytest.approx([r["train/loss"] for r in records])


def test_progress_lines_come_off_a_terminal_without_quiet():
    from dnas.engine.progress import Reporter

    lines: list[str] = []
    report = Reporter(lines.append, quiet=False, every_s=0.0)
    assert list(report.steps(iter(range(3)), 4, 0, "epoch 1/1", lambda: {"loss": 0.5})) == [0, 1, 2]
    assert lines and lines[0].startswith("epoch 1/1: step 1/4") and "loss 0.5" in lines[0]


def test_derive_warns_on_an_interrupted_search(tmp_path, synth_root):
    exp, run = long_search(tmp_path, synth_root), tmp_path / "run"
    proc = start("search", str(exp), "-o", str(run), "--quiet")
    wait_for_steps(proc, run / "checkpoints")
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=120)
    result = CliRunner().invoke(cli, ["derive", str(run), "-o", str(tmp_path / "arch.yaml")])
    assert result.exit_code == 0, result.output
    assert "holds an incomplete search (" in result.output and "of 401 epochs" in result.output


def test_a_run_directory_is_enough_to_resume_evaluate_and_export(tmp_path, synth_root):
    exp = write_experiment(tmp_path / "exp.yaml", synth_root, search={"epochs": 0})
    runner, train_dir, search_dir = CliRunner(), tmp_path / "train", tmp_path / "search"
    first = runner.invoke(cli, ["train", str(exp), "--arch", ARCH, "-o", str(train_dir)])
    assert first.exit_code == 0, first.output
    assert "name: tiny-arch" in (train_dir / "arch.yaml").read_text()
    again = runner.invoke(cli, ["train", str(train_dir), "--resume"])  # config.yaml + arch.yaml
    assert again.exit_code == 0, again.output
    assert "the run had finished (epoch 2/2); its results are made again" in again.output
    assert "resumed from" not in again.output  # it read "epoch 3, step 0" of a 2-epoch run
    scored = runner.invoke(cli, ["eval", str(train_dir)])  # its model.pt, into RUN/eval
    assert scored.exit_code == 0, scored.output
    assert json.loads((train_dir / "eval" / "results.json").read_text())["primary_metric"]
    exported = runner.invoke(cli, ["export", "--weights", str(train_dir), "-o",
                                   str(tmp_path / "n.onnx")])  # fmt: skip
    assert exported.exit_code == 0, exported.output
    assert runner.invoke(cli, ["search", str(exp), "-o", str(search_dir)]).exit_code == 0
    # the run's config.yaml feeds back in as it is, and the directory resumes by itself
    copy = runner.invoke(cli, ["search", str(search_dir / "config.yaml"), "-o",
                               str(tmp_path / "copy")])  # fmt: skip
    assert copy.exit_code == 0, copy.output
    resumed = runner.invoke(cli, ["search", str(search_dir), "--resume"])
    assert resumed.exit_code == 0 and "the run had finished (epoch 1/1)" in resumed.output
    missing = runner.invoke(cli, ["eval", str(exp)])
    assert missing.exit_code == 1 and "Missing option '-o' / '--out'" in missing.output
    bare = runner.invoke(cli, ["search", str(tmp_path), "--resume"])
    assert bare.exit_code == 1 and "no config.yaml in it: not a dnas run directory" in bare.output


def test_config_paths_resolve_beside_the_config_and_a_missing_space_is_named(tmp_path, synth_root):
    import shutil

    from conftest import TINY_SPACE

    folder = tmp_path / "cfg"
    folder.mkdir()
    shutil.copy(TINY_SPACE, folder / "my_space.yaml")
    exp = write_experiment(folder / "exp.yaml", synth_root, "my_space.yaml", search={"epochs": 0})
    runner = CliRunner()
    done = runner.invoke(cli, ["search", str(exp), "-o", str(tmp_path / "s")])
    assert done.exit_code == 0, done.output  # read beside the config, not from the cwd
    missing = write_experiment(folder / "bad.yaml", synth_root, "nope.yaml")
    failed = runner.invoke(cli, ["search", str(missing), "-o", str(tmp_path / "never")])
    assert failed.exit_code == 1 and failed.output.strip().count("\n") == 0
    assert failed.output.startswith(f"Error: {missing}: space: nope.yaml: no such file")
    assert not (tmp_path / "never").exists()  # a run that failed to start leaves no directory


def test_spaces_lists_the_names_that_load_as_the_spaces_spell_them():
    """Listed by their own ``name:`` (what README, runs and weights show): it listed
    mbv2-pose-small for the space that calls itself mbv2_pose_small everywhere else."""
    from dnas.space.graph import load_space

    listed = CliRunner().invoke(cli, ["spaces"]).output
    names = [line for line in listed.splitlines() if line and not line.startswith(" ")]
    assert "mbv2_pose_small" in names and "efficientpose-a" in names
    for name in names:
        assert load_space(name).name == name


def test_a_fresh_run_never_deletes_its_own_inputs(tmp_path, synth_root):
    exp = write_experiment(tmp_path / "exp.yaml", synth_root)
    run, runner = tmp_path / "run", CliRunner()
    assert runner.invoke(cli, ["train", str(exp), "--arch", ARCH, "-o", str(run)]).exit_code == 0
    # start afresh from the run's own weights, into the same directory
    again = runner.invoke(cli, ["train", str(exp), "--arch", str(run / "arch.yaml"), "--init",
                                str(run / "model.pt"), "-o", str(run), "--force"])  # fmt: skip
    assert again.exit_code == 0, again.output
    assert (run / "model.pt").exists() and (run / "arch.yaml").exists()
    assert (run / "log.txt").read_text().count("train: ") == 1
