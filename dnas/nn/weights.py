"""Weights that say what they are: ``model.pt`` is a plain state_dict (``load_state_dict``
takes it as it is) whose ``_metadata["dnas"]`` records the architecture, the input size,
the head's outputs, the task and its input preprocessing; a training checkpoint (``best.pt``,
``last.pt``) records the same in its ``arch`` and ``config``. Consumers (eval, export,
predict) read it with :func:`weights_info` and refuse a mismatch in one line naming both
values."""

from __future__ import annotations

import json
import re
from collections import OrderedDict
from pathlib import Path
from typing import Any

from dnas import checkpoint
from dnas.config import DEFAULT_INPUT_HW
from dnas.errors import DnasError, listing
from dnas.nn.network import Network
from dnas.nn.profile import check_sizes, head_output_shape
from dnas.space.graph import SearchSpace, load_space, space_from_dict

KEY = "dnas"


def weights_file(path: Path) -> Path:
    """A weights file, or a train run directory's ``model.pt``."""
    path = Path(path)
    if path.is_dir():
        if not (path / "model.pt").is_file():
            raise DnasError(f"{path}: no model.pt in this directory (a finished dnas train run "
                            "has one)")  # fmt: skip
        return path / "model.pt"
    return path


def with_info(state: dict, info: dict[str, Any]) -> OrderedDict:
    """``state`` (a state_dict) carrying ``info``; torch.save keeps it, weights_only loads it."""
    out = OrderedDict(state)
    out._metadata = dict(getattr(state, "_metadata", {}))  # type: ignore[attr-defined]
    out._metadata[KEY] = info  # type: ignore[attr-defined]
    return out


def weights_info(path: Path) -> dict[str, Any] | None:
    """What the weights at ``path`` were trained as: ``arch`` (the architecture mapping),
    ``input_size``, ``num_outputs`` (None if unknown), ``task``, ``preprocess``; None for weights
    that record nothing (a bare state_dict from elsewhere)."""
    obj = checkpoint.load(path)
    if isinstance(obj, dict) and obj.get("kind") == "dnas-search":
        raise DnasError(
            f"{path}: a search checkpoint (its super net holds every candidate op); "
            "derive an architecture (dnas derive) and train it (dnas train) first"
        )
    info = getattr(obj, "_metadata", {}).get(KEY) if isinstance(obj, dict) else None
    if isinstance(info, dict):
        return info
    if isinstance(obj, dict) and isinstance(obj.get("info"), dict):
        return obj["info"]  # a training checkpoint
    if isinstance(obj, dict) and isinstance(obj.get("arch"), dict) and "config" in obj:
        config = obj["config"]  # a training checkpoint written before 2026-12-05
        task = config["task"].get("name")
        return {"arch": obj["arch"], "input_size": list(config["input_size"]),
                "num_outputs": None, "task": task, "preprocess": {}}  # fmt: skip
    return None


def load_weights(net: Network, path: Path) -> None:
    """Load a state_dict or dnas checkpoint into ``net``; a mismatch is a one-line error."""
    try:
        net.load_state_dict(checkpoint.state_dict_of(checkpoint.load(path), path))
    except RuntimeError as exc:  # torch: a header line, then one line per problem
        problems = [line.strip().rstrip(".") for line in str(exc).splitlines()[1:] if line.strip()]
        detail = problems[0] if problems else str(exc).strip()
        if len(detail) > 400:
            detail = detail[:400] + " ..."
        left = len(problems) - 1
        more = f"; {left} more problem{'s' * (left > 1)}" if left > 0 else ""
        keys = re.findall(r'"([^"]+)"|size mismatch for ([^:]+):', str(exc))
        if keys and all((a or b).startswith("head.") for a, b in keys):
            more += ("; only the head differs: they were trained with another head (an "
                     "experiment's head: section); use the architecture they were trained as, "
                     "e.g. the run's arch.yaml or none (the one they record)")  # fmt: skip
        raise DnasError(f"{path}: weights do not fit architecture {net.space.name!r}: {detail}"
                        f"{more}") from None  # fmt: skip


def head_outputs_of(path: Path) -> int:
    """The output channels of the weights at ``path``: those of their last head layer."""
    state = checkpoint.state_dict_of(checkpoint.load(path), path)
    head_weights = [v for k, v in state.items() if k.startswith("head.") and k.endswith("weight")]
    if not head_weights:
        raise DnasError(f"{path}: no head weights to size the output from")
    return int(head_weights[-1].shape[0])


def resolve(
    weights: Path, arch: str | None, input_size: tuple[int, int] | None, resizable: bool = False
) -> tuple[SearchSpace, tuple[int, int], dict[str, Any] | None]:
    """The architecture and input size to use ``weights`` with: those given, checked against
    what the weights record, else the recorded ones (input 256x256 when nothing says).
    ``resizable``: another input size is the caller's to check (:func:`resize_warning`)."""
    info = weights_info(weights)
    if arch is None and info is None:
        raise DnasError(f"{weights}: these weights record no architecture; pass --arch")
    space = load_space(arch) if arch else space_from_dict(info["arch"], str(weights))
    check_fits(info, weights, "architecture", info and info["arch"]["name"], space.name)
    size = input_size or tuple(info["input_size"] if info else DEFAULT_INPUT_HW)
    if not resizable:
        check_fits(info, weights, "input size", info and info["input_size"], size)
    return space, (int(size[0]), int(size[1])), info


def resize_warning(space: SearchSpace, info: dict[str, Any] | None, path: Path,
                   size: tuple[int, int], outputs: int) -> str | None:  # fmt: skip
    """Weights used at another input size than they were trained at: fine for these fully
    convolutional nets when the output keeps its stride (else a one-line error); the warning
    says that the accuracy measured at the training size does not carry over."""
    trained = tuple(int(v) for v in (info or {}).get("input_size") or ())
    if not trained or trained == tuple(size):
        return None
    check_sizes(size, outputs)
    before = head_output_shape(space, trained, outputs)[1:]
    after = head_output_shape(space, size, outputs)[1:]
    if any(t * a != s * b for t, s, b, a in zip(trained, size, before, after, strict=True)):
        stride = "x".join(dict.fromkeys(f"{t / b:g}" for t, b in zip(trained, before, strict=True)))
        raise DnasError(f"input size {show(size)}: the net's output would be {show(after)}, not "
                        f"the input / {stride} as at {show(trained)}, the size the weights were "
                        "trained at; use sides that the space's strides divide")  # fmt: skip
    return (
        f"{path}: trained at {show(trained)}, used here at {show(size)}; the accuracy "
        "measured at the training size does not carry over"
    )


def onnx_metadata(space: SearchSpace, size: tuple[int, int], outputs: int,
                  info: dict[str, Any] | None) -> dict[str, str]:  # fmt: skip
    """What an exported ONNX file records of its net (``metadata_props``, strings)."""
    meta = {
        "dnas.architecture": space.name,
        "dnas.input_size": f"{size[0]}x{size[1]}",
        "dnas.num_outputs": str(outputs),
        "dnas.arch": json.dumps(space.to_dict()),
    }  # the architecture, to rebuild the net
    for key in ("task", "preprocess", "outputs"):
        if info and info.get(key):
            meta[f"dnas.{key}"] = json.dumps(info[key])
    return meta


def check_fits(info: dict[str, Any] | None, path: Path, what: str, expected: Any,
               given: Any, hint: str = "") -> None:  # fmt: skip
    """A one-line error when the weights' recorded ``what`` differs from the ``given`` use."""
    if info is None or expected is None or given is None or list_of(expected) == list_of(given):
        return
    raise DnasError(f"{path}: these weights were trained with {what} {show(expected)}, not "
                    f"{show(given)}{hint}")  # fmt: skip


def check_outputs(info: dict[str, Any] | None, path: Path, expected: dict[str, Any],
                  hint: str = "") -> None:  # fmt: skip
    """A one-line error when what the weights' outputs mean (the task's ``output_info()``: class
    names, joint set, ...) differs from the task's: same count, other classes, scored wrongly."""
    recorded = (info or {}).get("outputs") or {}
    for key in sorted(recorded.keys() & expected.keys()):
        was, now = recorded[key], expected[key]
        if list_of(was) != list_of(now):
            raise DnasError(f"{path}: these weights were trained with {key} {brief(was)}, not "
                            f"{brief(now)}{hint}")  # fmt: skip


def brief(value: Any) -> str:
    """A value for a one-line message; a long list shortened (81 COCO class names)."""
    if isinstance(value, tuple | list):
        return "[" + listing([repr(v) for v in value], 8) + "]"
    return repr(value)


def list_of(value: Any) -> Any:
    return list(value) if isinstance(value, tuple | list) else value


def show(value: Any) -> str:
    if isinstance(value, tuple | list) and len(value) == 2:
        return f"{value[0]}x{value[1]}"
    return repr(value) if isinstance(value, str) else str(value)
