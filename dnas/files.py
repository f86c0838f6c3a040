"""Files written atomically: into a temporary file beside the target, fsync'ed, then renamed,
so that a crash or a full disk never leaves half a checkpoint, cost table or result file."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


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


def write_text_atomic(path: Path | str, text: str) -> None:
    """``path.write_text(text)`` (UTF-8), atomically."""
    write_atomic(path, lambda fh: fh.write(text.encode("utf-8")))
