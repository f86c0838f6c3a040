"""Timing passes in fresh processes: results, progress and errors come back as from a call."""

from __future__ import annotations

import os
import time

import pytest
from click.testing import CliRunner
from conftest import TINY_SPACE, start_busy, stop_busy

from cost_models.processes import in_fresh_process
from cost_models.timing import NoisyMachine
from dnas.cli import cli
from dnas.errors import ConfigError, DnasError

STATE = {"set_here": False}  # set in the parent; a spawned child imports it afresh


def report_steps(steps: int, done) -> tuple[int, bool]:
    for _ in range(steps):
        done(2)
    return os.getpid(), STATE["set_here"]


def refuse(done) -> None:
    raise NoisyMachine("lut build --space tiny: the machine is busy: test")


def crash(done) -> None:
    raise ValueError("a bug in the child")


def die(done) -> None:
    os._exit(3)


def bad_config(done) -> None:
    raise ConfigError("exp.yaml", "cost_model.target", "expected a number")


def time_on(done) -> None:
    while True:
        done(os.getpid())
        time.sleep(0.05)


def test_a_pass_runs_in_a_fresh_interpreter_and_reports_its_progress(monkeypatch):
    monkeypatch.setitem(STATE, "set_here", True)
    done: list[int] = []
    pid, inherited = in_fresh_process(report_steps, (3,), done.append)
    assert pid != os.getpid() and not inherited  # spawned, not forked: nothing inherited
    assert done == [2, 2, 2]


def test_errors_in_the_child_come_back_as_one_line_or_as_its_traceback():
    with pytest.raises(NoisyMachine, match="^lut build --space tiny: the machine is busy: test$"):
        in_fresh_process(refuse, ())
    with pytest.raises(RuntimeError, match="ValueError: a bug in the child"):
        in_fresh_process(crash, ())
    with pytest.raises(DnasError, match=r"stopped \(exit code 3\) before it reported"):
        in_fresh_process(die, ())
    with pytest.raises(DnasError, match="^exp.yaml: cost_model.target: expected a number$"):
        in_fresh_process(bad_config, ())  # a subclass with more arguments keeps its line


def test_a_pass_interrupted_here_stops_its_process_at_once():
    pids: list[int] = []
    interrupted_at: list[float] = []

    def interrupt(pid: int) -> None:
        pids.append(pid)
        interrupted_at.append(time.monotonic())
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        in_fresh_process(time_on, (), interrupt)
    assert time.monotonic() - interrupted_at[0] < 5  # terminated, not the 10 s grace of a join
    with pytest.raises(ProcessLookupError):
        os.kill(pids[0], 0)  # stopped and reaped


def test_a_build_refused_in_a_fresh_process_stops_with_one_line_and_writes_nothing(tmp_path):
    """With another process busy, every timing too spread (--max-spread 0) is refused in the
    child, and its one line comes back here."""
    out = tmp_path / "lut.json"
    load = start_busy(1)
    try:
        result = CliRunner().invoke(cli, ["lut", "build", "--space", str(TINY_SPACE), "--input",
                                          "64x64", "--min-time", "0.01", "--rounds", "2",
                                          "--max-spread", "0", "--calibration", "2",
                                          "-o", str(out)])  # fmt: skip
    finally:
        stop_busy(load)
    assert result.exit_code == 1
    assert result.output.startswith("Error: lut build --space tiny: the machine is busy (other "
                                    "processes took ")  # fmt: skip
    assert ": the repeats of the reference net spread " in result.output
    assert len(result.output.strip().splitlines()) == 1 and not out.exists()
