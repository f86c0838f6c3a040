"""How much CPU time other processes took while this one timed.

A timing that wanders has two causes that look alike in the timings themselves: another
process on this machine (the user can stop it) or the host under a shared VM changing its
speed with nothing else running (stopping nothing cures it). The kernel's accounting tells
them apart: the busy CPU time of the CPUs this process may run on (``/proc/stat``) minus this
process's own (all its threads) is what the others took. On the 2-core VM, during a build's
timings, the two agreed to 0.005 cores while the reference net's time swung by 27 %; one busy
process beside a 2-thread timing shows as about 0.6 cores taken by others.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

PROC_STAT = Path("/proc/stat")
# a "cpuN" line's user, nice, system, irq and softirq ticks; idle, iowait and steal (time the
# host gave to other VMs) are not work done here, and guest time is already inside user/nice
_BUSY_FIELDS = (0, 1, 2, 5, 6)


@dataclass(frozen=True)
class CpuClock:
    """One reading: wall time, the busy CPU-seconds of this process's CPUs, this process's."""

    wall_s: float
    machine_s: float
    own_s: float


def _allowed_cpus() -> set[int] | None:
    """The CPUs this process may run on (a container's cpuset), None where unknown."""
    return os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None


def _counted(name: str, cpus: set[int] | None) -> bool:
    """Whether the ``/proc/stat`` line ``name`` counts: a CPU of ``cpus``, else the aggregate."""
    if cpus is None:
        return name == "cpu"
    return name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus


def busy_seconds(text: str, cpus: set[int] | None) -> float:
    """Busy CPU-seconds in ``/proc/stat``'s ``text``: of ``cpus``, else of the whole machine.
    ValueError (or IndexError) if it has no such line, or a malformed one."""
    counted = [
        f for f in (line.split() for line in text.splitlines()) if f and _counted(f[0], cpus)
    ]
    if not counted:
        raise ValueError("no cpu lines")
    ticks = sum(int(fields[1 + i]) for fields in counted for i in _BUSY_FIELDS)
    return ticks / os.sysconf("SC_CLK_TCK")


def read_clock(stat: Path = PROC_STAT) -> CpuClock | None:
    """The clocks now; None where the kernel's accounting cannot be read (no ``/proc``)."""
    try:
        busy = busy_seconds(stat.read_text(), _allowed_cpus())
    except (OSError, ValueError, IndexError):
        return None
    own = os.times()
    return CpuClock(time.monotonic(), busy, own.user + own.system)


def others_cores(start: CpuClock | None, end: CpuClock | None) -> float | None:
    """Cores that other processes kept busy on average between two readings (None: unknown)."""
    if start is None or end is None or end.wall_s <= start.wall_s:
        return None
    taken = (end.machine_s - start.machine_s) - (end.own_s - start.own_s)
    return max(taken, 0.0) / (end.wall_s - start.wall_s)
