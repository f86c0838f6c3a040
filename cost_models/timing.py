"""Timing forward passes with ``torch.utils.benchmark``, and telling a busy machine from a steady
one.

``measure`` runs blocks of calls (``Timer.blocked_autorange``: each block is long enough for
the timer's own overhead to vanish, accelerators are synchronised, the thread count is set) and
keeps the median and the interquartile range of the per-call times over the blocks. Its blocks
are sized by ``BlockTimer``: torch's rule (the overhead under 1e-4 of a block) counts an
accelerator's synchronisation as overhead, which asks for blocks of 0.05-0.5 s on a GPU and
makes one timing of a small op take 1-2 s. ``interleave`` times several callables in turn, a
block of each per sweep, so that the machine's speed changes fall on all of them alike: whole
networks are timed that way (``NoiseGuard.run_interleaved``).

A ``NoiseGuard`` turns those into a table a user can trust. A timing whose IQR is a large part
of its median is measured again. A reference network is timed at the start and again after
every chunk of entries. A shared 2-core VM changes speed slowly by several percent over tens of
seconds even when quiet (the reference net ran 24.4-27.8 ms within 40 s here), so each chunk's
timings are expressed at the start's speed: multiplied by the reference's first time over its
mean time around the chunk. A chunk during which the speed changed by more than ``max_drift``,
or a machine more than ``max_speed_change`` slower (another process) or faster (the start was
busy) than around any of the last ``speed_window`` chunks kept at the speed kept, is a
problem. So is a pass of whole networks timed in turn in which a net's blocks spread beyond the
speed shared with the others, or whose reference net ran off the speed kept (a drift within a
pass falls on every net alike and is neither corrected nor refused). What happens to a problem,
and to timings that stay noisy after their re-measurements, depends on the cause that the
kernel's accounting shows (``cost_models.cpu_use``). Other processes taking CPU time (or no
accounting to read) get the chunk or pass measured again, and if the problem stays, stop the
guard with one line that says so (stop them and run it again), so a busy machine never writes
a silently wrong table, and a sudden load is not passed off as a new speed (another process
made the reference 1.6x slower at once here). With nothing
else running the machine itself is unsteady, as a shared VM's host can make it (this VM slowed
by 1.25x over ten minutes of a batch-8 build), which neither stopping anything nor measuring
again cures, so the chunk or pass is kept at once, at the start's speed, and the timings go on
as measured, counted in ``NoiseReport.unsteady`` (the commands print a warning).
``--allow-noise`` keeps them whatever the cause.
"""

from __future__ import annotations

import math
import statistics
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np
import torch.utils.benchmark as benchmark
from torch.utils.benchmark.utils.common import set_torch_threads

from cost_models.cpu_use import CpuClock, others_cores, read_clock
from dnas.errors import DnasError


@dataclass(frozen=True)
class Timing:
    """Median and interquartile range of one call's milliseconds, over ``runs`` blocks; a
    timing combined from passes (``median_of``) keeps each pass's median in ``passes``."""

    median_ms: float
    iqr_ms: float
    runs: int
    passes: tuple[float, ...] = ()

    def scaled(self, factor: float) -> Timing:
        """This timing with every time in it multiplied by ``factor``."""
        return Timing(self.median_ms * factor, self.iqr_ms * factor, self.runs,
                      tuple(ms * factor for ms in self.passes))  # fmt: skip

    @property
    def spread(self) -> float:
        """IQR / median: torch.utils.benchmark warns above 0.1, and above 0.25 of
        "significant environmental influence"."""
        return self.iqr_ms / self.median_ms if self.median_ms > 0 else 0.0


Timer = Callable[[Callable[[], object]], Timing]  # what measures one callable
# what measures several callables in turn (``interleave``), calling its second argument
# between blocks (the guard reads the CPU clocks there)
Sweep = Callable[[list[Callable[[], object]], Callable[[], None]], list[Timing]]
Prepare = Callable[[], Callable[[], object]]  # what prepares the callable that is timed
Job = tuple[str, Prepare]
Clock = Callable[[], CpuClock | None]  # what reads the CPU accounting (cost_models.cpu_use)
T = TypeVar("T")


MIN_BLOCKS = 4  # fewer blocks give no interquartile range worth the name
MAX_CALLS = 10**8  # calls per block at most (torch's C++ timer takes a 32-bit count)


class BlockTimer(benchmark.Timer):
    """``Timer`` whose blocks are sized from the call's own time. Torch grows a block tenfold
    until the timer's overhead is under 1e-4 of it; on a GPU that overhead is a
    synchronisation (5-20 us), so blocks grew to 0.05-0.5 s whatever ``min_run_time``, and
    one timing of a launch-bound op took 1-2 s (a table has hundreds). Here the overhead aims
    at ``MAX_OVERHEAD`` of a block (a 0.1 % bias), but a block is at most a quarter of
    ``min_run_time`` so that one run holds ``MIN_BLOCKS`` blocks (at ``--min-time 0.01`` a
    GPU block is 2.5 ms and the bias up to 1 %). On a CPU the overhead is about 0.3 us: blocks
    of 0.3 ms or one call, where torch's were 3.5 ms or one call."""

    MAX_OVERHEAD = 1e-3

    def _estimate_block_size(self, min_run_time: float) -> int:
        """Calls per block, for the goal above."""
        with set_torch_threads(self._task_spec.num_threads):
            overhead = statistics.median(self._timeit(0) for _ in range(5))
        return self.calls_for(min(max(overhead / self.MAX_OVERHEAD, min_run_time / 1000),
                                  min_run_time / MIN_BLOCKS))  # fmt: skip

    def blocked_autorange(self, callback: Callable[[int, float], None] | None = None,
                          min_run_time: float = 0.2) -> benchmark.Measurement:  # fmt: skip
        """Torch's ``blocked_autorange``, but blocks go on until there are ``MIN_BLOCKS`` of
        them as well as ``min_run_time``: a machine that slows down while a timing runs (another
        process starting) would otherwise end it after one or two blocks, whose IQR of 0 or of
        one pair reads as perfectly steady."""
        number = self._estimate_block_size(min_run_time)
        times = self._threaded_measurement_loop(
            number, lambda: self._timeit(number), lambda times: len(times) >= MIN_BLOCKS,
            min_run_time=min_run_time, callback=callback)  # fmt: skip
        return benchmark.Measurement(number_per_run=number, raw_times=times,
                                     task_spec=self._task_spec)  # fmt: skip

    def calls_for(self, goal: float) -> int:
        """Calls in a block of about ``goal`` seconds (``sized_for``)."""
        return self.sized_for(goal)[0]

    def sized_for(self, goal: float) -> tuple[int, float | None]:
        """Calls in a block of about ``goal`` seconds: tenfold until a block is a tenth of the
        goal (a steady base), then scaled to the goal in one step. Where the first call alone
        was enough to size it and a block is that one call, also that call's seconds: a block
        already taken (``interleave`` keeps it); else None."""
        with set_torch_threads(self._task_spec.num_threads):
            number, taken = 1, self._timeit(1)
            while taken < goal / 10 and number < MAX_CALLS:
                number *= 10
                taken = self._timeit(number)
        calls = max(1, min(round(number * goal / taken), MAX_CALLS))
        return calls, (taken if number == calls == 1 else None)


def measure(fn: Callable[[], object], threads: int, min_run_time: float = 0.2,
            timer: Callable[[], float] | None = None) -> Timing:  # fmt: skip
    """Time ``fn()`` by ``BlockTimer.blocked_autorange`` with ``threads`` intra-op threads, in
    at least ``MIN_BLOCKS`` blocks (a call longer than a quarter of ``min_run_time`` makes the
    timing longer). ``timer``: the clock (default: torch's, which synchronises an
    accelerator)."""
    clock = {} if timer is None else {"timer": timer}
    result = BlockTimer(stmt="fn()", globals={"fn": fn}, num_threads=threads,
                        **clock).blocked_autorange(min_run_time=min_run_time)  # fmt: skip
    return Timing(1000.0 * result.median, 1000.0 * result.iqr, len(result.times))


def interleave(fns: list[Callable[[], object]], threads: int, min_run_time: float = 0.2,
               between: Callable[[], None] = lambda: None, sweeps: int = MIN_BLOCKS,
               timer: Callable[[], float] | None = None) -> list[Timing]:  # fmt: skip
    """Time each of ``fns`` in ``sweeps`` blocks of about ``min_run_time / sweeps`` s (or one
    call, where a call is longer), one block of each in turn per sweep, so that every
    callable sees the same mix of the machine's speeds: on a 2-core EPYC VM two timings of the
    same 30 whole networks (20 calls each, in one process) agreed to Kendall tau 0.88 (per-net
    sd 2.4 %) in 20 sweeps of one call, 0.66 (6.3 %) with each net's calls together in 5
    rounds. A timing's median is its
    blocks'; its IQR is theirs once each sweep's shared speed (the median over the callables
    of a block's time over the callable's median) is divided out: the noise that does not
    fall on all alike (with one callable, the plain IQR). The blocks are sized in turn too,
    and where a block is one call, the call timed to size it is the first sweep's block
    (whole networks are one call each: a sixth of a check's calls were spent twice over), so
    a first sweep that mixes one-call and longer blocks spans the sizing and its own turn.
    ``between()`` runs after every block; ``timer``: the clock (default: torch's, which
    synchronises an accelerator)."""
    clock = {} if timer is None else {"timer": timer}
    timers = [BlockTimer(stmt="fn()", globals={"fn": fn}, num_threads=threads, **clock)
              for fn in fns]  # fmt: skip
    blocks = np.zeros((len(fns), sweeps))  # seconds a call, per callable and sweep
    numbers = []
    for i, t in enumerate(timers):  # the sizing, in turn: a one-call block is the first sweep's
        number, first = t.sized_for(min_run_time / sweeps)
        numbers.append(number)
        blocks[i, 0] = np.nan if first is None else first
        between()
    with set_torch_threads(threads):  # not ``Timer.timeit``: it runs 2 untimed calls first
        for sweep in range(sweeps):
            for i, (t, number) in enumerate(zip(timers, numbers, strict=True)):
                if sweep == 0 and not np.isnan(blocks[i, 0]):
                    continue
                blocks[i, sweep] = t._timeit(number) / number
                between()
    medians = np.median(blocks, axis=1)
    shared = (np.median(blocks / medians[:, None], axis=0) if len(fns) > 1
              else np.ones(sweeps))  # fmt: skip
    low, high = np.percentile(blocks / shared, [25, 75], axis=1)
    return [Timing(1000.0 * float(m), 1000.0 * float(h - lo), sweeps)
            for m, lo, h in zip(medians, low, high, strict=True)]  # fmt: skip


class NoisyMachine(DnasError):
    """The machine was too busy to measure on; nothing was written."""


@dataclass
class NoisePolicy:
    """When a timing is too noisy to keep, and how often to try again."""

    # IQR / median above which a timing is measured again: torch.utils.benchmark's "gross"
    # threshold ("significant environmental influence"); its 0.1 warning threshold stopped
    # builds on a quiet 2-core VM, where a 0.4 ms op's blocks spread 14 %; the median over
    # the rounds absorbs that, and a load shows in the reference net
    max_spread: float = 0.25
    max_drift: float = 0.08  # change of the reference net's time across one chunk
    # reference net this much slower or faster than around any of the last speed_window
    # chunks kept (the start included while it is among them)
    max_speed_change: float = 0.25
    # cores that other processes took on average in a window of a second while timings stayed
    # noisy, above which the machine counts as busy (a busy process beside a 2-thread timing
    # on 2 cores took 0.6; a quiet VM's own daemons 0.005); below, the machine is unsteady
    busy_cores: float = 0.15
    speed_window: int = 10  # chunks kept: tens of seconds at the default chunk of 12
    # further measurements of a noisy timing, or of a chunk or pass that is a problem while the
    # CPU accounting shows other processes taking CPU time or cannot be read
    retries: int = 3
    chunk: int = 12  # entries between two timings of the reference net
    rounds: int = 5  # passes over all jobs; a job's timing is its median over the passes
    strict: bool = True  # False (--allow-noise): keep the steadiest timing, count it, go on
    # each pass in a process of its own (cost_models.processes: a process's memory layout
    # biases its timings); False (--in-process): all passes in this one
    fresh_processes: bool = True

    def __post_init__(self) -> None:
        if (
            self.retries < 0
            or self.chunk < 1
            or self.rounds < 1
            or self.speed_window < 1
            or self.busy_cores < 0
        ):
            raise ValueError(f"NoisePolicy needs retries, busy_cores >= 0 and chunk, rounds, "
                             f"speed_window >= 1, got {self.retries}, {self.busy_cores}, "
                             f"{self.chunk}, {self.rounds}, {self.speed_window}")  # fmt: skip


@dataclass
class NoiseReport:
    """What the guard saw; recorded in a table's ``meta.noise`` and in ``lut check``."""

    remeasured: int = 0  # timings measured again for their spread
    # chunks of op timings measured again after the reference drifted or jumped, and passes of
    # whole networks timed in turn measured again after a jump or a spread, while other
    # processes took CPU time (or the accounting could not be read)
    chunks_redone: int = 0
    kept_noisy: int = 0  # timings kept although their spread was too large
    chunks_kept_noisy: int = 0  # chunks or passes kept although that stayed so
    # times that timings (a job's, the reference's) stayed noisy after their re-measurements, or
    # a chunk or pass was a problem, in strict mode with nothing else running, and went on as
    # measured (a chunk measured again later, the machine busy by then, replaces its timings);
    # 0 under --allow-noise, which keeps them without asking
    unsteady: int = 0
    worst_spread: float = 0.0  # largest IQR / median among the timings kept
    reference_ms: list[float] = field(default_factory=list)  # the reference net, in order
    # how many of reference_ms each pass timed, pass after pass, where passes ran in processes
    # of their own, each with its own start (empty: one guard, one start)
    passes: list[int] = field(default_factory=list)

    def _starts(self) -> list[list[float]]:
        """``reference_ms`` cut into its guards' runs, each from its own start."""
        runs, at = [], 0
        for size in self.passes or [len(self.reference_ms)]:
            runs.append(self.reference_ms[at : at + size])
            at += size
        return [run for run in runs if run]

    @property
    def drift(self) -> float:
        """Largest relative change of the reference net's time from its guard's first timing
        (corrected for in the timings kept)."""
        return max((abs(ms / run[0] - 1.0) for run in self._starts() for ms in run), default=0.0)

    @property
    def start_ms(self) -> float | None:
        """The reference net's time at the start: the median over the guards' first timings."""
        firsts = [run[0] for run in self._starts()]
        return statistics.median(firsts) if firsts else None

    @classmethod
    def merged(cls, reports: list[NoiseReport]) -> NoiseReport:
        """One report of several guards' passes (each in a process of its own), in order."""
        return cls(
            remeasured=sum(r.remeasured for r in reports),
            chunks_redone=sum(r.chunks_redone for r in reports),
            kept_noisy=sum(r.kept_noisy for r in reports),
            chunks_kept_noisy=sum(r.chunks_kept_noisy for r in reports),
            unsteady=sum(r.unsteady for r in reports),
            worst_spread=max((r.worst_spread for r in reports), default=0.0),
            reference_ms=[ms for r in reports for ms in r.reference_ms],
            passes=[len(run) for r in reports for run in r._starts()],
        )

    def to_dict(self) -> dict:
        start = self.start_ms
        return {"remeasured": self.remeasured, "chunks_redone": self.chunks_redone,
                "kept_noisy": self.kept_noisy, "chunks_kept_noisy": self.chunks_kept_noisy,
                "unsteady": self.unsteady,
                "worst_spread": round(self.worst_spread, 4),
                "drift": round(self.drift, 4),
                "reference_ms": [round(ms, 4) for ms in self.reference_ms],
                "passes": [len(run) for run in self._starts()],
                "reference_start_ms": None if start is None else round(start, 4)}  # fmt: skip


# the CPU accounting's windows: 10 ms ticks make a shorter one read up to 0.1 cores off
_WINDOW_S = 1.0
_READING_EVERY_S = 0.1  # readings of the CPU clocks kept: one per 0.1 s at most,
_READINGS_KEPT = 64  # the last 64 (at least 6.4 s),
_EARLY_S = 2.0  # and those of the guard's first 2 s, which the later timings are held against
_STOP_OTHERS = "stop other work on this machine and run it again"


def _window_rates(readings: list[CpuClock]) -> list[float]:
    """Cores other processes took in consecutive windows of at least ``_WINDOW_S`` between
    ``readings``, the last window ending at the last reading."""
    rates, end = [], readings[-1] if readings else None
    for reading in reversed(readings[:-1]):
        if end.wall_s - reading.wall_s >= _WINDOW_S:
            rates.append(others_cores(reading, end))
            end = reading
    return [rate for rate in rates if rate is not None]


class NoiseGuard:
    """Steady timings of many callables, checked against a reference net (module docstring).
    ``clock`` reads the CPU accounting that tells a busy machine from an unsteady one
    (default: ``read_clock``); ``sweep`` times whole networks in turn (``run_interleaved``)."""

    def __init__(self, timer: Timer, reference: Callable[[], object], policy: NoisePolicy,
                 what: str, clock: Clock | None = None,
                 sweep: Sweep | None = None) -> None:  # fmt: skip
        self.timer, self.reference, self.policy, self.what = timer, reference, policy, what
        self.sweep = sweep
        self.clock = clock or read_clock
        self._early: list[CpuClock] = []
        self._recent: deque[CpuClock] = deque(maxlen=_READINGS_KEPT)
        self._read_clock()
        self.report = NoiseReport()
        self._base = self.steady(reference, "the reference net").median_ms
        self.report.reference_ms.append(self._base)
        self._kept = [self._base]  # the reference timings around the chunks kept so far

    def steady(self, fn: Callable[[], object], name: str) -> Timing:
        """The steadiest of up to 1 + retries timings of ``fn``; if none is steady, kept or
        refused by ``_keep_or_refuse`` (the caller counts a kept one)."""
        self._read_clock()
        best = self.timer(fn)
        for _ in range(self.policy.retries):
            if best.spread <= self.policy.max_spread:
                break
            self.report.remeasured += 1
            again = self.timer(fn)
            best = again if again.spread < best.spread else best
        problem = self._spread_problem(name, best)
        if problem is not None:
            self._keep_or_refuse(f"{problem} after {self.policy.retries} re-measurements",
                                 self._others())  # fmt: skip
        return best

    def _spread_problem(self, name: str, timing: Timing) -> str | None:
        """Why ``timing`` of ``name`` is too noisy to keep, if it is."""
        if timing.spread <= self.policy.max_spread:
            return None
        return (f"the repeats of {name} spread {100 * timing.spread:.0f} % around their median "
                f"({timing.median_ms:.3f} ms; at most {100 * self.policy.max_spread:.0f} % "
                f"is kept)")  # fmt: skip

    def run(self, jobs: list[Job], done: Callable[[int], object] | None = None) -> list[Timing]:
        """Steady timings of every job: ``rounds`` passes over all of them, each chunk by chunk
        between reference timings; a job's timing is its median over the passes (each pass's
        shared speed divided out, ``shared_medians``), since the
        speed of a shared machine wanders over seconds, which one long timing cannot average
        out (two checks of 30 nets agreed to tau 0.885 with one 1 s timing each, 0.968 with
        5 passes of 0.1 s). ``done(n)`` after each chunk."""
        passes = []
        for _ in range(self.policy.rounds):
            timings: list[Timing] = []
            for start in range(0, len(jobs), self.policy.chunk):
                chunk = jobs[start : start + self.policy.chunk]
                timings += self._chunk(chunk)
                if done is not None:
                    done(len(chunk))
            passes.append(timings)
        return shared_medians(passes)

    def _chunk(self, chunk: list[Job]) -> list[Timing]:
        """One chunk's timings between two reference timings, at the start's speed."""

        def attempt() -> tuple[tuple[list[Timing], float, float], str | None]:
            before = self.report.reference_ms[-1]
            timings = [self.steady(prepare(), name) for name, prepare in chunk]
            after = self.steady(self.reference, "the reference net").median_ms
            self.report.reference_ms.append(after)
            return (timings, before, after), self._problem(before, after)

        timings, before, after = self._retried(attempt, f"{chunk[0][0]} .. {chunk[-1][0]}")
        return self._kept_at_start_speed(timings, 0.5 * (before + after), after)

    def run_interleaved(self, jobs: list[Job],
                        done: Callable[[int], object] | None = None) -> list[Timing]:  # fmt: skip
        """Steady timings of whole networks: ``rounds`` passes, each timing all of them and the
        reference net in turn (``sweep``), so that the machine's speed changes fall on every
        net alike, expressed at the start's speed by the reference's median in the pass, and
        combined over the passes by ``shared_medians``. A pass in which a timing spread too
        much or the reference ran off the speed kept is a problem, as a chunk is
        (``_retried``). ``done(len(jobs))`` after each pass."""
        if self.sweep is None:
            raise ValueError("NoiseGuard.run_interleaved needs a sweep")
        if not jobs:
            return []
        names = ["the reference net", *(name for name, _ in jobs)]
        passes = []
        for _ in range(self.policy.rounds):
            fns = [self.reference, *(prepare() for _, prepare in jobs)]

            def attempt(fns: list = fns) -> tuple[list[Timing], str | None]:
                self._read_clock()
                timings = self.sweep(fns, self._read_clock)
                self.report.reference_ms.append(timings[0].median_ms)  # each try, as a chunk
                spread = (self._spread_problem(n, t) for n, t in zip(names, timings, strict=True))
                return timings, next((p for p in spread if p), None) or self._speed_jump(
                    timings[0].median_ms)  # fmt: skip

            timings = self._retried(attempt, f"{jobs[0][0]} .. {jobs[-1][0]} in turn")
            reference = timings[0].median_ms
            passes.append(self._kept_at_start_speed(timings[1:], reference, reference))
            if done is not None:
                done(len(jobs))
        return shared_medians(passes)

    def _retried(self, attempt: Callable[[], tuple[T, str | None]], what: str) -> T:
        """``attempt()``'s result once it names no problem, tried 1 + ``retries`` times at
        most (each try after the first counted as redone); a problem that stays is kept or
        refused (``_keep_or_refuse``), naming ``what`` was timed. A chunk or pass is timed
        again only while other processes take CPU time (or the accounting cannot be read): with
        nothing else running a problem is the VM's own wander, which measuring again does not
        cure, so it is kept at once, still at the start's speed. On a quiet 2-core EPYC VM a
        ``mbv2_pose_small`` build that measured such chunks again took 9.5-10 min, one that
        kept them 3.2-3.3, and the tables ranked nets as well (docs/benchmarks.md)."""
        for tries in range(self.policy.retries + 1):
            result, problem = attempt()
            if problem is None:
                return result
            others = self._others()
            if tries == self.policy.retries or self._quiet(others):
                break
            self.report.chunks_redone += 1
        self._keep_or_refuse(f"{problem} after {tries} re-measurements of {what}", others)
        self.report.chunks_kept_noisy += 1
        return result

    def _quiet(self, others: float | None) -> bool:
        """Whether ``others`` (``_others``) shows nothing else running: False when other
        processes took CPU time, or when there is no accounting to read."""
        return others is not None and others <= self.policy.busy_cores

    def _kept_at_start_speed(self, timings: list[Timing], speed_ms: float,
                             reference_ms: float) -> list[Timing]:  # fmt: skip
        """``timings`` kept: counted in the report, and scaled from the reference net's time
        ``speed_ms`` while they ran to its time at the start; ``reference_ms``, the last
        reference timing, joins those the speed is held against unless it is off that speed
        itself (a chunk kept at once on a quiet machine, or under --allow-noise) and the
        reference timed before it was not at its level: one slow spell of the VM would
        otherwise make the next ``speed_window`` chunks at the usual speed look off it too, and
        a load beside them be refused against the spell, while a level that lasts is the
        machine's new speed."""
        if self._speed_jump(reference_ms) is None or self._lasted(reference_ms):
            self._kept.append(reference_ms)
        self.report.kept_noisy += sum(t.spread > self.policy.max_spread for t in timings)
        self.report.worst_spread = max([self.report.worst_spread, *(t.spread for t in timings)])
        return [t.scaled(self._base / speed_ms) for t in timings]

    def _lasted(self, reference_ms: float) -> bool:
        """Whether the reference timing before ``reference_ms`` (the chunk's start, or the
        last pass's) was within ``max_drift`` of it."""
        earlier = self.report.reference_ms[-2:-1]
        return bool(earlier) and abs(reference_ms / earlier[0] - 1.0) <= self.policy.max_drift

    def _read_clock(self) -> None:
        """Keep a reading of the CPU clocks, at most one per ``_READING_EVERY_S``."""
        now = self.clock()
        if now is None or (
            self._recent and now.wall_s - self._recent[-1].wall_s < _READING_EVERY_S
        ):
            return
        self._recent.append(now)
        if not self._early or now.wall_s - self._early[0].wall_s <= _EARLY_S:
            self._early.append(now)

    def _others(self) -> float | None:
        """The most cores other processes took in a window of the guard's start or of the last
        seconds; where no window is a second long yet, this process sleeps to complete one
        (asleep, it takes nothing itself). None: no accounting."""
        now = self.clock()
        if now is None or not self._early:
            return None
        oldest = self._early[0]
        if now.wall_s - oldest.wall_s < _WINDOW_S:
            time.sleep(_WINDOW_S - (now.wall_s - oldest.wall_s))
            now = self.clock() or now
        recent = [*self._recent, now]
        return max([*_window_rates(self._early), *_window_rates(recent)], default=None)

    def _keep_or_refuse(self, problem: str, others: float | None) -> None:
        """Timings that stayed noisy: kept under --allow-noise, and kept in strict mode too when
        ``others`` (``_others``, read once for the whole decision) shows nothing else running
        (counted in ``unsteady``: the machine's own unsteadiness, which nothing the user stops
        cures); else one line naming the cause: other processes taking CPU time, or unknown (no
        accounting to read)."""
        if not self.policy.strict:
            return
        if self._quiet(others):
            self.report.unsteady += 1
            return
        if others is None:
            cause = "the machine is busy or unsteady"
            advice = f"{_STOP_OTHERS}, or keep noisy timings with --allow-noise"
        else:
            cause = f"the machine is busy (other processes took {others:.2f} cores)"
            advice = _STOP_OTHERS
        raise NoisyMachine(f"{self.what}: {cause}: {problem}; {advice}")

    def _problem(self, before: float, after: float) -> str | None:
        """Why the timings of a chunk between two reference timings cannot be kept, if so:
        the machine's speed jumped (``_speed_jump``), or it moved within the chunk."""
        jump = self._speed_jump(after)
        if jump is not None:
            return jump
        if abs(after / before - 1.0) > self.policy.max_drift:
            return (f"the reference net's time changed {after / before:.2f}x within one chunk "
                    f"({before:.3f} -> {after:.3f} ms; at most "
                    f"{100 * self.policy.max_drift:.0f} % is kept)")  # fmt: skip
        return None

    def _speed_jump(self, after: float) -> str | None:
        """Why the reference net's time ``after`` is off the speed kept, if it is: against
        its timings around the last ``speed_window`` chunks kept (slower: another process;
        faster: those, or the start, were measured while busy)."""
        first = max(len(self._kept) - self.policy.speed_window, 0)
        index = max(range(first, len(self._kept)),
                    key=lambda i: abs(math.log(after / self._kept[i])))  # fmt: skip
        ratio = after / self._kept[index]
        if abs(ratio - 1.0) > self.policy.max_speed_change:
            back = len(self._kept) - index
            when = "at the start" if index == 0 else f"{back} chunk{'s' * (back > 1)} earlier"
            return (f"the reference net ran {ratio:.2f}x its time {when} ({after:.3f} vs "
                    f"{self._kept[index]:.3f} ms; at most "
                    f"{100 * self.policy.max_speed_change:.0f} % off is kept)")  # fmt: skip
        return None


def median_of(timings: list[Timing]) -> Timing:
    """One job's passes: the median of their medians and of their IQRs; every pass's median is
    kept (those of timings that were combined already, in order)."""
    return Timing(statistics.median(t.median_ms for t in timings),
                  statistics.median(t.iqr_ms for t in timings),
                  sum(t.runs for t in timings),
                  tuple(ms for t in timings for ms in t.passes or (t.median_ms,)))  # fmt: skip


def shared_speeds(log_ms: np.ndarray) -> np.ndarray:
    """Each pass's shared speed in ``log_ms[job, pass]`` (log): the median over the jobs of
    their log time in the pass less their median log time over all passes."""
    return np.median(log_ms - np.median(log_ms, axis=1, keepdims=True), axis=0)


def shared_medians(passes: list[list[Timing]]) -> list[Timing]:
    """Each job's timing over ``passes`` (``passes[pass][job]``, the same jobs in each):
    ``median_of`` its passes once each pass's shared speed is divided out, the median over the
    pass's jobs of their time over their median across the passes. A pass's level is then set
    by all its jobs rather than by the one reference net timed beside them, whose own noise
    (5-6 % a pass on a 2-core EPYC VM) would fall on every job of the pass: two 5-pass checks
    of 30 nets there agreed to tau 0.82 against 0.80 (batch 8: 0.86 against 0.85,
    ``benchmarks/speed_skew.py``). One pass, one job or a time of 0: the plain medians."""
    if not passes:
        return []
    ms = np.array([[t.median_ms for t in timings] for timings in passes]).T  # job x pass
    speeds = np.ones(len(passes))
    if len(passes) > 1 and ms.shape[0] > 1 and (ms > 0).all():
        speeds = np.exp(shared_speeds(np.log(ms)))
    return [median_of([t.scaled(1.0 / float(speed)) for t, speed in zip(job, speeds, strict=True)])
            for job in zip(*passes, strict=True)]  # fmt: skip
