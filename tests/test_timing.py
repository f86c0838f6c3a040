"""Timing with torch.utils.benchmark and the noise guard: re-measuring, drift, busy machines."""

from __future__ import annotations

import json
import os
import subprocess
import time

import numpy as np
import pytest
import torch.utils.benchmark as benchmark
from click.testing import CliRunner
from conftest import TINY_SPACE, start_busy, stop_busy

from cost_models.cpu_use import CpuClock, busy_seconds, others_cores, read_clock
from cost_models.lut_commands import noise_line, unsteady_warning
from cost_models.timing import (
    MIN_BLOCKS,
    BlockTimer,
    NoiseGuard,
    NoisePolicy,
    NoiseReport,
    NoisyMachine,
    Timing,
    interleave,
    measure,
    median_of,
    shared_medians,
)
from dnas.cli import cli


class Script:
    """A fake timer: each callable's timings are played back in order (the last one repeats)."""

    def __init__(self, plan: dict[str, list[Timing]]) -> None:
        self.plan = {name: list(timings) for name, timings in plan.items()}
        self.calls: list[str] = []

    def fn(self, name: str):
        def call() -> str:
            return name

        return call

    def __call__(self, fn) -> Timing:
        name = fn()
        self.calls.append(name)
        queue = self.plan[name]
        return queue.pop(0) if len(queue) > 1 else queue[0]


class Load:
    """A fake CPU clock: each reading comes ``step`` seconds after the last (None: as much as
    really passed), while this process keeps 2 cores busy and other processes ``cores[i]`` in
    the interval ending at reading i (the last value repeats)."""

    def __init__(self, *cores: float, step: float | None = 1.0) -> None:
        self.cores, self.step = list(cores), step
        self.clock, self.real = CpuClock(0.0, 0.0, 0.0), time.monotonic()

    def __call__(self) -> CpuClock:
        rate = self.cores.pop(0) if len(self.cores) > 1 else self.cores[0]
        step = self.step if self.step is not None else time.monotonic() - self.real
        self.real += step
        wall, machine, own = vars(self.clock).values()
        self.clock = CpuClock(wall + step, machine + (2.0 + rate) * step, own + 2.0 * step)
        return self.clock


def steady(ms: float) -> Timing:
    return Timing(ms, 0.01 * ms, 10)


def noisy(ms: float) -> Timing:
    return Timing(ms, 0.5 * ms, 10)


def test_measure_times_a_known_sleep():
    timing = measure(lambda: time.sleep(0.002), threads=1, min_run_time=0.1)
    assert 1.9 < timing.median_ms < 6.0 and timing.runs >= MIN_BLOCKS
    assert timing.iqr_ms >= 0 and timing.spread == timing.iqr_ms / timing.median_ms


def test_a_timing_holds_its_blocks_when_the_machine_slows_down_under_it():
    """A 10 ms call whose machine turns 30x slower after its second call: the second block
    alone passes min_run_time, yet the timing goes on to ``MIN_BLOCKS`` blocks, so its IQR is
    one of four 300 ms blocks and one 10 ms (one or two blocks' IQR of 0 read as steady)."""
    clock = SpeedShift(at=0.02, factor=30.0)
    timing = measure(lambda: clock.work(10e-3), threads=1, min_run_time=0.1, timer=clock.timer)
    assert timing.runs == MIN_BLOCKS
    assert timing.median_ms == pytest.approx(300.0)
    assert timing.iqr_ms == pytest.approx(0.25 * 290.0)  # blocks 10, 300, 300, 300 ms


class SimulatedClock:
    """A deterministic clock: ``tick(s)`` is a call that takes s seconds, and reading the
    clock costs ``overhead`` seconds, as a GPU synchronisation does."""

    def __init__(self, overhead: float) -> None:
        self.now, self.overhead = 0.0, overhead

    def tick(self, seconds: float) -> None:
        self.now += seconds

    def timer(self) -> float:
        self.now += self.overhead
        return self.now

    def make(self, cls, call_s: float):
        return cls(stmt=f"tick({call_s})", globals={"tick": self.tick}, timer=self.timer)


def test_blocks_stay_short_when_the_timer_itself_is_slow():
    """A 20 us timer around a 50 us call: torch's rule (overhead under 1e-4 of a block) asks
    for 0.5 s blocks of 10 000 calls; ``BlockTimer`` scales its 5.02 ms block of 100 calls to
    the 20 ms goal (overhead 1e-3 of it), 398 calls, so a 0.2 s timing has 11 blocks."""
    clock = SimulatedClock(20e-6)
    assert clock.make(benchmark.Timer, 50e-6)._estimate_block_size(0.2) == 10_000
    ours = clock.make(BlockTimer, 50e-6).blocked_autorange(min_run_time=0.2)
    assert ours.number_per_run == 398 and len(ours.times) == 11  # 11 x 19.92 ms >= 0.2 s
    assert ours.median == pytest.approx(50e-6 + 20e-6 / 398)
    # the goal is at most a quarter of min_run_time (10 ms here): 199 calls
    assert clock.make(BlockTimer, 50e-6)._estimate_block_size(0.04) == 199
    # a call longer than the goal is a block of its own
    assert clock.make(BlockTimer, 30e-3)._estimate_block_size(0.1) == 1


class SpeedShift:
    """A deterministic clock on a machine that runs ``factor`` times slower from ``at`` seconds
    on."""

    def __init__(self, at: float, factor: float = 2.0) -> None:
        self.now, self.at, self.factor = 0.0, at, factor

    def work(self, seconds: float) -> None:
        self.now += seconds * (1.0 if self.now < self.at else self.factor)

    def timer(self) -> float:
        return self.now


def test_callables_timed_in_turn_share_the_machines_change_of_speed():
    """A 1 ms and a 2 ms call, the machine halving its speed in the third of 8 sweeps: timed in
    turn, both medians fall after the change and keep the ratio 2 (one after the other, the
    first would have run before the change and the second after it: a ratio of 4)."""
    clock = SpeedShift(at=0.08)
    calls = [lambda: clock.work(1e-3), lambda: clock.work(2e-3)]
    short, long = interleave(calls, threads=1, min_run_time=0.1, sweeps=8, timer=clock.timer)
    assert short.runs == long.runs == 8  # 8 blocks of 12.5 ms each: 0.1 s
    assert (short.median_ms, long.median_ms) == pytest.approx((2.0, 4.0))
    # the change of speed is shared, so it is not counted as either one's noise
    assert short.spread < 0.01 and long.spread < 0.01
    clock = SpeedShift(at=0.08)
    [lone] = interleave(calls[:1], threads=1, min_run_time=0.1, sweeps=8, timer=clock.timer)
    assert lone.spread > 0.3  # nothing to share it with


def test_blocks_in_turn_are_sized_to_their_share_of_the_time_and_between_runs_after_each():
    clock = SimulatedClock(0.0)
    ticks: list[float] = []
    slow_calls = []
    calls = [lambda: clock.tick(1e-3), lambda: (slow_calls.append(1), clock.tick(30e-3))]
    fast, slow = interleave(calls, 1, 0.1, between=lambda: ticks.append(clock.now),
                            sweeps=4, timer=clock.timer)  # fmt: skip
    # 25 ms blocks: 25 calls of 1 ms, or one call longer than that
    assert (fast.median_ms, slow.median_ms, fast.runs, slow.runs) == pytest.approx(
        (1.0, 30.0, 4, 4)
    )
    # the sizing in turn (1 + 10 calls of 1 ms, one of 30 ms), then the sweeps, where the slow
    # call's sizing call was its first block: 4 calls of it in all
    assert np.diff(ticks) == pytest.approx([0.030, 0.025, 0.025, 0.030] + [0.025, 0.030] * 2)
    assert len(slow_calls) == 4
    # by default as many blocks as ``measure`` takes at least, each a quarter of the time
    assert [t.runs for t in interleave(calls[:1], 1, 0.1, timer=clock.timer)] == [MIN_BLOCKS]


def test_a_noisy_timing_is_measured_again_and_the_steadiest_kept():
    script = Script({"ref": [steady(10.0)], "op": [noisy(2.0), Timing(2.1, 0.1, 10)]})
    guard = NoiseGuard(script, script.fn("ref"), NoisePolicy(rounds=1), "test")
    [timing] = guard.run([("op", lambda: script.fn("op"))])
    assert timing.median_ms == 2.1 and guard.report.remeasured == 1
    assert script.calls == ["ref", "op", "op", "ref"]  # reference before and after the chunk


def test_a_timing_that_stays_noisy_stops_with_one_line():
    script = Script({"ref": [steady(10.0)], "stage1.0/k3e3": [noisy(2.0)]})
    policy = NoisePolicy(retries=2, rounds=1)
    guard = NoiseGuard(script, script.fn("ref"), policy, "lut build", clock=Load(1.0))
    with pytest.raises(NoisyMachine) as info:
        guard.run([("stage1.0/k3e3", lambda: script.fn("stage1.0/k3e3"))])
    message = str(info.value)
    assert message.startswith("lut build: the machine is busy (other processes took 1.00 "
                              "cores): the repeats of stage1.0/k3e3 spread 50 % around their "
                              "median")  # fmt: skip
    assert "after 2 re-measurements" in message and "\n" not in message
    assert message.endswith("; stop other work on this machine and run it again")


@pytest.mark.parametrize("clock, cause, advice", [
    (Load(0.6), "the machine is busy (other processes took 0.60 cores): ",
     "; stop other work on this machine and run it again"),
    (lambda: None, "the machine is busy or unsteady: ",
     "; stop other work on this machine and run it again, or keep noisy timings with "
     "--allow-noise"),
])  # fmt: skip
def test_the_refusal_names_the_cause_that_the_cpu_accounting_shows(clock, cause, advice):
    """A drifted chunk is refused with the cause the kernel's accounting shows: other processes
    taking CPU time, or no accounting to read."""
    script = Script({"ref": [steady(10.0), steady(15.0)], "a": [steady(2.0)]})
    guard = NoiseGuard(script, script.fn("ref"), NoisePolicy(retries=1, rounds=1), "lut check",
                       clock=clock)  # fmt: skip
    with pytest.raises(NoisyMachine) as info:
        guard.run([("a", lambda: script.fn("a"))])
    assert str(info.value) == (f"lut check: {cause}the reference net ran 1.50x its time at the "
                               "start (15.000 vs 10.000 ms; at most 25 % off is kept) after 1 "
                               f"re-measurements of a .. a{advice}")  # fmt: skip


def test_with_nothing_else_running_noisy_timings_are_kept_and_counted_as_unsteady():
    """The same drifted chunk and a timing whose repeats stay spread, on a machine where no
    other process took CPU time: the machine's own unsteadiness, which neither stopping
    anything nor measuring again would cure. The chunk is kept at once, rescaled to the start's
    speed by the reference around it (10 -> 15 ms), and counted."""
    script = Script({"ref": [steady(10.0), steady(15.0)], "a": [steady(2.0)], "b": [noisy(3.0)]})
    guard = NoiseGuard(script, script.fn("ref"), NoisePolicy(retries=1, rounds=1), "lut check",
                       clock=Load(0.01))  # fmt: skip
    timings = guard.run([("a", lambda: script.fn("a")), ("b", lambda: script.fn("b"))])
    assert [t.median_ms for t in timings] == pytest.approx([2.0 * 10 / 12.5, 3.0 * 10 / 12.5])
    report = guard.report
    assert report.unsteady == 2  # b's timing after its re-measurement, then the chunk
    assert (report.kept_noisy, report.chunks_kept_noisy, report.chunks_redone) == (1, 1, 0)
    assert script.calls == ["ref", "a", "b", "b", "ref"]  # the chunk timed once
    assert report.to_dict()["unsteady"] == 2
    assert NoiseReport.merged([report, report]).unsteady == 4


def test_a_load_that_has_gone_is_still_named_as_the_cause():
    """A load in the guard's first seconds, or in the last seconds before the refusal, is what
    the line names, even when the machine was quiet when the refusal came: the start's timing
    (the base of every later comparison) or the chunk was measured under it."""
    plan = {"ref": [steady(10.0)] * 70 + [steady(15.0)], "a": [steady(2.0)]}
    for load in (Load(1.0, 1.0, 0.0), Load(*[0.0] * 136, 1.0, 0.0)):  # at the start; at the end
        script = Script(plan)
        guard = NoiseGuard(script, script.fn("ref"), NoisePolicy(retries=1, rounds=1, chunk=1),
                           "test", clock=load)  # fmt: skip
        with pytest.raises(NoisyMachine, match=r"^test: the machine is busy \(other processes "
                           r"took 1\.00 cores\): the reference net ran 1\.50x"):  # fmt: skip
            guard.run([("a", lambda s=script: s.fn("a"))] * 70)
    script = Script(plan)  # a quiet machine throughout: kept
    guard = NoiseGuard(script, script.fn("ref"), NoisePolicy(retries=1, rounds=1, chunk=1),
                       "test", clock=Load(0.0))  # fmt: skip
    guard.run([("a", lambda: script.fn("a"))] * 70)
    assert guard.report.unsteady == 1


@pytest.mark.parametrize("cores, kept", [(0.0, True), (1.0, False)])
def test_a_decision_in_the_first_second_sleeps_to_complete_its_window(cores, kept):
    """Readings less than a second apart cannot tell 0.15 cores from none (10 ms ticks), so a
    noisy timing right at the start waits, asleep, until a second of accounting has passed."""
    script = Script({"ref": [noisy(10.0)]})
    start = time.monotonic()
    clock = Load(cores, step=None)
    if kept:
        guard = NoiseGuard(script, script.fn("ref"), NoisePolicy(retries=0, rounds=1), "t",
                           clock=clock)  # fmt: skip
        assert guard.report.unsteady == 1
    else:
        busy = r"^t: the machine is busy \(other processes took 1\.00 cores\): the repeats of "
        with pytest.raises(NoisyMachine, match=busy + "the reference net spread 50 %"):
            NoiseGuard(script, script.fn("ref"), NoisePolicy(retries=0, rounds=1), "t",
                       clock=clock)  # fmt: skip
    assert 0.9 < time.monotonic() - start < 5


def test_a_build_on_an_unsteady_quiet_machine_writes_its_table_and_warns(monkeypatch, tmp_path):
    """Every timing too spread (--max-spread 0) with nothing else running: the table is written,
    the timings kept are counted in meta.noise.unsteady, and one warning line says so."""
    monkeypatch.setattr("cost_models.timing.read_clock", Load(0.0))
    out = tmp_path / "lut.json"
    result = CliRunner().invoke(cli, ["lut", "build", "--space", str(TINY_SPACE), "--input",
                                      "64x64", "--min-time", "0.01", "--calibration", "2",
                                      "--rounds", "1", "--max-spread", "0",
                                      "-o", str(out)])  # fmt: skip
    assert result.exit_code == 0, result.output
    noise = json.loads(out.read_text())["meta"]["noise"]
    assert noise["unsteady"] >= noise["kept_noisy"] > 0
    warnings = [line for line in result.output.splitlines() if line.startswith("warning:")]
    assert warnings == [
        "warning: this machine's speed was unsteady with nothing else running (a shared VM's "
        f"host?): {noise['unsteady']} noisy timings, chunks or passes went on as measured "
        f"(meta.noise.unsteady; reference drift {100 * noise['drift']:.0f} %), so "
        "the table carries that noise"
    ]
    assert "(the machine unsteady, nothing else running)" in result.output
    old = {k: v for k, v in noise.items() if k != "unsteady"}  # a table from before the field
    assert unsteady_warning(old, "the table", "meta.noise.unsteady") is None
    assert noise_line(old).endswith("noisy chunks or passes (--allow-noise)")


def test_cpu_clocks_read_the_machines_busy_ticks_and_this_processs_time(tmp_path):
    """/proc/stat's aggregate line: user, nice, system, idle, iowait, irq, softirq, steal;
    idle, iowait and steal are not work done on this machine."""
    stat = tmp_path / "stat"
    # guest time (the last two) is already inside user and nice
    text = ("cpu  100 20 30 5000 70 4 6 900 11 13\ncpu0 60 10 15 2500 35 2 3 450 11 13\n"
            "cpu1 40 10 15 2500 35 2 3 450 0 0\nintr 1 2 3 4 5 6 7 8 9\n")  # fmt: skip
    stat.write_text(text)
    clock = read_clock(stat)
    cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    expected = 160 if cpus is None else 90 * (0 in cpus) + 70 * (1 in cpus)
    assert clock.machine_s == pytest.approx(expected / os.sysconf("SC_CLK_TCK"))
    assert clock.own_s == pytest.approx(sum(os.times()[:2]), abs=0.05)
    tick = os.sysconf("SC_CLK_TCK")
    assert busy_seconds(text, None) == pytest.approx(160 / tick)  # no affinity: the aggregate
    assert busy_seconds(text, {1, 7}) == pytest.approx(70 / tick)  # a container's cpuset
    for text in ("", "intr 1 2 3 4 5 6 7 8 9\n", "cpu 1 2 x 4 5 6 7\n", "cpu 1 2\n"):
        stat.write_text(text.replace("cpu ", "cpu0 "))
        assert read_clock(stat) is None
    assert read_clock(tmp_path / "missing") is None  # no /proc (macOS): the cause is unknown


def test_others_cores_is_the_machines_busy_time_less_this_processs_per_second():
    start, end = CpuClock(10.0, 100.0, 50.0), CpuClock(12.0, 105.0, 53.0)
    assert others_cores(start, end) == pytest.approx(1.0)  # (5 - 3) CPU-s over 2 s
    assert others_cores(start, CpuClock(12.0, 102.9, 53.0)) == 0.0  # tick skew, not negative
    assert others_cores(None, end) is None and others_cores(start, None) is None
    assert others_cores(end, start) is None  # no time passed


@pytest.mark.skipif(read_clock() is None, reason="no /proc/stat to read on this system")
def test_a_real_busy_process_shows_as_cores_taken_by_others():
    load = start_busy(1)
    try:
        time.sleep(0.5)  # its interpreter starts
        start = read_clock()
        time.sleep(1.0)
        taken = others_cores(start, read_clock())
    finally:
        stop_busy(load)
    assert taken > 0.5  # about one core; less if the host steals time from this VM


def test_slow_drift_is_corrected_to_the_speed_at_the_start():
    """The reference ran 10 ms at the start and 10.6 ms after the chunk (10.3 ms on average
    around it): the chunk's timings are scaled by 10 / 10.3."""
    script = Script({"ref": [steady(10.0), steady(10.6)], "a": [steady(2.1)], "b": [steady(4.2)]})
    guard = NoiseGuard(script, script.fn("ref"), NoisePolicy(rounds=1), "test")
    timings = guard.run([("a", lambda: script.fn("a")), ("b", lambda: script.fn("b"))])
    assert [t.median_ms for t in timings] == pytest.approx([2.1 * 10 / 10.3, 4.2 * 10 / 10.3])
    assert timings[0].iqr_ms == pytest.approx(0.021 * 10 / 10.3)
    assert guard.report.chunks_redone == 0 and guard.report.drift == pytest.approx(0.06)


@pytest.mark.parametrize("cores, redone", [(1.0, 2), (0.0, 0)])
def test_a_speed_change_within_a_chunk_redoes_it_only_while_other_processes_run(cores, redone):
    """A load comes (15 ms) and goes (10.2 ms), both changes within a chunk: while other
    processes take CPU time the chunk is measured again until the machine is steady; with
    nothing else running it is the VM's own wander, kept at once and rescaled by the reference
    around it (10 -> 15 ms: 12.5)."""
    script = Script({"ref": [steady(10.0), steady(15.0), steady(10.2), steady(10.2)],
                     "a": [steady(3.0), steady(2.5), steady(2.0)], "b": [steady(1.0)]})  # fmt: skip
    guard = NoiseGuard(script, script.fn("ref"), NoisePolicy(chunk=2, rounds=1), "test",
                       clock=Load(cores))  # fmt: skip
    timings = guard.run([("a", lambda: script.fn("a")), ("b", lambda: script.fn("b"))])
    speed, a = (10.2, 2.0) if redone else (12.5, 3.0)
    assert [t.median_ms for t in timings] == pytest.approx([a * 10 / speed, 1.0 * 10 / speed])
    assert guard.report.chunks_redone == redone
    assert guard.report.unsteady == (0 if redone else 1)
    assert guard.report.reference_ms == [10.0, 15.0, 10.2, 10.2][: 2 + redone]
    assert guard.report.drift == pytest.approx(0.5)


def in_turn(script: Script):
    """A sweep for the guard that plays ``script`` back, one timing per callable."""
    return lambda fns, between: [script(fn) for fn in fns]


def test_networks_timed_in_turn_are_scaled_to_the_start_by_the_reference_among_them():
    script = Script({"ref": [steady(10.0), steady(12.0)], "a": [steady(6.0)],
                     "b": [steady(3.0)]})  # fmt: skip
    guard = NoiseGuard(script, script.fn("ref"), NoisePolicy(rounds=2), "test",
                       sweep=in_turn(script))  # fmt: skip
    done: list[int] = []
    timings = guard.run_interleaved([("a", lambda: script.fn("a")),
                                     ("b", lambda: script.fn("b"))], done.append)  # fmt: skip
    assert [t.median_ms for t in timings] == pytest.approx([5.0, 2.5])  # x 10 / 12
    assert [t.passes for t in timings] == [pytest.approx((5.0, 5.0)), pytest.approx((2.5, 2.5))]
    assert script.calls == ["ref", "ref", "a", "b", "ref", "a", "b"]
    assert done == [2, 2] and guard.report.reference_ms == [10.0, 12.0, 12.0]


def test_a_pass_in_turn_that_stays_noisy_on_a_busy_machine_stops_with_one_line():
    script = Script({"ref": [steady(10.0)], "a": [steady(5.0), noisy(5.0)],
                     "b": [noisy(2.0)]})  # fmt: skip
    guard = NoiseGuard(script, script.fn("ref"), NoisePolicy(rounds=1, retries=2), "lut check",
                       clock=Load(1.0), sweep=in_turn(script))  # fmt: skip
    with pytest.raises(NoisyMachine) as info:
        guard.run_interleaved([("a", lambda: script.fn("a")), ("b", lambda: script.fn("b"))])
    assert str(info.value) == (
        "lut check: the machine is busy (other processes took 1.00 cores): the repeats of a "
        "spread 50 % around their median (5.000 ms; at most 25 % is kept) after 2 "
        "re-measurements of a .. b in turn; stop other work on this machine and run it again"
    )
    assert guard.report.chunks_redone == 2
    # the reference ran off the speed kept while others took CPU: timed again, then kept
    script = Script({"ref": [steady(10.0), steady(15.0), steady(10.5)], "a": [steady(5.0)]})
    guard = NoiseGuard(script, script.fn("ref"), NoisePolicy(rounds=1), "test",
                       clock=Load(1.0), sweep=in_turn(script))  # fmt: skip
    [timing] = guard.run_interleaved([("a", lambda: script.fn("a"))])
    assert timing.median_ms == pytest.approx(5.0 * 10 / 10.5)
    assert guard.report.chunks_redone == 1 and guard.report.reference_ms == [10.0, 15.0, 10.5]
    assert guard.run_interleaved([]) == []
    # with nothing else running the same pass is kept at once, at the start's speed
    script = Script({"ref": [steady(10.0), steady(15.0), steady(10.5)], "a": [steady(5.0)]})
    guard = NoiseGuard(script, script.fn("ref"), NoisePolicy(rounds=1), "test",
                       clock=Load(0.0), sweep=in_turn(script))  # fmt: skip
    [timing] = guard.run_interleaved([("a", lambda: script.fn("a"))])
    assert timing.median_ms == pytest.approx(5.0 * 10 / 15)
    report = guard.report
    assert (report.chunks_redone, report.unsteady, report.chunks_kept_noisy) == (0, 1, 1)


def busy_error(plan: dict[str, list[Timing]], what: str = "lut build", jobs: int = 1,
               **policy: int) -> str:  # fmt: skip
    """The one-line error of a guard that times job ``a`` ``jobs`` times under ``plan`` (one
    retry, one round, and ``policy``)."""
    script = Script(plan)
    policy = NoisePolicy(**{"retries": 1, "rounds": 1} | policy)
    guard = NoiseGuard(script, script.fn("ref"), policy, what, clock=Load(1.0))
    with pytest.raises(NoisyMachine) as info:
        guard.run([("a", lambda: script.fn("a"))] * jobs)
    return str(info.value)


def test_a_machine_that_stays_slower_stops_and_allow_noise_keeps_going():
    plan = {"ref": [steady(10.0), steady(15.0)], "a": [steady(2.0)]}
    assert busy_error(plan, "lut check").startswith(
        "lut check: the machine is busy (other processes took 1.00 cores): the reference net ran "
        "1.50x its time at the start "
        "(15.000 vs 10.000 ms"
    )
    script = Script(plan | {"a": [noisy(2.0)]})
    policy = NoisePolicy(retries=1, rounds=1, strict=False)
    lenient = NoiseGuard(script, script.fn("ref"), policy, "x", clock=Load(1.0))
    [timing] = lenient.run([("a", lambda: script.fn("a"))])
    assert timing.median_ms == pytest.approx(2.0 * 10 / 15)  # still at the start's speed
    report = lenient.report
    assert (report.kept_noisy, report.chunks_kept_noisy, report.chunks_redone) == (1, 1, 1)
    assert report.unsteady == 0  # --allow-noise keeps without asking the accounting's view
    # on a quiet machine --allow-noise keeps the chunk at once, as strict mode does
    script = Script(plan)
    lenient = NoiseGuard(script, script.fn("ref"), policy, "x", clock=Load(0.0))
    lenient.run([("a", lambda: script.fn("a"))])
    assert script.calls == ["ref", "a", "ref"]
    report = lenient.report
    assert (report.chunks_kept_noisy, report.chunks_redone, report.unsteady) == (1, 0, 0)


def test_a_start_measured_on_a_busy_machine_is_caught_when_it_turns_quiet():
    """The reference's first timing was 1.6x slow; every later one is 'faster than the start'."""
    message = busy_error({"ref": [steady(16.0), steady(10.0)], "a": [steady(2.0)]})
    assert ("the reference net ran 0.62x its time at the start (10.000 vs 16.000 ms; at most "
            "25 % off is kept)") in message  # fmt: skip


def test_a_slow_steady_slowdown_is_corrected_but_a_sudden_one_is_refused():
    """This VM slowed 1.25x over ten minutes of load (too slowly for another process): 2 % a
    chunk over 20 chunks is kept and rescaled; the same 1.3x in one step is a busy machine."""
    refs = [steady(10.0 * 1.02**k) for k in range(21)]
    script = Script({"ref": refs, "a": [steady(2.0)]})
    guard = NoiseGuard(script, script.fn("ref"), NoisePolicy(chunk=1, rounds=1), "test")
    timings = guard.run([("a", lambda: script.fn("a"))] * 20)
    assert guard.report.chunks_redone == 0 and guard.report.drift == pytest.approx(1.02**20 - 1)
    # chunk k lies between references 10 * 1.02^k and 10 * 1.02^(k + 1)
    expected = [2.0 * 10 / (5 * 1.02**k * 2.02) for k in range(20)]
    assert [t.median_ms for t in timings] == pytest.approx(expected)
    # within the window a change adds up: 3 % a chunk is 1.27x after 8 chunks, which stops
    creep = Script({"ref": [steady(10.0 * 1.03**k) for k in range(12)], "a": [steady(2.0)]})
    guard = NoiseGuard(creep, creep.fn("ref"), NoisePolicy(chunk=1, rounds=1, retries=0), "x",
                       clock=Load(1.0))  # fmt: skip
    with pytest.raises(NoisyMachine, match=r"ran 1\.27x its time at the start"):
        guard.run([("a", lambda: creep.fn("a"))] * 11)
    jump = Script({"ref": [steady(10.0), steady(10.1), steady(13.0)], "a": [steady(2.0)]})
    guard = NoiseGuard(jump, jump.fn("ref"), NoisePolicy(chunk=1, rounds=1), "lut build",
                       clock=Load(1.0))  # fmt: skip
    with pytest.raises(NoisyMachine, match=r"ran 1\.30x its time at the start \(13\.000 vs"):
        guard.run([("a", lambda: jump.fn("a"))] * 2)


def test_a_redone_chunk_is_held_against_the_chunks_kept_not_against_its_own_first_try():
    """A load that stays (15 ms) cannot be passed off as a new speed by measuring again: the
    retry's chunk is steady (15 -> 15 ms) but still held against the 10 ms kept before it."""
    plan = {"ref": [steady(10.0), steady(10.0), steady(15.0)], "a": [steady(2.0)]}
    message = busy_error(plan, jobs=2, chunk=1, speed_window=1)
    assert "ran 1.50x its time 1 chunk earlier (15.000 vs 10.000 ms" in message


def test_a_chunk_kept_at_once_off_the_speed_kept_joins_it_only_once_its_level_lasts():
    """One slow spell of a quiet VM (the reference at 15 ms for one chunk, else 10 ms): that
    chunk and the next (10 -> 15 -> 10 ms: a drift within it) are kept at once, and the chunks
    after them, at the usual speed, are no problem; had the 15 ms joined the speed kept, each
    of the next ``speed_window`` chunks would read 0.67x it."""
    script = Script({"ref": [steady(10.0), steady(10.0), steady(15.0), steady(10.0)],
                     "a": [steady(2.0)]})  # fmt: skip
    guard = NoiseGuard(script, script.fn("ref"), NoisePolicy(chunk=1, rounds=1), "test",
                       clock=Load(0.0))  # fmt: skip
    guard.run([("a", lambda: script.fn("a"))] * 14)
    report = guard.report
    assert (report.unsteady, report.chunks_kept_noisy, report.chunks_redone) == (2, 2, 0)
    # a level that lasts (10 ms, then 13 ms from chunk 2 on) is the machine's new speed: it
    # joins once a chunk starts and ends at it, and chunks are no problem once the 10 ms have
    # left the last 10 kept (chunks 2-12 problems; never joining, all 19 would be)
    script = Script({"ref": [steady(10.0), steady(10.0), steady(13.0)], "a": [steady(2.0)]})
    guard = NoiseGuard(script, script.fn("ref"), NoisePolicy(chunk=1, rounds=1), "test",
                       clock=Load(0.0))  # fmt: skip
    guard.run([("a", lambda: script.fn("a"))] * 20)
    assert (guard.report.unsteady, guard.report.chunks_redone) == (11, 0)


def test_the_cpu_accounting_is_read_once_for_each_decision():
    """Busy at the first problem (measured again), quiet at the second (kept): two readings,
    and the one that decided to keep the chunk is the one that counts it as unsteady."""
    script = Script({"ref": [steady(10.0), steady(15.0)], "a": [steady(2.0)]})
    guard = NoiseGuard(script, script.fn("ref"), NoisePolicy(rounds=1), "test",
                       clock=Load(0.0))  # fmt: skip
    readings = [1.0, 0.0, 1.0]  # a third reading, were there one, would refuse
    guard._others = lambda: readings.pop(0)
    [timing] = guard.run([("a", lambda: script.fn("a"))])
    assert readings == [1.0]
    assert (guard.report.chunks_redone, guard.report.unsteady) == (1, 1)
    assert timing.median_ms == pytest.approx(2.0 * 10 / 15)


def test_a_policy_that_cannot_run_is_refused():
    for bad in ({"retries": -1}, {"chunk": 0}, {"rounds": 0}, {"speed_window": 0}):
        with pytest.raises(ValueError, match="NoisePolicy needs"):
            NoisePolicy(**bad)


# ---------------------------------------------------------------- a real concurrent load


def busy_processes() -> list[subprocess.Popen]:
    """One busy process per core, so the load slows the build on any machine."""
    count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return start_busy(count or 2)


def test_a_build_on_a_machine_that_turns_busy_stops_and_writes_nothing(monkeypatch, tmp_path):
    """The load starts right after the reference net's first timing, as another job would."""
    load: list[subprocess.Popen] = []
    original = NoiseGuard.__init__

    def start_load_after_the_reference(self, *args, **kwargs):
        original(self, *args, **kwargs)
        load.extend(busy_processes())
        time.sleep(1.0)  # the load is under way before the next timing

    monkeypatch.setattr(NoiseGuard, "__init__", start_load_after_the_reference)
    out = tmp_path / "lut.json"
    try:
        result = CliRunner().invoke(cli, ["lut", "build", "--space", str(TINY_SPACE), "--input",
                                          "64x64", "--min-time", "0.02", "--calibration", "4",
                                          "--threads", "2", "--in-process",  # the patch is here
                                          "--max-spread", "10",  # refused on the drift
                                          "-o", str(out)])  # fmt: skip
    finally:
        stop_busy(load)
    assert result.exit_code == 1, result.output
    assert result.output.startswith("Error: lut build --space tiny: the machine is busy (other "
                                    "processes took ")  # fmt: skip
    assert len(result.output.strip().splitlines()) == 1
    assert not out.exists()  # never a silently wrong table


def test_rounds_keep_each_jobs_median_over_the_passes():
    """The passes ran at 0.5, 1.5 and 1x the jobs' median speed (the reference net steady):
    each job's median once that is divided out (``shared_medians``)."""
    script = Script({"ref": [steady(10.0)], "a": [steady(1.0), steady(3.0), steady(2.0)],
                     "b": [steady(5.0), steady(15.0), steady(10.0)]})  # fmt: skip
    guard = NoiseGuard(script, script.fn("ref"), NoisePolicy(rounds=3), "test")
    done = []
    timings = guard.run([("a", lambda: script.fn("a")), ("b", lambda: script.fn("b"))],
                        done.append)  # fmt: skip
    assert [t.median_ms for t in timings] == pytest.approx([2.0, 10.0]) and timings[0].runs == 30
    assert timings[1].passes == pytest.approx((10.0, 10.0, 10.0))
    assert done == [2, 2, 2]  # one chunk per pass
    assert script.calls == ["ref", "a", "b", "ref", "a", "b", "ref", "a", "b", "ref"]


def test_a_timing_combined_from_passes_keeps_every_pass():
    """What ``lut check``'s noise ceiling is estimated from: each pass's median, also where the
    passes of fresh processes are combined with those already combined in one process."""
    one_process = median_of([Timing(3.0, 0.3, 4), Timing(5.0, 0.1, 4)])
    assert one_process.passes == (3.0, 5.0) and one_process.median_ms == 4.0
    merged = median_of([one_process, Timing(10.0, 0.2, 4)])
    assert merged.passes == (3.0, 5.0, 10.0) and merged.runs == 12


def test_passes_are_combined_once_their_shared_speed_is_divided_out():
    """The second pass ran 1.5x as long for every job (its reference net ran fast while it was
    levelled), and one job ran long in the third: each pass's speed is the median over its
    jobs, so the slow pass is brought back while the one long timing stays the job's own."""
    ms = [[10.0, 20.0, 40.0], [15.0, 30.0, 60.0], [10.0, 26.0, 40.0]]
    timings = shared_medians([[Timing(m, 0.1 * m, 4) for m in p] for p in ms])
    assert [t.median_ms for t in timings] == pytest.approx([10.0, 20.0, 40.0])  # plain: 26
    assert timings[1].passes == pytest.approx((20.0, 20.0, 26.0)) and timings[1].runs == 12
    assert timings[1].iqr_ms == pytest.approx(2.0)
    # one job (nothing shared to tell its speed from its noise), or a time of 0: plain medians
    assert shared_medians([[Timing(10.0, 1.0, 4)], [Timing(15.0, 1.0, 4)]])[0].median_ms == 12.5
    zero = shared_medians([[Timing(0.0, 0.0, 4), Timing(2.0, 0.0, 4)],
                           [Timing(0.0, 0.0, 4), Timing(3.0, 0.0, 4)]])  # fmt: skip
    assert [t.median_ms for t in zero] == [0.0, 2.5]
    assert shared_medians([]) == [] and shared_medians([[], []]) == []


def test_passes_in_processes_of_their_own_keep_their_own_starts():
    """Each fresh process's guard expresses its timings at its own start's speed, so the
    merged drift is each guard's own and the start is the median of the guards' firsts."""
    first = NoiseReport(remeasured=1, worst_spread=0.1, reference_ms=[10.0, 11.0])
    second = NoiseReport(chunks_redone=2, worst_spread=0.3, reference_ms=[20.0, 19.0, 21.0])
    third = NoiseReport(kept_noisy=1, reference_ms=[12.0])
    merged = NoiseReport.merged([first, second, third])
    assert merged.passes == [2, 3, 1] and merged.reference_ms == [10.0, 11.0, 20.0, 19.0, 21.0,
                                                                  12.0]  # fmt: skip
    assert merged.drift == pytest.approx(0.1)  # not 1.1: 21 ms is 1.05x its own start
    assert merged.start_ms == 12.0  # the median of 10, 20 and 12
    assert (merged.remeasured, merged.chunks_redone, merged.kept_noisy) == (1, 2, 1)
    assert merged.worst_spread == 0.3
    record = merged.to_dict()
    assert record["passes"] == [2, 3, 1] and record["reference_start_ms"] == 12.0
    single = NoiseReport(reference_ms=[10.0, 12.0]).to_dict()  # one guard, one start
    assert single["passes"] == [2] and single["drift"] == 0.2
    assert single["reference_start_ms"] == 10.0
    assert NoiseReport().to_dict()["reference_start_ms"] is None
