"""Checkpoint files: written atomically, read with ``weights_only=True`` (no arbitrary code)."""

from __future__ import annotations

import pickle
import re
import struct
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from dnas.config import Experiment, config_changes, config_hash
from dnas.errors import DnasError, listing
from dnas.files import write_atomic


def save_atomic(obj: Any, path: Path) -> None:
    """torch.save to a temporary file, fsync, then rename: a crash never leaves half a file."""
    try:
        write_atomic(path, lambda fh: torch.save(obj, fh))
    except RuntimeError as exc:  # torch's zip writer reports a failed write (a full disk) so
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DnasError(f"{path}: could not be written, is the disk full? ({first})") from None


def load(path: Path, map_location: str | torch.device = "cpu") -> Any:
    """Load a dnas checkpoint or a plain state_dict; refuses pickles that need arbitrary code."""
    path = Path(path)
    if not path.is_file():
        raise DnasError(f"{path}: no such checkpoint file")
    try:
        with warnings.catch_warnings():  # torch warns of an old pickle protocol: not one line
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, map_location=map_location, weights_only=True)
    # torch's safe unpickler also raises these on text and other malformed files (a YAML given
    # as weights: IndexError); the load reads data only, so each means "not a checkpoint"
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError, KeyError,
            IndexError, TypeError, AttributeError, struct.error) as exc:  # fmt: skip
        raise DnasError(f"{path}: {_load_problem(exc)}") from None


def _load_problem(exc: BaseException) -> str:
    """torch.load's failure in one line, without its advice to turn weights_only off."""
    text = str(exc)
    if found := re.search(r"Unsupported global: GLOBAL (\S+)", text):
        return (f"refused: it pickles the Python object {found.group(1)}, so loading it would "
                "run arbitrary code; re-save it as a state_dict of tensors")  # fmt: skip
    if "Weights only load failed" in text or isinstance(exc, KeyError | IndexError):
        return "not a PyTorch checkpoint (no pickled tensors in it)"
    if "PytorchStreamReader failed" in text:  # torch adds four sentences of advice to it
        return "not a readable PyTorch checkpoint (a truncated or damaged zip archive)"
    if isinstance(exc, EOFError):
        return "not a readable PyTorch checkpoint (empty or cut short)"
    first = next((line.strip() for line in text.splitlines() if line.strip()), type(exc).__name__)
    return f"not a readable PyTorch checkpoint ({first})"


def state_dict_of(obj: Any, path: Path) -> dict:
    """Accept a dnas checkpoint (``{"model": state_dict, ...}``) or a bare state_dict whose
    tensors are all finite."""
    if isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
        state = obj["model"]
    elif isinstance(obj, dict) and all(isinstance(v, torch.Tensor) for v in obj.values()):
        state = obj
    else:
        raise DnasError(f"{path}: not a state_dict or a dnas checkpoint with a 'model' entry")
    check_finite(state, path)
    return state


def check_finite(state: dict, path: Path) -> None:
    """Weights with NaN or infinite values (a diverged training) would evaluate, export and
    predict without a word, every score NaN or 0: refuse them in one line."""
    for name, tensor in state.items():
        if isinstance(tensor, torch.Tensor) and tensor.is_floating_point() \
                and not bool(torch.isfinite(tensor).all()):  # fmt: skip
            raise DnasError(f"{path}: {name} holds NaN or infinite values (a training that "
                            "diverged?); these weights cannot be used")  # fmt: skip


def step_files(directory: Path) -> list[Path]:
    """The resume checkpoints ``step-<global step>.pt`` in ``directory``, oldest first."""
    found = []
    for path in Path(directory).glob("step-*.pt"):
        if (match := re.fullmatch(r"step-(\d+)\.pt", path.name)) is not None:
            found.append((int(match.group(1)), path))
    return [path for _, path in sorted(found)]


class Checkpointer:
    """Rotating resume checkpoints in ``directory``: ``step-<global step>.pt``, the newest
    ``keep_last`` kept. :meth:`latest` skips (with a warning) files that do not load, such as
    one truncated by a crash or a full disk, and falls back to the one before."""

    def __init__(self, directory: Path, keep_last: int, warn: Callable[[str], None]) -> None:
        self.directory, self.keep_last, self.warn = Path(directory), keep_last, warn

    def files(self) -> list[Path]:
        """Checkpoint files, oldest first."""
        return step_files(self.directory)

    def save(self, state: dict, step: int) -> Path:
        path = self.directory / f"step-{step:09d}.pt"
        save_atomic(state, path)
        for old in self.files()[: -self.keep_last]:
            old.unlink()
        return path

    def latest(self, kind: str) -> tuple[dict, Path] | None:
        """The newest checkpoint of ``kind`` that loads, or None when there is none."""
        for path in reversed(self.files()):
            try:
                state = load(path)
            except DnasError as exc:
                self.warn(f"warning: skipping unreadable checkpoint ({exc}); trying the one before")
                continue
            if not isinstance(state, dict) or state.get("kind") != kind:
                self.warn(f"warning: skipping {path}: not a {kind} checkpoint")
                continue
            return state, path
        return None


def check_resumable(state: dict, exp: Experiment, path: Path, force: bool) -> None:
    """A resume continues the same experiment unless the user forces a changed config; the
    error names the keys that changed."""
    if force or state.get("config_hash") == config_hash(exp):
        return
    changed = config_changes(state.get("config"), exp)
    if changed:
        shown = listing(changed, 6)
        raise DnasError(
            f"{path}: the config differs from the one this run was started with ({shown}; see "
            "the run's config.yaml); pass --force to resume with the new config anyway"
        )
