"""Files written atomically: into a temporary file beside the target, fsync'ed, then renamed,
so that a crash or a full disk never leaves half a checkpoint, cost table or result file."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from dnas.errors import DnasError


def write_atomic(path: Path | str, write: Callable[[BinaryIO], object]) -> None:
    """Call ``write`` on a temporary file, fsync it and rename it to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # only left when writing failed


def copy_atomic(source: Path | str, path: Path | str) -> None:
    """A copy of ``source`` at ``path``, atomically: one state saved under several names is
    serialised once (pickling a super net's checkpoint takes several times its copy)."""
    with open(source, "rb") as src:
        write_atomic(path, lambda fh: shutil.copyfileobj(src, fh, 1 << 20))


def write_text_atomic(path: Path | str, text: str) -> None:
    """``path.write_text(text)`` (UTF-8), atomically."""
    write_atomic(path, lambda fh: fh.write(text.encode("utf-8")))


def check_writable(path: Path | str) -> None:
    """A one-line error, before any work is done, when ``path`` cannot be created: a file
    stands where one of its folders should be, or the nearest existing folder is read-only."""
    for parent in Path(path).absolute().parents:
        if not parent.exists():
            continue
        if not parent.is_dir():
            raise DnasError(f"{path}: cannot be written: {parent} is a file, not a folder")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise DnasError(f"{path}: cannot be written: {parent} is not writable")
        return
