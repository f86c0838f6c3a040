"""Keep freed memory in the process, so that repeated forward and backward passes reuse it.

glibc's malloc gives every allocation above its mmap threshold fresh pages from the kernel
and hands the top of its heap back once more than the trim threshold is free there; both
thresholds move with what the process has freed so far. A network's activations are freed
and allocated again at every step, so, depending on the heap's history, a step either reuses
mapped memory or takes a page fault for every 4 KiB of its tensors. Measured on a 2-core AMD
EPYC: a demo training epoch took 11-12 s with 2.0-2.2 M minor page faults, 8 s with 0.18 M once
freed memory is kept (the same losses). PyTorch's performance tuning guide recommends an
allocator that keeps memory (jemalloc, TCMalloc) on CPU for this reason; setting glibc's two
thresholds (``mallopt``) does it without a library. Every search, training and evaluation
(``RunContext``) keeps freed memory. Latency tables time nets as a process that leaves the
allocator alone runs them, unless built with ``--keep-freed-memory`` (``meta.allocator``).
"""

from __future__ import annotations

import ctypes
import functools
import os
import platform
import sys
from pathlib import Path

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's <malloc.h>
TRIM_BYTES = 1 << 30  # free memory at the heap's top that is handed back (glibc: 128 KiB up)
# allocations above this get pages of their own, each time (glibc's largest on 64-bit): a
# tensor over 32 MiB (a large batch's activation) still takes its page faults, kept or not
MMAP_BYTES = 32 << 20
# set by the user for glibc's malloc: then left as they are
ENVIRONMENT = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_",
               "MALLOC_MMAP_MAX_")  # fmt: skip
TUNABLES = ("glibc.malloc.trim_threshold", "glibc.malloc.mmap_threshold",
            "glibc.malloc.top_pad", "glibc.malloc.mmap_max")  # fmt: skip

# the labels latency tables record (meta.allocator) and lut check compares: never reworded
KEPT = "glibc malloc, freed memory kept"
DEFAULT = "glibc malloc, its default thresholds"


@functools.cache  # the thresholds belong to the process: set once
def keep_freed_memory() -> str:
    """Set glibc's mmap and trim thresholds for this process and return what its allocator
    does: ``KEPT``, or why it was left alone (``untouched``: another C library, a preloaded
    allocator, or thresholds the environment sets)."""
    if (alone := untouched()) != DEFAULT:
        return alone
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError) as exc:
        return f"glibc malloc, its default thresholds (mallopt not reachable: {exc})"
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    if not mallopt(M_MMAP_THRESHOLD, MMAP_BYTES):  # first: alone, it leaves a consistent state
        return "glibc malloc (its mmap threshold refused)"
    if not mallopt(M_TRIM_THRESHOLD, TRIM_BYTES):
        return "glibc malloc, mmap threshold fixed (its trim threshold refused)"
    return KEPT


def untouched() -> str:
    """What the allocator of a process that never called ``keep_freed_memory`` does (glibc
    read its environment at the process's start)."""
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return "system allocator (not glibc)"
    preloaded = [p for p in os.environ.get("LD_PRELOAD", "").replace(":", " ").split()
                 if "malloc" in Path(p).name]  # fmt: skip
    if preloaded:
        return f"preloaded allocator ({', '.join(preloaded)})"
    user = [name for name in ENVIRONMENT if name in os.environ]
    user += [name for name in TUNABLES if name in os.environ.get("GLIBC_TUNABLES", "")]
    if user:
        return f"glibc malloc as the environment sets it ({', '.join(user)})"
    return DEFAULT


def allocator_in_use() -> str:
    """What this process's allocator does now, without changing it."""
    return keep_freed_memory() if keep_freed_memory.cache_info().currsize else untouched()
