"""A run directory in use: its lock (one run writes into it at a time) and the reset of its
outputs when a run starts afresh over an earlier one."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import socket
import sys
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from dnas.errors import DnasError, listing

LOCK = ".dnas.lock"
# what every search or training run logs: cleared before a fresh run writes its first line
LOGS = ("log.txt", "tb", "metrics.jsonl")
# what it records; each run kind adds its result files. Cleared once the run has read its
# inputs, which may be among them ('dnas train --init RUN/model.pt --out RUN --force')
CHECKPOINTS = "checkpoints"
COMMON_OUTPUTS = (CHECKPOINTS, "config.yaml")


def command_line() -> str:
    """The command this process runs, as a user would type it (``dnas search ...``; under
    torchrun ``torchrun --nproc_per_node N -m dnas search ...``, the launcher's rendezvous
    options aside)."""
    args = sys.argv[1:] if Path(sys.argv[0]).name in ("dnas", "__main__.py") else []
    if not args:
        return shlex.join(sys.argv)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return shlex.join(["dnas", *args])
    local = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    nodes = ["--nnodes", str(world // local)] if world > local else []
    return shlex.join(["torchrun", *nodes, "--nproc_per_node", str(local), "-m", "dnas", *args])


def _running(pid: int) -> bool:
    """Whether process ``pid`` exists here and (where /proc tells) is a dnas or Python run,
    so that a lock whose pid the system has since reused counts as stale."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    cmdline = Path(f"/proc/{pid}/cmdline")
    if cmdline.exists():
        text = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        return "dnas" in text or "python" in text
    return True


class RunLock:
    """``out_dir/.dnas.lock``, created exclusively; it names the process that holds it. A lock
    whose process no longer runs (a killed run) is taken over with a warning; one held by a
    live process, or by another host, is a one-line error naming it."""

    def __init__(self, out_dir: Path) -> None:
        self.path = Path(out_dir) / LOCK
        self.held = False

    def acquire(self, warn: Callable[[str], None]) -> None:
        mine = {"pid": os.getpid(), "host": socket.gethostname(), "command": command_line(),
                "started": datetime.now().isoformat(timespec="seconds")}  # fmt: skip
        while not self._create(json.dumps(mine)):
            self._check_stale(warn)

    def _create(self, text: str) -> bool:
        """Create the lock holding ``text``, whole from its first moment: written beside it,
        then hard-linked into place, so that a run starting at the same time never reads it
        half-written and takes it for a stale lock. False when a lock exists. (Where the file
        system has no hard links: created exclusively, then written.)"""
        scratch = self.path.with_name(f"{LOCK}.{os.getpid()}.tmp")
        scratch.write_text(text)
        try:
            os.link(scratch, self.path)
        except FileExistsError:
            return False
        except OSError:  # no hard links here
            return self._create_in_place(text)
        finally:
            scratch.unlink(missing_ok=True)
        self.held = True
        return True

    def _create_in_place(self, text: str) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        self.held = True  # before the write: a signal during it still frees the file
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        return True

    def _check_stale(self, warn: Callable[[str], None]) -> None:
        try:
            holder = json.loads(self.path.read_text())
            pid, host = int(holder["pid"]), str(holder["host"])
        except (OSError, ValueError, KeyError, TypeError):
            holder, pid, host = {}, -1, socket.gethostname()  # unreadable: half-written, stale
        if pid == os.getpid() and host == socket.gethostname():
            raise DnasError(f"{self.path.parent}: already in use by this process")
        if host != socket.gethostname():
            raise DnasError(f"{self.path.parent}: in use by process {pid} on host {host} "
                            f"({holder.get('command', '?')}); if that run is gone, delete "
                            f"{self.path}")  # fmt: skip
        if pid > 0 and _running(pid):
            raise DnasError(f"{self.path.parent}: in use by process {pid} "
                            f"({holder.get('command', '?')}, since {holder.get('started', '?')}); "
                            "wait for it to end or stop it, or choose another --out")  # fmt: skip
        warn(f"warning: {self.path}: process {pid} that locked this run directory is gone; "
             "taking the lock over")  # fmt: skip
        self.path.unlink(missing_ok=True)

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False


def remove_if_empty(out_dir: Path, scratch: tuple[str, ...] = ()) -> None:
    """Remove ``out_dir`` if a run that failed to start left nothing in it but its log and the
    ``scratch`` files it wrote on the way (an evaluation's recorded arch.yaml)."""
    left = list(Path(out_dir).iterdir())
    if all(p.name in ("log.txt", *scratch) and p.is_file() for p in left):
        shutil.rmtree(out_dir)


def held_outputs(out_dir: Path, names: tuple[str, ...]) -> list[str]:
    """Which of a run kind's output ``names`` ``out_dir`` holds from an earlier run: its files
    and results, and its checkpoints when a step checkpoint is among them (a ``.tmp`` left by a
    killed write is none). ``config.yaml`` alone is no result."""
    from dnas.checkpoint import step_files

    held = []
    for name in names:
        path = Path(out_dir) / name
        if name == CHECKPOINTS:
            held += [name] * bool(step_files(path))
        elif name != "config.yaml" and path.exists():
            held.append(name)
    return held


def refuse_to_replace(out_dir: Path, names: tuple[str, ...], force: bool,
                      resuming: str | None = None) -> None:  # fmt: skip
    """The one rule of every run directory: starting afresh clears ``names``, so it is refused
    (unless ``force``) while they hold an earlier run's results or checkpoints. ``resuming``
    names the run kind of a resume that found no checkpoint of its own to continue."""
    held = [] if force else held_outputs(out_dir, names)
    if held and resuming:
        raise DnasError(f"{out_dir}: no {resuming} checkpoint to resume from, and it holds an "
                        f"earlier run's {listing(held, 4)}; pass --force to start afresh over "
                        "them, or choose another --out")  # fmt: skip
    if held:
        raise DnasError(f"{out_dir} already holds an earlier run's {listing(held, 4)}; pass "
                        "--force to overwrite it, or choose another --out")  # fmt: skip


def clear_outputs(out_dir: Path, names: tuple[str, ...]) -> None:
    """Remove an earlier run's outputs ``names`` (files or folders) from ``out_dir``, so a run
    that starts afresh there leaves no line, event file or result of the one before."""
    for name in names:
        path = Path(out_dir) / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
