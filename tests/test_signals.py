"""SIGINT and SIGTERM in a dnas process: raised as Signalled outside a run's steps (its lock
freed, its new folder removed), recorded inside them, and a second one stops at once; a forked
worker keeps the default behaviour."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import wait_for_checkpoint, write_experiment

from dnas.engine.rundir import LOCK
from dnas.engine.signals import SIGNALS, raise_on_signals, stop_signals
from dnas.errors import Signalled


@pytest.fixture
def cli_signals():
    """The CLI's handlers for the test, the previous ones afterwards."""
    previous = {s: signal.getsignal(s) for s in SIGNALS}
    raise_on_signals()
    yield
    for s, handler in previous.items():
        signal.signal(s, handler)


@pytest.mark.parametrize("signum", SIGNALS)
def test_a_signal_outside_a_runs_steps_raises_signalled(cli_signals, signum):
    with pytest.raises(Signalled) as caught:
        os.kill(os.getpid(), signum)
        time.sleep(1)  # the handler runs at the next bytecode; never reached
    assert caught.value.exit_code == 128 + signum
    assert str(caught.value) == f"interrupted ({signal.Signals(signum).name})"
    assert not isinstance(caught.value, Exception)  # past every 'except Exception'


def test_inside_the_steps_the_first_signal_is_recorded_and_a_second_raises(cli_signals):
    seen = []
    with stop_signals(seen.append):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.01)
        assert seen == [signal.SIGTERM]
        with pytest.raises(Signalled):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)
    assert seen == [signal.SIGTERM]
    with pytest.raises(Signalled):  # after the block: the CLI's handler again
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(1)


def _signal_self(signum: int, answer) -> None:
    try:
        os.kill(os.getpid(), signum)
        time.sleep(5)
        answer.put("ran on")
    except KeyboardInterrupt:
        answer.put("KeyboardInterrupt")
    except BaseException as exc:  # noqa: BLE001 - what the test looks for
        answer.put(type(exc).__name__)


def test_a_forked_worker_keeps_the_default_behaviour(cli_signals):
    """A data loader's worker expects KeyboardInterrupt on SIGINT and to die on SIGTERM, not
    the parent's exception (a traceback from every worker)."""
    context = multiprocessing.get_context("fork")
    answers = {}
    for signum in SIGNALS:
        answer = context.Queue()
        child = context.Process(target=_signal_self, args=(signum, answer))
        child.start()
        child.join(timeout=30)
        answers[signum] = (child.exitcode, None if answer.empty() else answer.get(timeout=1))
    assert answers[signal.SIGINT] == (0, "KeyboardInterrupt")
    assert answers[signal.SIGTERM] == (-signal.SIGTERM, None)


def test_a_signal_during_set_up_frees_the_lock_and_removes_the_new_folder(tmp_path, synth_root):
    exp = write_experiment(tmp_path / "exp.yaml", synth_root)
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "dnas", "search", str(exp), "--out",
                             str(run), "--quiet"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.monotonic() + 120
    while not (run / LOCK).exists():  # set-up (data, super-net) takes about a second after
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() < deadline, "the run never took its lock"
        time.sleep(0.001)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert err.strip() == "interrupted (SIGTERM) during set-up; the run had not begun"
    assert not run.exists()


def test_a_second_signal_stops_a_run_at_once(cli_signals, tmp_path, synth_root, monkeypatch):
    from dnas.config import load_experiment
    from dnas.search.run import SearchRun, run_search

    exp = write_experiment(tmp_path / "exp.yaml", synth_root, search={
        "strategy": "gumbel", "warmup_epochs": 1, "epochs": 4, "steps_per_epoch": 4})  # fmt: skip
    step = SearchRun.step

    def twice_signalled(self, batch):
        if self.position.global_step == 5:  # the first is recorded, the second raises
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGTERM)
        return step(self, batch)

    monkeypatch.setattr(SearchRun, "step", twice_signalled)
    with pytest.raises(Signalled) as caught:
        run_search(load_experiment(exp), tmp_path / "run")
    message = str(caught.value)
    assert message.startswith("interrupted (SIGTERM) again, before the run could stop at a step")
    assert "resume from its newest checkpoint with: " in message and message.endswith("--resume")
    assert message in (tmp_path / "run" / "log.txt").read_text()
    assert not (tmp_path / "run" / LOCK).exists()
    assert any((tmp_path / "run" / "checkpoints").glob("step-*.pt"))  # epoch 1's


def test_after_the_command_a_signal_ends_the_process_with_its_own_status():
    """Results written, the interpreter shutting down (torch's teardown takes a second): SIGTERM
    does not turn a finished job into a failed one (143), and Ctrl-C ends the exit at once."""
    script = ("import os, signal, time\n"
              "from dnas.engine.signals import exit_on_signals\n"
              "exit_on_signals(3)\n"
              "os.kill(os.getpid(), signal.SIGTERM)\n"
              "time.sleep(0.2)\n"
              "print('still here', flush=True)\n"
              "os.kill(os.getpid(), signal.SIGINT)\n"
              "time.sleep(30)\n")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60)  # fmt: skip
    assert (done.returncode, done.stdout, done.stderr) == (3, "still here\n", "")


def test_a_signal_during_the_finish_stops_what_runs_next(cli_signals, tmp_path, synth_root,
                                                         monkeypatch):  # fmt: skip
    """The run's results are written, but the signal still stops the caller (a sweep would
    otherwise start its next search until the scheduler's SIGKILL)."""
    from dnas.config import load_experiment
    from dnas.search.run import SearchRun, run_search

    finish = SearchRun.finish

    def signalled_finish(self):
        os.kill(os.getpid(), signal.SIGTERM)  # recorded: the steps' handler is still in place
        return finish(self)

    monkeypatch.setattr(SearchRun, "finish", signalled_finish)
    exp = write_experiment(tmp_path / "exp.yaml", synth_root)
    with pytest.raises(Signalled) as caught:
        run_search(load_experiment(exp), tmp_path / "run")
    assert str(caught.value) == "interrupted (SIGTERM) as the run finished; its results are written"
    assert (tmp_path / "run" / "search.json").is_file()
    assert not (tmp_path / "run" / LOCK).exists()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_stop_signal_to_the_process_group_stops_a_run_with_loader_workers(tmp_path, synth_root,
                                                                            signum):  # fmt: skip
    """Ctrl-C (or a scheduler) signals the whole process group, loader workers included: they
    died of it and the run failed mid-step ('DataLoader worker killed by signal'), with no stop
    checkpoint; now the run stops at a step boundary and its workers end with it."""
    exp = write_experiment(tmp_path / "exp.yaml", synth_root, workers=2,
                           search={"epochs": 400, "steps_per_epoch": 2})  # fmt: skip
    out = tmp_path / "s"
    job = subprocess.Popen([sys.executable, "-m", "dnas", "search", str(exp), "--out", str(out),
                            "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           start_new_session=True)  # fmt: skip
    try:
        workers = wait_for_checkpoint(job, out, 120)
        assert workers  # the loaders' workers run
        os.killpg(job.pid, signum)
        err = job.communicate(timeout=60)[1]
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
    name = signal.Signals(signum).name
    assert f"interrupted ({name}) at epoch" in err and "checkpoint saved" in err, err[-3000:]
    assert "Traceback" not in err and "DataLoader worker" not in err, err[-3000:]
    time.sleep(1)
    assert not [w for w in workers if Path(f"/proc/{w}").exists()]
