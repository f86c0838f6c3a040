"""What a run shows while it works: progress bars with ETA on a terminal, or (``--quiet``, and
always off a terminal) plain periodic log lines for batch jobs; every log line also goes to
the run directory's ``log.txt``.
"""

from __future__ import annotations

import sys
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from tqdm import tqdm

T = TypeVar("T")


class Reporter:
    """Log lines (console + ``log.txt``) and step progress of one run.

    Only the main process of a distributed run reports (``active``); the others stay silent.
    """

    def __init__(self, echo: Callable[[str], None] = print, quiet: bool = False,
                 every_s: float = 30.0, active: bool = True) -> None:  # fmt: skip
        self.echo, self.quiet, self.every_s, self.active = echo, quiet, every_s, active
        self.log_file: Path | None = None
        self._bar: tqdm | None = None

    def attach(self, log_file: Path) -> None:
        """Also append every line, time-stamped, to ``log_file``."""
        self.log_file = log_file

    def line(self, text: str) -> None:
        if not self.active:
            return
        if self._bar is not None:
            self._bar.write(text)
        else:
            self.echo(text)
        self.log(text)

    def log(self, text: str) -> None:
        """Into the log file only (a line the command prints itself, as its error); each line
        of a text of several gets the time stamp."""
        if self.active and self.log_file is not None:
            stamp = datetime.now().isoformat(timespec="seconds")
            with open(self.log_file, "a") as fh:
                fh.writelines(f"{stamp} {line}\n" for line in text.splitlines() or [""])

    @contextmanager
    def warnings_logged(self) -> Iterator[None]:
        """Python warnings raised meanwhile go into ``log.txt`` too, as the console shows them."""
        shown = warnings.showwarning

        def show(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                 file: Any = None, line: str | None = None) -> None:  # fmt: skip
            shown(message, category, filename, lineno, file, line)
            self.log(f"warning: {message}")

        warnings.showwarning = show
        try:
            yield
        finally:
            warnings.showwarning = shown

    def steps(self, items: Iterable[T], total: int, start: int, desc: str,
              status: Callable[[], dict[str, float]] | None = None) -> Iterator[T]:  # fmt: skip
        """Yield ``items`` (steps ``start`` .. ``total`` of an epoch) with a bar or, when quiet,
        a line every ``every_s`` seconds with the rate, ETA and ``status()`` values."""
        if not self.active:
            yield from items
            return
        if not self.quiet and sys.stderr.isatty():  # off a terminal (nohup, SLURM, | tee): lines
            with tqdm(items, total=total, initial=start, desc=desc, leave=False,
                      disable=None, dynamic_ncols=True) as bar:  # fmt: skip
                self._bar = None if bar.disable else bar
                try:
                    for item in bar:
                        yield item
                        if status is not None and self._bar is not None:
                            bar.set_postfix({k: f"{v:.4g}" for k, v in status().items()})
                finally:
                    self._bar = None
            return
        yield from self._quiet_steps(items, total, start, desc, status)

    def _quiet_steps(self, items: Iterable[T], total: int, start: int, desc: str,
                     status: Callable[[], dict[str, float]] | None) -> Iterator[T]:  # fmt: skip
        began = last = time.monotonic()
        done = start
        for item in items:
            yield item
            done += 1
            now = time.monotonic()
            if now - last >= self.every_s and done < total:
                last = now
                rate = (done - start) / (now - began)
                eta = timedelta(seconds=round((total - done) / rate)) if rate > 0 else "?"
                extra = "".join(f"  {k} {v:.4g}" for k, v in (status() if status else {}).items())
                self.line(f"{desc}: step {done}/{total}  {rate:.3g} steps/s  eta {eta}{extra}")


@contextmanager
def counter(
    total: int, desc: str, every_s: float = 30.0, echo: Callable[[str], None] | None = None
) -> Iterator[Callable[[int], None]]:
    """An ``update(n)`` callable for work done in counted units: a bar on a terminal, else (a
    log file, a batch job) a line on stderr every ``every_s`` seconds with the count and ETA,
    so that minutes of timings never pass in silence."""
    echo = echo or (lambda text: print(text, file=sys.stderr, flush=True))
    if sys.stderr.isatty():
        with tqdm(total=total, desc=desc) as bar:
            yield bar.update
        return
    began = last = time.monotonic()
    done = 0

    def update(n: int) -> None:
        nonlocal done, last
        done += n
        now = time.monotonic()
        if now - last >= every_s and done < total:
            last = now
            eta = timedelta(seconds=round((total - done) * (now - began) / done))
            echo(f"{desc}: {done}/{total} ({done / total:.0%})  eta {eta}")

    yield update


def eta_text(done_epochs: int, total_epochs: int, seconds_per_epoch: float) -> str:
    """``eta 0:12:03`` for the remaining epochs, from the last epoch's duration."""
    left = max(total_epochs - done_epochs, 0) * seconds_per_epoch
    return f"eta {timedelta(seconds=round(left))}"
