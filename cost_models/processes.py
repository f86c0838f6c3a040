"""Running one pass of timings in a fresh Python process.

A process's memory layout, drawn at its start (address-space layout randomisation, the
stack's offset), biases every timing taken in it, and each network differently. On the 2-core
VM, six 256x256 nets timed in 5-6 fresh processes one after the other varied by 1.7-2.4 %
(sd over the processes of each net's time relative to the others'; three such sets), while
within one process their pattern held for a minute; with the layout fixed (``setarch -R``)
the same figure was 0.7-1.2 %. A table built in one process and checked in another carries
both layouts, and no number of rounds inside one process averages them. So, as pyperf runs a
benchmark in many worker processes, a build or check with several rounds runs each round in
a process of its own, and a timing's median over the rounds averages the layouts as it
averages the machine's moments (Mytkowicz et al., "Producing wrong data without doing
anything obviously wrong!", ASPLOS 2009).
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import signal
import traceback
from collections.abc import Callable
from typing import Any, TypeVar

from dnas.errors import DnasError

T = TypeVar("T")
Done = Callable[[int], object]
_POLL_S = 0.5  # how often the parent looks whether a silent child is still alive


def in_fresh_process(fn: Callable[..., T], args: tuple, done: Done | None = None) -> T:
    """``fn(*args, report)`` in a freshly started interpreter (``spawn``: a new address layout,
    nothing inherited); ``report(n)`` in the child calls ``done(n)`` here. A ``DnasError`` in
    the child is raised here as the same class with its one line; any other error as a
    ``RuntimeError`` carrying the child's traceback. ``fn`` must be importable by its module
    and name, and ``args`` picklable. Interrupted here (Ctrl-C, an error), the child is
    stopped at once; it also stops by itself when this process dies."""
    context = multiprocessing.get_context("spawn")
    messages = context.Queue()
    child = context.Process(target=_child, args=(fn, args, messages), daemon=True)
    child.start()
    finished = False
    try:
        while True:
            kind, value = _next_message(messages, child)
            if kind == "done":
                if done is not None:
                    done(value)
            elif kind == "result":
                finished = True
                return value
            elif kind == "dnas":
                raise _dnas_error(*value)
            else:
                raise RuntimeError(f"the timing process failed:\n{value}")
    finally:
        if not finished:
            child.terminate()
        child.join(timeout=10)


def _dnas_error(error_type: type[DnasError], text: str) -> DnasError:
    """The child's error as its own class where that takes the one line, else a DnasError."""
    try:
        return error_type(text)
    except TypeError:  # a subclass with more arguments (ConfigError): its line is what counts
        return DnasError(text)


def _next_message(messages: Any, child: Any) -> tuple[str, Any]:
    """The child's next message, waiting while it lives; one line if it died without one."""
    while True:
        try:
            return messages.get(timeout=_POLL_S)
        except queue.Empty:
            if child.is_alive():
                continue
        try:  # it may have exited right after its last message
            return messages.get(timeout=2 * _POLL_S)
        except queue.Empty:
            raise DnasError(f"the timing process stopped (exit code {child.exitcode}) before "
                            "it reported; nothing was written") from None  # fmt: skip


def _child(fn: Callable[..., Any], args: tuple, messages: Any) -> None:
    """The child's side of ``in_fresh_process``: run, report progress, send the result or the
    error back. Ctrl-C is the parent's to handle (it stops the child), and a child whose
    parent died stops at its next report rather than time on for nothing."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    parent = multiprocessing.parent_process()

    def report(n: int) -> None:
        if parent is not None and not parent.is_alive():
            os._exit(1)
        messages.put(("done", n))

    try:
        result = fn(*args, report)
    except DnasError as error:
        messages.put(("dnas", (type(error), str(error))))
    except Exception:  # a bug: the parent shows the traceback
        messages.put(("bug", traceback.format_exc()))
    else:
        messages.put(("result", result))
    messages.close()
    messages.join_thread()
