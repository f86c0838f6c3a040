"""Built-in synthetic datasets are cached in their folder: ``synth.json`` records what the
generator was asked for, so running a ``dnas data synth-*`` command again with the same
parameters does nothing, and a different set is never overwritten without ``--force``."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from dnas.errors import DnasError


def already_there(out: Path, wanted: dict[str, Any], force: bool, parts: Iterable[str]) -> bool:
    """True when ``out`` holds exactly the set ``wanted`` describes (nothing to do). Otherwise
    makes room for a new one: a different set's ``parts`` (sub-folders) are removed with
    ``force`` and refused without; a folder with other content is always refused."""
    manifest_path = out / "synth.json"
    if manifest_path.exists():
        manifest = json.loads(manifest_path.read_text())
        if all(manifest.get(k) == v for k, v in wanted.items()):
            return True
        if not force:
            raise DnasError(f"{out} holds a different synthetic set ({manifest_path}); "
                            "pass --force to regenerate it or choose another OUT")  # fmt: skip
        for part in parts:
            shutil.rmtree(out / part, ignore_errors=True)
    elif out.exists() and any(out.iterdir()) and not force:
        raise DnasError(f"{out} is not empty and holds no synth.json; choose another OUT")
    return False
