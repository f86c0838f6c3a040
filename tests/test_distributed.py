"""Data parallel runs: ``torchrun --nproc_per_node 2`` on CPU (gloo) against one process with the
same global batch. The runs check themselves that every process ends with identical parameters
(``dnas.engine.distributed.check_in_sync``); here the results must match the 1-process run."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner
from conftest import wait_for_checkpoint, write_experiment

from dnas import checkpoint
from dnas.cli import cli
from dnas.config import load_experiment
from dnas.engine.rundir import LOCK, RunLock
from dnas.engine.runtime import seed_everything
from dnas.engine.train import build_fixed
from dnas.errors import DnasError
from dnas.task import build_task
from tasks.pose.synth import write_synthetic_mpii

ARCH = str(Path(__file__).parent / "data" / "tiny_arch.yaml")
# Batch-norm statistics are per process (B/2 items each, no SyncBatchNorm on CPU), so the
# runs agree to within a tolerance, not bit for bit: the gradients are averaged exactly.
# Adam's first steps move alpha by about lr x sign(gradient), so where a layer's gradient is
# near 0 the float-rounding differences of the averaged gradients decide it: 0.0064 apart on
# an Intel Xeon (2026-12-01; the earlier 2e-3 held on the machine it was set on), while the
# search moves the probabilities by more than ten times the tolerance.
PROB_TOL = 1e-2
WEIGHT_TOL = 2e-2


@pytest.fixture(scope="module")
def experiment(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth")
    write_synthetic_mpii(root, n_train=40, n_val=4, seed=0, image_size=64)
    return write_experiment(
        root / "exp.yaml", root,
        search={"warmup_epochs": 1, "epochs": 2, "batch_size": 8, "steps_per_epoch": 3,
                "drop_path": 0.0, "arch_optimizer": {"lr": 0.05}},
        train={"epochs": 1, "batch_size": 8, "steps_per_epoch": 3},
        # a cost term that outweighs the per-process batch-norm noise of the task gradient, so
        # the comparison does not depend on the default weight
        cost_model={"weight": 0.5},
    )  # fmt: skip


def torchrun(args: list[str], timeout: float, processes: int = 2,
             **env: str) -> subprocess.CompletedProcess:  # fmt: skip
    """``torchrun --nproc_per_node PROCESSES ARGS`` (``-m dnas ...`` or a script and its
    arguments), one thread a process, in a session of its own: on a timeout every process of
    it is killed (the launcher alone was, and its hung ranks slowed every test after)."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                f"--nproc_per_node={processes}"]  # fmt: skip
    with subprocess.Popen([*launcher, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, start_new_session=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **env}) as job:  # fmt: skip
        try:
            out, err = job.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(job.pid, signal.SIGKILL)
            job.communicate()
            raise
    return subprocess.CompletedProcess(job.args, job.returncode, out, err)


def run(args: list[str], processes: int) -> str:
    """``dnas ARGS`` in one process (this one, on one thread as each torchrun process runs) or
    under ``torchrun --nproc_per_node PROCESSES``; its output."""
    if processes == 1:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            done = CliRunner().invoke(cli, args)
        finally:
            torch.set_num_threads(threads)
        assert done.exit_code == 0, done.output[-3000:]
        return done.output
    done = torchrun(["-m", "dnas", *args], 600, processes)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_two_process_search_matches_one_process(experiment, tmp_path):
    for n in (1, 2):
        out = run(["search", str(experiment), "--out", str(tmp_path / f"p{n}")], n)
        assert ("2 processes" in out) == (n == 2)
    one = json.loads((tmp_path / "p1" / "search.json").read_text())
    two = json.loads((tmp_path / "p2" / "search.json").read_text())
    for layer, probs in one["arch_probs"].items():
        assert two["arch_probs"][layer] == pytest.approx(probs, abs=PROB_TOL)
    moved = max(abs(p - 1 / len(ps)) for ps in one["arch_probs"].values() for p in ps)
    assert moved > 10 * PROB_TOL  # the search really moved the probabilities


def test_two_process_training_matches_one_process(experiment, tmp_path):
    for n in (1, 2):
        run(["train", str(experiment), "--arch", ARCH, "--out", str(tmp_path / f"t{n}")], n)
    one = checkpoint.load(tmp_path / "t1" / "model.pt")
    two = checkpoint.load(tmp_path / "t2" / "model.pt")
    exp = load_experiment(experiment)
    seed_everything(exp.seed)  # the initial weights, built as run_train builds them
    init = build_fixed(exp, ARCH, build_task(exp))[1].state_dict()
    for key, tensor in one.items():
        if tensor.is_floating_point() and "running" not in key:
            assert torch.allclose(tensor, two[key], atol=WEIGHT_TOL), key
    assert max(float((one[k] - init[k]).abs().max()) for k in one
               if one[k].is_floating_point()) > 10 * WEIGHT_TOL  # fmt: skip


def test_two_process_random_search_matches_one_process(experiment, tmp_path):
    """Random search builds its own nets: under torchrun they get the global-batch batch norm
    and rank 0's weights as the super net does, so every candidate scores as in one process."""
    args = ["--set", "search.strategy=random", "--set", "search.random.samples=2",
            "--set", "search.random.epochs_per_arch=1", "--set", "sync_batchnorm=true"]  # fmt: skip
    for n in (1, 2):
        run(["search", str(experiment), "--out", str(tmp_path / f"r{n}"), *args], n)
    one, two = (json.loads((tmp_path / f"r{n}" / "search.json").read_text()) for n in (1, 2))
    assert len(one["candidates"]) == 2
    for a, b in zip(one["candidates"], two["candidates"], strict=True):
        assert a["choices"] == b["choices"]
        assert b["val_loss"] == pytest.approx(a["val_loss"], rel=1e-6)  # 3e-5 apart without it
    assert one["choices"] == two["choices"]


def cut_after(run_dir: Path, copy: Path, global_step: int) -> Path:
    """``copy`` of a finished search as if it had stopped after ``global_step``."""
    shutil.copytree(run_dir, copy)
    for path in copy.glob("search.*"):
        path.unlink()
    for path in (copy / "checkpoints").glob("step-*.pt"):
        if int(path.stem.removeprefix("step-")) > global_step:
            path.unlink()
    return copy


def epoch_lines(run_dir: Path) -> list[str]:
    """log.txt's epoch lines without their time stamps and durations."""
    lines = (run_dir / "log.txt").read_text().splitlines()
    texts = [line.split(" ", 1)[1] for line in lines]
    return [text.rsplit("  (", 1)[0] for text in texts if re.match(r"epoch \d+/\d+  ", text)]


def test_a_two_process_search_resumed_mid_epoch_goes_on_exactly(experiment, tmp_path):
    """Each process draws its own drop-path masks and sums its own losses: a checkpoint holds
    every process's (rank 0's everywhere replayed rank 0's masks on rank 1 after a resume, and
    logged rank 0's epoch sums for both)."""
    args = ["--set", "search.drop_path=0.2", "--set", "checkpoint.every_steps=1",
            "--set", "checkpoint.keep_last=100"]  # fmt: skip
    whole = tmp_path / "whole"
    run(["search", str(experiment), "--out", str(whole), *args], 2)
    ckpt = checkpoint.load(next((whole / "checkpoints").glob("step-*.pt")))
    assert ckpt["world_size"] == 2 and len(ckpt["ranks"]) == 2
    masks = [rank["generators"][0] for rank in ckpt["ranks"]]
    assert not torch.equal(masks[0], masks[1])  # each process's own drop-path generator
    cut = cut_after(whole, tmp_path / "cut", 5)  # epoch 2, step 2 of 3
    out = run(["search", str(cut), "--resume", "--quiet"], 2)
    assert "resumed from" in out and "warning" not in out
    probs = [json.loads((d / "search.json").read_text())["arch_probs"] for d in (whole, cut)]
    assert probs[0] == probs[1]  # bit for bit
    assert (whole / "metrics.jsonl").read_text() == (cut / "metrics.jsonl").read_text()
    assert len(epoch_lines(whole)) == 3  # the resumed run's log: its first life's, then these
    assert epoch_lines(whole)[1:] == epoch_lines(cut)[-2:]
    one = tmp_path / "one"  # saved by one process, resumed by two: said
    run(["search", str(experiment), "--out", str(one), *args], 1)
    other = run(["search", str(cut_after(one, tmp_path / "one-cut", 5)), "--resume"], 2)
    assert "saved by 1 process(es), resumed by 2: the run goes on, not exactly" in other


def signalled_search(dnas: list[str], experiment: Path, out: Path, pick: slice | None,
                     *args: str) -> str:  # fmt: skip
    """A long search under ``torchrun`` (``dnas`` starts the CLI: ``-m dnas`` or a script)
    whose workers ``pick`` (None: the launcher, which signals every process's group) get
    SIGTERM once it has written a checkpoint; its stderr."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc_per_node=2", *dnas]  # fmt: skip
    proc = subprocess.Popen([*launcher, "search", str(experiment), "--out", str(out), "--quiet",
                             "--set", "search.epochs=400", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"},
                            start_new_session=True)  # fmt: skip
    try:
        workers = wait_for_checkpoint(proc, out, 300)
        assert len(workers) == 2
        for worker in [proc.pid] if pick is None else workers[pick]:
            os.kill(int(worker), signal.SIGTERM)
        return proc.communicate(timeout=120)[1]
    finally:  # a hung run: none of its processes outlives the test
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def test_a_signal_to_one_process_stops_every_process_at_the_same_step(experiment, tmp_path):
    """torchrun signals its processes one by one, and a scheduler may signal one alone: every
    process stops after the same step, rank 0 with its checkpoint (one stopping a step early
    left the other blocked in the next step's all-reduce)."""
    out = tmp_path / "long"
    err = signalled_search(["-m", "dnas"], experiment, out, slice(-1, None))
    stopped = [line for line in err.splitlines() if line.startswith("interrupted (SIGTERM) at")]
    assert len(stopped) == 1, err[-3000:]  # rank 0's line; every process ends with exit 143
    assert err.count("exitcode  : 143") == 2, err[-3000:]  # torchrun's report of both
    frames = [line for line in err.splitlines() if line.strip().startswith('File "')]
    assert not [f for f in frames if "/dnas/" in f], err[-3000:]  # torchrun's own trace only
    newest = checkpoint.load(sorted((out / "checkpoints").glob("step-*.pt"))[-1])["position"]
    assert f"at epoch {newest['epoch'] + 1} step {newest['step']};" in stopped[0]
    assert not (out / LOCK).exists()


WARNS = """
import sys, warnings, click
import dnas.cli
@click.command()
def warns():
    warnings.warn("input_size 100x100: the strides do not divide it")
dnas.cli.cli = warns
dnas.cli.main()
"""


def as_rank(script: str, rank: str) -> subprocess.CompletedProcess:
    """``script`` (a stand-in command run through ``dnas.cli.main``) as torchrun's process
    ``rank`` runs it."""
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env={**os.environ, "RANK": rank}, timeout=120)  # fmt: skip


@pytest.mark.parametrize("rank", ["0", "1"])
def test_only_rank_0_of_a_torchrun_job_prints_the_warnings(rank):
    """Every rank reads the same config and would repeat its warnings: rank 0 alone says them."""
    done = as_rank(WARNS, rank)
    assert done.returncode == 0, done.stderr
    expected = "warning: input_size 100x100: the strides do not divide it\n" if rank == "0" else ""
    assert done.stderr == expected


@pytest.mark.parametrize(("rank", "local_rank"), [("0", "0"), ("1", "1"), ("2", "0")])
def test_a_command_that_runs_in_one_process_is_refused_under_torchrun(rank, local_rank,
                                                                       monkeypatch):  # fmt: skip
    """dnas sweep under torchrun ran a sweep per process, each locked out by the other's. The
    first process of each node says so (a node's console shows its own processes' lines)."""
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", rank)
    monkeypatch.setenv("LOCAL_RANK", local_rank)
    done = CliRunner().invoke(cli, ["sweep", "exp.yaml", "-o", "runs/sweep", "--weights", "1"])
    assert done.exit_code == 1
    expected = ("Error: dnas sweep runs in one process: run it without torchrun (under it: "
                "search, train, eval)\n")  # fmt: skip
    assert done.output == (expected if local_rank == "0" else "")


def test_the_resume_hint_of_a_torchrun_process_is_a_torchrun_command(monkeypatch):
    from dnas.engine.rundir import command_line

    monkeypatch.setattr(sys, "argv", ["/x/dnas/__main__.py", "search", "e.yaml", "-o", "r"])
    assert command_line() == "dnas search e.yaml -o r"
    monkeypatch.setenv("WORLD_SIZE", "8")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert command_line() == "torchrun --nnodes 2 --nproc_per_node 4 -m dnas search e.yaml -o r"


STOPS = """
import signal, click
import dnas.cli
from dnas.errors import Signalled
@click.command()
def stops():
    raise Signalled(signal.SIGTERM, "during set-up; the run had not begun")
dnas.cli.cli = stops
dnas.cli.main()
"""


@pytest.mark.parametrize("rank", ["0", "1"])
def test_a_signal_during_set_up_is_said_once_under_torchrun(rank):
    """torchrun signals every process: each stops with 143, rank 0 alone prints the line."""
    done = as_rank(STOPS, rank)
    assert done.returncode == 143
    expected = "interrupted (SIGTERM) during set-up; the run had not begun\n"
    assert done.stderr == (expected if rank == "0" else "")


def test_a_checkpoint_of_an_earlier_version_resumes_from_rank_0s_state_saying_so():
    """Checkpoints before 2026-12-07 hold rank 0's state alone and no process count: one
    process goes on silently, several are told (not that it was saved by one process)."""
    from types import SimpleNamespace

    from dnas.engine.distributed import World
    from dnas.engine.loop import EpochLoop

    old = {"sums": {"train/loss": 1.0}, "rng": {"torch": "r0"}}
    for size, said in ((1, []), (2, ["holds rank 0's random states and sums alone"])):
        lines: list[str] = []
        run = SimpleNamespace(world=World(rank=size - 1, size=size),
                              report=SimpleNamespace(line=lines.append))  # fmt: skip
        assert EpochLoop.own_rank_state(run, dict(old), Path("step-1.pt"))["rng"] == {"torch": "r0"}
        assert len(lines) == len(said)
        assert all(s in line for s, line in zip(said, lines, strict=True))
    new = {**old, "world_size": 2, "ranks": [{"rng": "r0"}, {"rng": "r1"}]}
    run = SimpleNamespace(world=World(rank=1, size=2), report=SimpleNamespace(line=print))
    assert EpochLoop.own_rank_state(run, new, Path("step-1.pt")) == {"rng": "r1"}


def test_a_signal_that_arrives_during_the_agreement_is_kept_for_the_next(monkeypatch):
    """The handler can run inside the all-reduce that agrees on a stop: the other processes
    agreed on none, so this one goes on with them, but keeps the signal for the next step
    (the agreed None was assigned over it, and the run never stopped: a torchrun test hung)."""
    from types import SimpleNamespace

    from dnas.engine import distributed
    from dnas.engine.loop import EpochLoop

    run = SimpleNamespace(interrupted=None)

    def during(signum: int | None) -> int | None:
        run.interrupted = signal.SIGTERM  # the handler, mid-collective
        return signum  # what every process had before it: none

    monkeypatch.setattr(distributed, "signal_over_world", during)
    assert EpochLoop.signalled_everywhere(run) is False and run.interrupted == signal.SIGTERM
    monkeypatch.setattr(distributed, "signal_over_world", lambda signum: signum)
    assert EpochLoop.signalled_everywhere(run) is True and run.interrupted == signal.SIGTERM


LEAVES = """
import os, sys
from pathlib import Path
from dnas.engine.distributed import init_world, shutdown
world = init_world("cpu")
import torch._dynamo  # as a meta-device forward imports it, after the group exists
shutdown()
threads = [Path(f"/proc/self/task/{t}/comm").read_text() for t in os.listdir("/proc/self/task")]
Path(sys.argv[1], f"rank{world.rank}.txt").write_text("".join(sorted(threads)))
"""


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="threads listed by /proc")
def test_the_process_group_and_its_threads_are_gone_after_shutdown(tmp_path):
    """torch.distributed.nn, first imported after init (torch._dynamo imports it), bound the
    group as its functions' default argument; the group outlived destroy_process_group and its
    gloo threads were torn down by the interpreter's exit: SIGABRT ('terminate called without
    an active exception'), about 1 two-process run in 20."""
    script = tmp_path / "leaves.py"
    script.write_text(LEAVES)
    done = torchrun([str(script), str(tmp_path)], 300)
    assert done.returncode == 0, done.stderr[-2000:]
    for rank in (0, 1):
        threads = (tmp_path / f"rank{rank}.txt").read_text().split()
        assert threads and not any("gloo" in name for name in threads), threads


def test_a_process_that_finds_another_checkpoint_than_rank_0_stops_every_process(monkeypatch):
    """A node that does not see the run directory would start afresh while rank 0 resumes,
    and the two would wait on each other's collectives; every process stops, naming both."""
    from types import SimpleNamespace

    from dnas.engine import distributed
    from dnas.engine.loop import EpochLoop
    from dnas.errors import DnasError

    run = SimpleNamespace(checkpoints=SimpleNamespace(directory=Path("runs/s/checkpoints")))
    found = ({}, Path("runs/s/checkpoints/search-3.pt"))
    monkeypatch.setattr(distributed, "all_gather_object", lambda mine: [mine, mine])
    EpochLoop.check_same_checkpoint(run, found)  # the same everywhere: goes on
    monkeypatch.setattr(distributed, "all_gather_object", lambda mine: [mine, None])
    said = r"checkpoints: rank 1 resumes from no checkpoint, rank 0 from search-3.pt; "
    with pytest.raises(DnasError, match=said + ".*shared storage"):
        EpochLoop.check_same_checkpoint(run, found)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_two_nodes_of_one_process_search_as_one_node_of_two(experiment, tmp_path):
    """Two torchrun launchers (--nnodes 2, one process each; node 1's process has rank 1 and
    local rank 0) run the search of one launcher with two processes, bit for bit; only rank 0
    writes and prints."""
    run(["search", str(experiment), "--out", str(tmp_path / "one-node")], 2)
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1",
                "--master_addr=127.0.0.1", f"--master_port={free_port()}"]  # fmt: skip
    command = ["-m", "dnas", "search", str(experiment), "--out", str(tmp_path / "two-nodes")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launched = [subprocess.Popen([*launcher, f"--node_rank={n}", *command], text=True, env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                for n in (0, 1)]  # fmt: skip
    outputs = [node.communicate(timeout=600) for node in launched]
    assert [node.returncode for node in launched] == [0, 0], outputs[0][1][-2000:]
    assert "2 processes" in outputs[0][0] and outputs[1][0] == ""
    one, two = (json.loads((tmp_path / d / "search.json").read_text())["arch_probs"]
                for d in ("one-node", "two-nodes"))  # fmt: skip
    assert one == two


def torchrun_fails(args: list[str]) -> str:
    """``dnas ARGS`` under torchrun with 2 processes, which must fail (within a minute, not
    wait for ever); its stderr."""
    done = torchrun(["-m", "dnas", *args], 60)
    assert done.returncode == 1, done.stderr[-2000:]
    return done.stderr


def test_a_locked_run_directory_stops_every_process_of_a_torchrun_run(experiment, tmp_path):
    """Rank 0 alone takes the lock: the others went on into set-up's first collective while
    rank 0 waited for them at its exit, for ever."""
    out = tmp_path / "locked"
    out.mkdir()
    lock = RunLock(out)
    lock.acquire(print)  # this process runs there
    try:
        said = torchrun_fails(["search", str(experiment), "--out", str(out)])
    finally:
        lock.release()
    assert said.count(f"Error: rank 0: {out}: in use by process {os.getpid()}") == 1


def test_a_set_up_error_that_every_process_meets_is_said_once(experiment, tmp_path):
    said = torchrun_fails(["train", str(experiment), "--arch", "nope.yaml", "--out",
                           str(tmp_path / "t")])  # fmt: skip
    assert said.count("Error: --arch nope.yaml: no such file or shipped space") == 1
    assert not (tmp_path / "t").exists()


def test_processes_that_fail_apart_are_named_in_one_line(monkeypatch):
    """An error met by some processes, or other errors by others, is raised on every process
    (none goes on alone into a collective), naming the ranks; one met by all, as it is."""
    from dnas.engine import distributed
    from dnas.engine.distributed import failing_together
    from dnas.errors import AgreedError, ConfigError, DnasError

    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: True)

    def gathered(rank_0: str | None, rank_2: str | None) -> None:
        """What every process said, this process being rank 1."""
        monkeypatch.setattr(distributed, "all_gather_object", lambda mine: [rank_0, mine, rank_2])

    missing = FileNotFoundError(2, "no such file", "b")
    gathered(None, None)
    with pytest.raises(AgreedError, match=r"^rank 1: b: no such file$"), failing_together():
        raise missing
    gathered(None, "x")
    with pytest.raises(AgreedError, match=r"^rank 1: b: no such file; rank 2: x$"),\
            failing_together():  # fmt: skip
        raise missing
    gathered("a: k: bad", "a: k: bad")
    with pytest.raises(AgreedError, match=r"^ranks 0, 2: a: k: bad$"), failing_together():
        pass  # this process went well, the others did not
    gathered("a: k: bad", "a: k: bad")
    with pytest.raises(ConfigError, match=r"^a: k: bad$") as alike, failing_together():
        raise ConfigError("a", "k", "bad")
    assert alike.value.agreed and not DnasError("x").agreed


def test_weights_that_rank_0_cannot_evaluate_stop_every_process_in_one_line(experiment,
                                                                             tmp_path):  # fmt: skip
    """Rank 0 checks the weights: the others waited for its results in a broadcast, and
    failed with gloo's traceback when it left."""
    weights = tmp_path / "bad.pt"
    weights.write_bytes(b"garbage")
    said = torchrun_fails(["eval", str(experiment), "--arch", ARCH, "--weights", str(weights),
                           "--out", str(tmp_path / "e")])  # fmt: skip
    assert said.count(f"Error: rank 0: {weights}: not a PyTorch checkpoint") == 1
    assert "[rank1]" not in said and not (tmp_path / "e").exists()


def test_leaving_after_a_process_that_failed_late_is_quiet(monkeypatch):
    """The exit barrier of a process whose work is done fails when another process left
    without it (its own error): this one still leaves the group, without gloo's traceback."""
    from dnas.engine import distributed

    left = []

    def peer_gone() -> None:
        raise RuntimeError("Connection closed by peer [127.0.0.1]:29500")

    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(distributed.dist, "barrier", peer_gone)
    monkeypatch.setattr(distributed.dist, "destroy_process_group", lambda: left.append(True))
    distributed.shutdown(together=True)
    assert left == [True]


SLOW_SAVE = """
import os, sys, time
from dnas.checkpoint import Checkpointer
from dnas.cli import main
write = Checkpointer.save
def slow(self, *args, **kwargs):  # a large checkpoint on a slow disk
    if os.environ["RANK"] == "0":
        time.sleep(2)
    return write(self, *args, **kwargs)
Checkpointer.save = slow
main()
"""


def test_a_stopped_run_leaves_once_rank_0_has_written_its_checkpoint(experiment, tmp_path):
    """The other processes left as soon as they had handed rank 0 their state; torchrun then
    stopped rank 0 in the middle of writing the stop checkpoint ('interrupted again')."""
    script = tmp_path / "slow_save.py"
    script.write_text(SLOW_SAVE)
    out = tmp_path / "slow"  # every worker signalled, as torchrun passes a scheduler's on
    err = signalled_search([str(script)], experiment, out, slice(None), "--set",
                           "checkpoint.every_steps=1")  # fmt: skip
    stopped = [line for line in err.splitlines() if line.startswith("interrupted (SIGTERM)")]
    assert len(stopped) == 1 and "checkpoint saved" in stopped[0], err[-3000:]
    newest = checkpoint.load(sorted((out / "checkpoints").glob("step-*.pt"))[-1])["position"]
    assert f"at epoch {newest['epoch'] + 1} step {newest['step']};" in stopped[0]


def test_a_broken_validation_item_in_a_loader_worker_stops_every_process_in_one_line(tmp_path):
    """A loader worker's error came back with the worker's traceback (the rank prefix hid it
    from the one-line rule); the item lies in rank 1's slice of the split."""
    write_synthetic_mpii(tmp_path, n_train=16, n_val=4, seed=0, image_size=64)
    broken = tmp_path / "images" / "valid_000002.jpg"
    broken.write_text("garbage")
    exp = write_experiment(tmp_path / "exp.yaml", tmp_path, workers=2,
                           train={"epochs": 1, "batch_size": 4, "steps_per_epoch": 2})  # fmt: skip
    said = torchrun_fails(["train", str(exp), "--arch", ARCH, "--out", str(tmp_path / "t")])
    errors = [line for line in said.splitlines() if line.startswith("Error:")]
    assert errors == [f"Error: rank 1: {broken}: missing or unreadable image"], said[-3000:]
    frames = [line for line in said.splitlines() if line.strip().startswith('File "')]
    assert not [f for f in frames if "/dnas/" in f], said[-3000:]  # torchrun's own trace only


def test_a_process_that_cannot_join_says_why_whichever_it_is(experiment, tmp_path, monkeypatch):
    """An error before the group exists is taken as every process's and said by the first of
    each node; a failure to join is this process's own (here: no rendezvous address)."""
    for name, value in {"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1"}.items():
        monkeypatch.setenv(name, value)
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    done = CliRunner().invoke(cli, ["search", str(experiment), "--out", str(tmp_path / "s")])
    assert done.exit_code == 1
    assert done.output.startswith("Error: cannot join the torchrun process group: ")
    assert not (tmp_path / "s").exists()


LOGGED_PREDICT = """
import os, sys
from dnas.cli import main
from tasks.pose.task import PoseTask
predict = PoseTask.predict
def logged(self, model, loader, device, keep=0):
    with open(os.environ["PREDICT_LOG"], "a") as log:
        log.write(f"{os.environ['RANK']} {list(loader.sampler)} {len(loader.dataset)} {keep}\\n")
    return predict(self, model, loader, device, keep)
PoseTask.predict = logged
main()
"""


def test_two_processes_evaluate_a_slice_each_and_score_as_one(experiment, tmp_path):
    """Rank 0 evaluated the whole split while the others waited in a collective (gloo gives
    up after 30 minutes); now each predicts its slice and rank 0 scores them together."""
    weights = tmp_path / "t" / "model.pt"
    run(["train", str(experiment), "--arch", ARCH, "--out", str(tmp_path / "t")], 1)
    run(["eval", str(experiment), "--weights", str(weights), "--out", str(tmp_path / "e1"),
         "--save-vis", "3"], 1)  # fmt: skip
    script = tmp_path / "logged_predict.py"
    script.write_text(LOGGED_PREDICT)
    log = tmp_path / "predict.log"
    args = ["eval", str(experiment), "--weights", str(weights), "--out", str(tmp_path / "e2"),
            "--save-vis", "3"]  # fmt: skip
    done = torchrun([str(script), *args], 300, PREDICT_LOG=str(log))
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(log.read_text().splitlines()) == ["0 [0, 1] 4 3", "1 [2, 3] 4 1"]
    one, two = (json.loads((tmp_path / e / "results.json").read_text()) for e in ("e1", "e2"))
    files = {k: v.replace(str(tmp_path / "e1"), str(tmp_path / "e2"))
             for k, v in one.pop("files").items()}  # fmt: skip
    assert two.pop("files") == files and "visualisations" in files
    assert sorted(p.name for p in (tmp_path / "e2" / "vis").iterdir()) == \
        ["0000.png", "0001.png", "0002.png"]  # fmt: skip
    for key, value in one.items():
        if isinstance(value, float):
            assert two[key] == pytest.approx(value, abs=1e-6), key  # batch sizes differ
        elif key != "weights" and "e1" not in str(value):
            assert two[key] == value, key
    assert done.stdout.count("Shoulder") == 1  # rank 0 alone prints the table


NAN_LOSS = """
from dnas.cli import main
from tasks.pose.task import PoseTask
loss = PoseTask.loss
PoseTask.loss = lambda self, output, batch: loss(self, output, batch) * float("nan")
main()
"""


def test_a_diverged_step_is_said_once(experiment, tmp_path):
    """The step's stats are the world's means, so every process meets a NaN loss at the same
    step: each said it, one line per process."""
    script = tmp_path / "nan_loss.py"
    script.write_text(NAN_LOSS)
    done = torchrun([str(script), "train", str(experiment), "--arch", ARCH, "--out",
                     str(tmp_path / "t")], 120)  # fmt: skip
    assert done.returncode == 1, done.stderr[-2000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("Error:")]
    assert errors == ["Error: non-finite train/loss (nan) at step 0; lower the learning rate"], \
        done.stderr[-3000:]  # fmt: skip


OTHER_NODE = """
import os, sys
from dnas.cli import main
if os.environ["RANK"] == "1":  # a node that lacks the data: its experiment's root is not there
    sys.argv = [os.environ["RANK1_EXPERIMENT"] if a == os.environ["EXPERIMENT"] else a
                for a in sys.argv]
main()
"""


def test_data_that_one_process_lacks_stops_every_process_naming_it(experiment, tmp_path):
    """Rank 1 alone cannot read the data (a node without it): every process stops in set-up,
    and rank 0 says rank 1's reason, which only rank 1 met."""
    lacking = tmp_path / "lacking.yaml"
    exp = yaml.safe_load(experiment.read_text())
    exp["task"]["root"] = str(tmp_path / "not-here")
    lacking.write_text(yaml.safe_dump(exp))
    script = tmp_path / "other_node.py"
    script.write_text(OTHER_NODE)
    done = torchrun([str(script), "train", str(experiment), "--arch", ARCH, "--out",
                     str(tmp_path / "t")], 120, EXPERIMENT=str(experiment),
                    RANK1_EXPERIMENT=str(lacking))  # fmt: skip
    assert done.returncode == 1, done.stderr[-2000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("Error:")]
    assert errors == [f"Error: rank 1: {lacking}: task.root: no such directory "
                      f"'{tmp_path / 'not-here'}'"], done.stderr[-3000:]  # fmt: skip
    assert not (tmp_path / "t").exists()


def test_loader_workers_are_spawned_in_a_process_group(monkeypatch):
    """Forked from a process with the group's threads, a worker deadlocked in its first
    instruction now and then (Python 3.11: a thread held the interpreter's lock at the fork);
    spawned, it runs no code of the process before its own interpreter starts."""
    from dnas.engine import distributed, workers

    items = list(range(4))
    assert workers.worker_start(items, 2) is None  # no group: forked as usual
    monkeypatch.setattr(distributed, "in_process_group", lambda: True)
    assert workers.worker_start(items, 0) is None
    assert workers.worker_start(items, 2).get_start_method() == "spawn"


class Unpicklable(torch.utils.data.Dataset):
    def __init__(self) -> None:
        self.read = lambda i: i  # a plugin's closure: workers get the dataset pickled

    def __len__(self) -> int:
        return 4


def test_a_dataset_that_workers_cannot_receive_is_one_line(monkeypatch):
    from dnas.engine import distributed, sampling

    monkeypatch.setattr(distributed, "in_process_group", lambda: True)
    with pytest.raises(DnasError, match=r"^dataset Unpicklable: cannot be sent to loader workers "
                                        r"under torchrun \(.*\); make it picklable, or set "
                                        r"workers: 0$"):  # fmt: skip
        sampling.make_loader(Unpicklable(), 2, 2)
    sampling.make_loader(Unpicklable(), 2, 0)  # no workers: nothing to send


def test_two_process_training_with_loader_workers_is_the_same_run(experiment, tmp_path):
    """Spawned workers load the same items, augmented alike: the same weights as without
    workers, bit for bit."""
    for workers in (0, 2):
        run(["train", str(experiment), "--arch", ARCH, "--out", str(tmp_path / f"w{workers}"),
             "--set", f"workers={workers}"], 2)  # fmt: skip
    plain, forked = (checkpoint.load(tmp_path / f"w{w}" / "model.pt") for w in (0, 2))
    assert all(torch.equal(plain[key], forked[key]) for key in plain)


def children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (read from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="processes listed by /proc")
def test_loader_workers_leave_with_a_killed_process(experiment, tmp_path):
    """Killed while its workers started, a process left them waiting for ever (torch's
    watchdog reads the parent once a worker has started; a spawned one takes seconds); a fork
    server's workers outlived it too (their parent was the server, which they kept alive)."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc_per_node=2", "-m", "dnas"]  # fmt: skip
    job = subprocess.Popen([*launcher, "search", str(experiment), "--out", str(tmp_path / "s"),
                            "--set", "workers=2", "--set", "search.epochs=50"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
    try:
        deadline, workers = time.monotonic() + 90, []
        while len(workers) < 4 and time.monotonic() < deadline:  # 2 loaders' workers a rank
            time.sleep(0.5)
            ranks = children(job.pid)
            workers = [w for r in ranks for w in children(r)]
        assert len(workers) >= 4, "the workers never started"
        os.kill(ranks[0], signal.SIGKILL)
        deadline = time.monotonic() + 30
        while any(map(alive, workers)) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not [w for w in workers if alive(w)]
    finally:
        job.kill()
        job.wait()


def test_a_stop_signal_to_the_launcher_stops_a_run_with_loader_workers(experiment, tmp_path):
    """torchrun passes SIGTERM to each process's group, loader workers included: spawned
    workers died of it and every process failed mid-step ('DataLoader worker killed by
    signal'), with no stop checkpoint; the run stops at a step boundary, as without workers."""
    out = tmp_path / "stopped"
    err = signalled_search(["-m", "dnas"], experiment, out, None, "--set", "workers=2")
    stopped = [line for line in err.splitlines() if line.startswith("interrupted (SIGTERM) at")]
    assert len(stopped) == 1 and "checkpoint saved" in stopped[0], err[-3000:]
    assert "DataLoader worker" not in err, err[-3000:]
