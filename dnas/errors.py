"""User-facing errors: the CLI prints them as one line and exits non-zero, never a traceback."""

from __future__ import annotations

import signal


class DnasError(Exception):
    """A mistake in the user's input (file, key, value) rather than a bug in dnas."""

    agreed = False  # raised by every torchrun process together (see AgreedError)


class ConfigError(DnasError):
    """A config/YAML value is missing or wrong; the message names the file and the key path."""

    def __init__(self, source: str, key: str, message: str) -> None:
        self.source, self.key, self.detail = source, key, message
        where = ": ".join(part for part in (source, key) if part)  # no file: an option alone
        super().__init__(f"{where}: {message}")


class AgreedError(DnasError):
    """An error every torchrun process raises together, its one line saying which process
    met what (processes that failed apart in :func:`dnas.engine.distributed.failing_together`,
    or resumed from other checkpoints)."""

    agreed = True


class JoinError(DnasError):
    """A torchrun process could not join the others: its own reason, which it says whichever
    process it is (an error raised before the group exists is otherwise taken as every
    process's, said by the first of each node)."""


class Interrupted(DnasError):
    """A run stopped by SIGINT or SIGTERM after checkpointing; exits 128 + the signal number
    (130, 143), as a shell reports a command the signal ended."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum


class Signalled(BaseException):
    """SIGINT or SIGTERM outside a run's steps (set-up, teardown, a second signal): raised as
    KeyboardInterrupt is, past every ``except Exception``, so that clean-up runs; the CLI prints
    its line and exits 128 + the signal number."""

    def __init__(self, signum: int, detail: str = "") -> None:
        self.signum, self.detail = signum, detail
        self.exit_code = 128 + signum
        name = signal.Signals(signum).name
        super().__init__(f"interrupted ({name})" + (f" {detail}" if detail else ""))

    def where(self, detail: str) -> Signalled:
        """The same signal, its line saying what it stopped."""
        return Signalled(self.signum, detail)


def listing(items: list[str], limit: int) -> str:
    """``a, b, c and 4 more``: at most ``limit`` items of a list for a one-line message."""
    more = len(items) - limit
    return ", ".join(items[:limit]) + (f" and {more} more" if more > 0 else "")


def brief(exc: BaseException) -> str:
    """``TypeName: line``: an exception's type and the first non-empty line of its message, the
    line cut to 200 characters: another library's error inside a one-line message of ours."""
    first = next((line for line in str(exc).splitlines() if line.strip()), "")[:200]
    return f"{type(exc).__name__}: {first}"


WORKER_PREFIX = "Caught "  # how torch's DataLoader re-raises an exception from a worker


def from_worker(exc: BaseException) -> str | None:
    """The one-line message of a dnas error raised inside a DataLoader worker, which torch
    re-raises with the worker's traceback appended (as a RuntimeError for ConfigError); None
    when ``exc`` is something else."""
    text = str(exc)
    if not (text.startswith(WORKER_PREFIX) and "DataLoader worker" in text):
        return None
    last = text.rstrip().splitlines()[-1]
    for name in ("dnas.errors.ConfigError: ", "dnas.errors.DnasError: "):
        if last.startswith(name):
            return last[len(name) :]
    return None


def user_error_line(exc: BaseException) -> str | None:
    """The one line a user error says: a dnas error raised in a DataLoader worker as it was
    raised there, an OSError as ``path: reason``, a DnasError's message; None for anything
    else (a bug, whose traceback is wanted)."""
    if (line := from_worker(exc)) is not None:
        return line
    if isinstance(exc, OSError):
        where = f"{exc.filename}: " if exc.filename else ""
        return f"{where}{exc.strerror or exc}"
    return str(exc) if isinstance(exc, DnasError) else None
