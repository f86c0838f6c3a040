"""Checkpoint files: written atomically, read with ``weights_only=True`` (no arbitrary code)."""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path
from typing import Any

import torch

from dnas.errors import DnasError


def save_atomic(obj: Any, path: Path) -> None:
    """torch.save to a temporary file, fsync, then rename: a crash never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as fh:
        torch.save(obj, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def load(path: Path, map_location: str | torch.device = "cpu") -> Any:
    """Load a dnas checkpoint or a plain state_dict; refuses pickles that need arbitrary code."""
    path = Path(path)
    if not path.is_file():
        raise DnasError(f"{path}: no such checkpoint file")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    # torch's safe unpickler also raises KeyError on some malformed pickles
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError, KeyError) as exc:
        raise DnasError(f"{path}: {_load_problem(exc)}") from None


def _load_problem(exc: BaseException) -> str:
    """torch.load's failure in one line, without its advice to turn weights_only off."""
    text = str(exc)
    if found := re.search(r"Unsupported global: GLOBAL (\S+)", text):
        return (f"refused: it pickles the Python object {found.group(1)}, so loading it would "
                "run arbitrary code; re-save it as a state_dict of tensors")  # fmt: skip
    if "Weights only load failed" in text or isinstance(exc, KeyError):
        return "not a PyTorch checkpoint (no pickled tensors in it)"
    first = next((line.strip() for line in text.splitlines() if line.strip()), type(exc).__name__)
    return f"not a readable PyTorch checkpoint ({first})"


def state_dict_of(obj: Any, path: Path) -> dict:
    """Accept a dnas checkpoint (``{"model": state_dict, ...}``) or a bare state_dict."""
    if isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
        return obj["model"]
    if isinstance(obj, dict) and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj
    raise DnasError(f"{path}: not a state_dict or a dnas checkpoint with a 'model' entry")
