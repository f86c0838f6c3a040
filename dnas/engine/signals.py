"""SIGINT and SIGTERM in a ``dnas`` process: outside a run's steps they raise
:class:`dnas.errors.Signalled`, so a run stopped during its set-up or teardown still frees its
lock and removes the folder it created; inside the steps a run records them and stops at a step
boundary with a checkpoint (:func:`stop_signals`)."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator

from dnas.errors import Signalled

SIGNALS = (signal.SIGINT, signal.SIGTERM)


def raise_on_signals() -> None:
    """From now on SIGINT and SIGTERM raise :class:`Signalled` in this process (the CLI calls
    it first). A process forked from it (a data loader's worker) acts on them as it would by
    default: SIGINT raises KeyboardInterrupt, which such workers expect, and SIGTERM ends it."""
    owner = os.getpid()

    def stop(signum: int, frame: object) -> None:
        if os.getpid() == owner:
            raise Signalled(signum)
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)

    for signum in SIGNALS:
        signal.signal(signum, stop)


def exit_on_signals(code: int) -> None:
    """After the command, with its exit status ``code``: its results are written, and the
    interpreter's shutdown (a second or more with torch) is no place for an exception's
    traceback, nor for a 143 that tells a scheduler that a finished job failed. SIGINT ends
    the process at once with ``code`` (Ctrl-C still cuts a slow exit short); SIGTERM is
    ignored (a Python handler would be reset to the default, which kills, before torch's own
    teardown), so the process ends with ``code`` within its scheduler's grace period."""
    sys.stdout.flush()
    sys.stderr.flush()

    def leave(signum: int, frame: object) -> None:
        os._exit(code)

    signal.signal(signal.SIGINT, leave)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


@contextlib.contextmanager
def stop_signals(handler: Callable[[int], None]) -> Iterator[None]:
    """Route SIGINT and SIGTERM to ``handler`` (it records them; the run stops at a step
    boundary) while the block runs; the previous handlers afterwards. A second signal while
    the first is pending goes to the previous handler at once."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in SIGNALS}

    def record(signum: int, frame: object) -> None:
        handler(signum)  # first: a second signal then finds the first recorded
        for s in SIGNALS:  # a second Ctrl-C is not swallowed
            signal.signal(s, previous[s])

    for s in SIGNALS:
        signal.signal(s, record)
    try:
        yield
    finally:
        for s in SIGNALS:
            signal.signal(s, previous[s])
