"""dnas.allocator: a process that keeps freed memory takes no page faults for the tensors of a
repeated training step, where glibc's default thresholds give it fresh pages every step; latency
tables record which of the two their nets were timed under."""

import json
import os
import platform
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from conftest import TINY_SPACE

from cost_models.latency_build import build_lut, recorded_allocator
from cost_models.lut_commands import allocator_warning, make_bench
from dnas.allocator import DEFAULT, ENVIRONMENT, KEPT, keep_freed_memory, untouched
from dnas.cli import cli

REPO = Path(__file__).resolve().parents[1]
GLIBC = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"

STEPS = """
import resource, sys, torch
from torch import nn
from dnas.allocator import allocator_in_use, keep_freed_memory
torch.set_num_threads(2)  # the allocation pattern depends on the threads (arenas)
if sys.argv[1] == "kept":
    keep_freed_memory()
print(allocator_in_use())
torch.manual_seed(0)
net = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                    nn.Conv2d(32, 32, 3, padding=1, groups=32), nn.BatchNorm2d(32), nn.ReLU(),
                    nn.Conv2d(32, 8, 1))
x = torch.randn(4, 3, 128, 128)
def step():
    net(x).square().mean().backward()
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
    step()
counts = []
for _ in range(9):
    before = faults()
    step()
    counts.append(faults() - before)
print(sorted(counts)[4])
"""


def run_steps(mode: str, **env: str) -> tuple[str, float]:
    """What the allocator does, and the median minor page faults of a step after a warm-up
    (an odd step faults as an arena grows), in a fresh interpreter (the thresholds belong to
    a process) that keeps freed memory if ``mode`` is "kept", with ``env`` added."""
    names = (*ENVIRONMENT, "GLIBC_TUNABLES", "LD_PRELOAD")
    clean = {k: v for k, v in os.environ.items() if k not in names}
    env = {**clean, **env, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", STEPS, mode], env=env, capture_output=True,
                          text=True, check=True)  # fmt: skip
    allocator, faults = done.stdout.strip().splitlines()
    return allocator, float(faults)


@pytest.mark.skipif(not GLIBC, reason="sets glibc's malloc thresholds")
def test_kept_memory_serves_a_repeated_step_without_page_faults():
    """A small conv net's training step at 4x128x128 on 2 threads: with glibc's own
    thresholds it faulted on 8,000-20,000 pages every time (ten processes); with freed memory
    kept, on none (now and then 512: a thread's arena growing by 2 MB)."""
    allocator, default = run_steps("plain")
    assert allocator == DEFAULT
    allocator, kept = run_steps("kept")
    assert allocator == KEPT
    assert default > 2000 and kept < default / 10


@pytest.mark.skipif(not GLIBC, reason="reads glibc's malloc variables")
@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"MALLOC_TRIM_THRESHOLD_": "131072"},
         "glibc malloc as the environment sets it (MALLOC_TRIM_THRESHOLD_)"),
        ({"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=131072"},
         "glibc malloc as the environment sets it (glibc.malloc.mmap_threshold)"),
    ],
)  # fmt: skip
def test_what_the_environment_sets_is_left_alone(env, expected):
    allocator, _ = run_steps("kept", **env)
    assert allocator == expected


def test_a_preloaded_allocator_is_left_alone(monkeypatch):
    """jemalloc, TCMalloc or mimalloc in LD_PRELOAD: glibc's thresholds are not the ones in
    use (read without starting a process: ``untouched`` only reads the environment)."""
    monkeypatch.setenv("LD_PRELOAD", "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4")
    if GLIBC:
        assert (
            untouched()
            == "preloaded allocator (/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4)"
        )
    monkeypatch.setenv("LD_PRELOAD", "libfoo.so")
    assert untouched() == (DEFAULT if GLIBC else "system allocator (not glibc)")


QUICK = ["--min-time", "0.01", "--allow-noise", "--calibration", "3"]


def lut(*args: str) -> Result:
    return CliRunner().invoke(cli, ["lut", *args])


def test_a_table_records_its_allocator_and_its_check_times_under_the_same(tmp_path):
    """``--keep-freed-memory`` tables are timed, and checked, with freed memory kept; plain
    ones in fresh processes that leave the allocator alone, even when the process asking keeps
    its memory; a check that cannot time as the table was says so in one line."""
    kept, plain = tmp_path / "kept.json", tmp_path / "plain.json"
    common = ["--space", str(TINY_SPACE), "--input", "64x64", *QUICK]
    built = lut("build", *common, "--keep-freed-memory", "--rounds", "1", "-o", str(kept))
    assert built.exit_code == 0, built.output
    assert json.loads(kept.read_text())["meta"]["allocator"] == keep_freed_memory()
    built = lut("build", *common, "--rounds", "2", "-o", str(plain))  # fresh processes
    assert built.exit_code == 0, built.output
    assert json.loads(plain.read_text())["meta"]["allocator"] == untouched()
    check = ["--samples", "2", "--min-time", "0.01", "--allow-noise", "--format", "json"]
    same = lut("check", "--table", str(kept), *check, "--rounds", "2")
    assert same.exit_code == 0, same.output
    assert json.loads(same.stdout)["allocator"] == {"table": keep_freed_memory(),
                                                    "check": keep_freed_memory()}  # fmt: skip
    assert "was timed with" not in same.stderr
    if keep_freed_memory() == untouched():  # not glibc: nothing to tell apart
        return
    # in this process, which keeps its memory now: not as the plain table was timed
    other = lut("check", "--table", str(plain), *check, "--rounds", "1", "--in-process")
    assert other.exit_code == 0, other.output
    assert json.loads(other.stdout)["allocator"] == {"table": untouched(), "check": KEPT}
    [line] = [x for x in other.stderr.splitlines() if "was timed with" in x]
    assert line == (f"warning: {plain} was timed with {untouched()}, this check with {KEPT}: "
                    f"a net's time differs between the two (dnas.allocator), so the errors "
                    f"include that")  # fmt: skip


def test_a_table_from_before_the_allocator_was_recorded_counts_as_timed_plain_here(tmp_path):
    """Such tables were timed by processes that left the allocator alone: glibc's defaults on
    a glibc machine, the system's allocator elsewhere (no warning off glibc)."""
    path = tmp_path / "lut.json"
    assert recorded_allocator({}) == untouched()
    assert recorded_allocator({"allocator": KEPT}) == KEPT
    assert allocator_warning({"table": DEFAULT, "check": DEFAULT}, path) is None
    assert allocator_warning({"table": DEFAULT, "check": KEPT}, path).startswith(
        f"warning: {path} was timed with {DEFAULT}, this check with {KEPT}"
    )


@pytest.mark.skipif(not GLIBC, reason="only glibc's malloc can keep freed memory")
def test_a_plain_table_timed_in_a_process_that_keeps_memory_says_so():
    """An API user who searched, then builds a plain table in the same process, gets a table
    of a kept process (labelled so) and one warning line saying why; fresh processes do not."""
    from dnas.space.graph import load_space

    keep_freed_memory()  # as a search in this process would have
    space = load_space(str(TINY_SPACE))

    def build(rounds: int, in_process: bool) -> dict:
        bench = make_bench("torch", "cpu", 1, 0.01, rounds, 0.25, 0.08, 0.25, True, in_process)
        return build_lut(space, (64, 64), 16, 1, bench, calibration=0, progress=False)

    with pytest.warns(UserWarning, match=r"timing in this process, which keeps freed memory"):
        table = build(1, True)
    assert table["meta"]["allocator"] == KEPT
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert build(2, False)["meta"]["allocator"] == untouched()
