"""Files written atomically: into a temporary file beside the target, fsync'ed, then renamed,
so that a crash or a full disk never leaves half a checkpoint, cost table or result file."""

from __future__ import annotations

import os
import shutil
import tempfile
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
    stands where one of its folders should be, a name is too long for the file system, or the
    nearest existing folder does not take new files (read-only, or a pseudo file system such as
    /proc, which answers ``os.access`` as if it did: so a file is created there and removed)."""
    path = Path(path)
    for parent in path.absolute().parents:
        if not parent.exists():
            continue
        if not parent.is_dir():
            raise DnasError(f"{path}: cannot be written: {parent} is a file, not a folder")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise DnasError(f"{path}: cannot be written: {parent} is not writable")
        _check_names(path, parent)
        try:
            tempfile.TemporaryFile(dir=parent).close()  # created, and gone once closed
        except OSError as exc:
            raise DnasError(f"{path}: cannot be written: {parent} takes no new files "
                            f"({exc.strerror})") from None  # fmt: skip
        return


def _check_names(path: Path, existing: Path) -> None:
    """Every name still to be created below ``existing`` fits the file system, with room for
    the ``.NAME.tmp`` that ``write_atomic`` writes first."""
    limit = os.pathconf(existing, "PC_NAME_MAX")
    for name in path.absolute().relative_to(existing).parts:
        if len(f".{name}.tmp".encode()) > limit:
            raise DnasError(f"{name[:24]}...: cannot be written: the name is longer than the "
                            f"{limit - 5} bytes this file system allows")  # fmt: skip
