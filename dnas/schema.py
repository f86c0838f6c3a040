"""Typed reading of YAML: every mistake becomes a one-line ConfigError naming file and key path."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import types
import typing
from collections.abc import Hashable
from pathlib import Path
from typing import Any, TypeVar, Union

import yaml

from dnas.errors import ConfigError, DnasError

T = TypeVar("T")


def read_json(path: str | Path, what: str) -> Any:
    """Parse an untrusted JSON file (annotations, latency tables); any problem is one line
    naming the file: unreadable, not UTF-8, not JSON, or nested too deeply."""
    try:
        return json.loads(Path(path).read_text())
    except OSError as exc:
        raise DnasError(f"{path}: cannot read {what} ({exc.strerror})") from None
    except json.JSONDecodeError as exc:
        raise DnasError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    except UnicodeDecodeError as exc:
        raise DnasError(f"{path}: not valid JSON (not UTF-8 text at byte {exc.start})") from None
    except RecursionError:
        raise DnasError(f"{path}: not valid JSON (nested too deeply)") from None


def is_integer(value: Any, low: int | None = None) -> bool:
    """An int that is not a bool (JSON's true and false), at least ``low`` when given: what an
    id, a count or a size in an untrusted file must be."""
    return (isinstance(value, int) and not isinstance(value, bool)
            and (low is None or value >= low))  # fmt: skip


def is_size(value: Any) -> bool:
    """A (height, width) pair of integers >= 1, as the API's ``input_hw`` arguments take."""
    return isinstance(value, tuple | list) and len(value) == 2 and all(
        is_integer(v, 1) for v in value)  # fmt: skip


def repeated_id(entries: list[dict]) -> tuple[int, Any] | None:
    """The index and id of the first entry whose ``id`` an earlier entry has, or None: COCO
    tools index entries by id, and a second entry of one id silently replaces the first."""
    seen: set = set()
    for i, entry in enumerate(entries):
        if entry["id"] in seen:
            return i, entry["id"]
        seen.add(entry["id"])
    return None


def is_finite_number(value: Any) -> bool:
    """An int or float, not a bool, and finite (Python's json also reads NaN and Infinity)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


class UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.safe_load``'s loader, refusing a key given twice in one mapping: YAML forbids it,
    and PyYAML would keep the last value without a word. Merge keys (``<<: *base``) work as in
    ``safe_load``: the keys written beside one override the keys it merges."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # the base class merges its mapping(s) in
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, Hashable):
                continue  # the base class refuses it with its own message
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep)


def parse_yaml(text: str) -> Any:
    """YAML text to Python values, safely (no arbitrary objects), duplicate keys refused."""
    return yaml.load(text, Loader=UniqueKeyLoader)  # noqa: S506 (a SafeLoader)


def load_yaml(path: str | Path) -> Any:
    """Parse YAML safely (:func:`parse_yaml`); unreadable files, syntax errors and duplicate
    keys are ConfigErrors naming the line."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(str(path), "", f"cannot read file ({exc.strerror})") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            str(path), "", f"not a UTF-8 text file (byte {exc.start}: {exc.reason})"
        ) from None
    try:
        return parse_yaml(text)
    except RecursionError:
        raise ConfigError(str(path), "", "invalid YAML: nested too deeply") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(str(path), "", f"invalid YAML: {where}{problem}") from None


def join(path: str, key: str | int) -> str:
    """Key path notation used in messages: ``stages[1].width``."""
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def expect_mapping(value: Any, source: str, path: str) -> dict:
    if not isinstance(value, dict):
        raise ConfigError(source, path or "<top level>", f"expected a mapping, got {_kind(value)}")
    return value


def check_keys(
    data: dict,
    allowed: typing.Iterable[str],
    required: typing.Iterable[str],
    source: str,
    path: str,
) -> None:
    """Reject unknown keys (typos) and report the first missing required key."""
    allowed = list(allowed)
    for key in data:
        if key not in allowed:
            raise ConfigError(
                source, join(path, str(key)), f"unknown key (expected one of: {', '.join(allowed)})"
            )
    for key in required:
        if key not in data:
            raise ConfigError(source, join(path, key), "missing required key")


def _kind(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    return f"{type(value).__name__} {value!r}"[:80]


def _union_error(value: Any, errors: list[tuple[Any, ConfigError]], source: str,
                 path: str) -> typing.NoReturn:  # fmt: skip
    """The error of a value that no alternative of a union takes: that of the alternative of its
    own kind when there is one (a list's bad item, named by its index), else what each expects."""
    mine = [exc for tp, exc in errors if _same_kind(value, tp)]
    if len(mine) == 1:
        raise mine[0]
    wanted = dict.fromkeys(exc.detail.split(", got ")[0].removeprefix("expected ")
                           for _, exc in errors)  # fmt: skip
    raise ConfigError(source, path, f"expected {' or '.join(wanted)}, got {_kind(value)}")


def _same_kind(value: Any, tp: Any) -> bool:
    """Whether ``value`` is the container ``tp`` asks for (a list for ``list[str]``)."""
    origin = typing.get_origin(tp) or tp
    if origin in (list, tuple):
        return isinstance(value, list | tuple)
    return isinstance(value, dict) and (origin is dict or dataclasses.is_dataclass(tp))


def check_value(value: Any, tp: Any, source: str, path: str) -> Any:
    """Check (and lightly coerce) one value against a type annotation."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return check_value(value, arg, source, path)
            except ConfigError as exc:
                errors.append((arg, exc))
        return _union_error(value, errors, source, path)
    if origin in (list, tuple):
        (item_tp, *_) = typing.get_args(tp) or (Any,)
        if not isinstance(value, list | tuple):
            raise ConfigError(source, path, f"expected a list, got {_kind(value)}")
        items = [check_value(v, item_tp, source, join(path, i)) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict or tp is dict:
        return dict(expect_mapping(value, source, path))
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, source, path)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(source, path, f"expected true or false, got {_kind(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(source, path, f"expected an integer, got {_kind(value)}")
        return value
    if tp is float:
        # PyYAML reads 1e-4 (no dot) as a string; accept numeric strings for float fields.
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                value = float(value)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(source, path, f"expected a number, got {_kind(value)}")
        try:
            number = float(value)
        except OverflowError:  # an integer too large for a float
            number = math.inf
        if not math.isfinite(number):
            raise ConfigError(source, path, f"expected a finite number, got {_kind(value)}")
        return number
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(source, path, f"expected a string, got {_kind(value)}")
        return value
    raise UnsupportedAnnotation(tp)  # a bug in a dataclass, not user input


class UnsupportedAnnotation(TypeError):
    """A dataclass field typed with something the YAML reader cannot check (a ``set``, ...)."""


def from_dict(cls: type[T], data: Any, source: str, path: str = "") -> T:
    """Build dataclass ``cls`` from a YAML mapping, checking keys and types recursively.

    Fields may declare ``metadata={"min": x, "max": y, "choices": [...]}`` for range checks;
    ``{"internal": True}`` marks one that is no YAML key (set in code, e.g. the source path).
    """
    if data is None:
        data = {}
    data = expect_mapping(data, source, path)
    fields = {f.name: f for f in dataclasses.fields(cls)
              if "plugin" not in f.metadata and "internal" not in f.metadata}  # fmt: skip
    plugin = next((f for f in dataclasses.fields(cls) if "plugin" in f.metadata), None)
    required = [
        n
        for n, f in fields.items()
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    extra = {k: v for k, v in data.items() if k not in fields} if plugin else {}
    check_keys({k: v for k, v in data.items() if k not in extra}, fields, required, source, path)
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in data.items():
        if key in extra:
            continue
        key_path = join(path, key)
        try:
            value = check_value(value, hints[key], source, key_path)
        except UnsupportedAnnotation as exc:  # a plugin's Options: name it, not the user's file
            raise DnasError(f"{cls.__module__}.{cls.__qualname__}.{key}: its type {exc.args[0]!r}"
                            " is none the YAML reader checks (int, float, str, bool, list, "
                            "dict, a dataclass, or X | None); the plugin must change it"
                            ) from None  # fmt: skip
        _check_range(value, fields[key].metadata, source, key_path)
        kwargs[key] = value
    obj = cls(**kwargs)
    if plugin is not None:
        setattr(obj, plugin.name, plugin.metadata["plugin"](obj, extra, source, path, list(fields)))
    return obj


def field_names(cls: type) -> list[str]:
    """The YAML keys of dataclass ``cls``."""
    return [f.name for f in dataclasses.fields(cls)]


def plugin_field(resolve: typing.Callable[..., Any], **kwargs: Any) -> Any:
    """A dataclass field that holds plugins' own options, written inline in the YAML mapping.

    Keys of the mapping that the dataclass does not declare go to ``resolve(obj, extra, source,
    path, declared)``, which validates them against the options the plugin declares (e.g. the
    keys of the cost model that ``type`` names) and returns the field's value; ``to_dict``
    writes that value's keys back inline, so the YAML keeps one flat mapping.
    """
    return dataclasses.field(metadata={"plugin": resolve}, **kwargs)


def _check_range(value: Any, meta: typing.Mapping, source: str, path: str) -> None:
    if value is None:
        return
    values = value if isinstance(value, list | tuple) else [value]
    for v in values:
        if "choices" in meta and v not in meta["choices"]:
            choices = ", ".join(map(str, meta["choices"]))
            raise ConfigError(source, path, f"expected one of {choices}, got {v!r}")
        if "min" in meta and isinstance(v, int | float) and v < meta["min"]:
            raise ConfigError(source, path, f"expected a value >= {meta['min']}, got {v!r}")
        if "max" in meta and isinstance(v, int | float) and v > meta["max"]:
            raise ConfigError(source, path, f"expected a value <= {meta['max']}, got {v!r}")


def default_problem(cls: type) -> str | None:
    """Why a default of dataclass ``cls`` breaks its own field's range or choices, or None: a
    plugin's ``Options`` whose defaults no YAML could write."""
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            continue
        try:
            _check_range(default, f.metadata, "", f.name)
        except ConfigError as exc:
            return f"the default of {f.name}, {default!r}: {exc.detail}"
    return None


def to_dict(obj: Any) -> Any:
    """A dataclass tree as plain YAML-able data (the resolved config written into run dirs)."""
    if dataclasses.is_dataclass(obj):
        out: dict[str, Any] = {}
        for f in dataclasses.fields(obj):
            value = to_dict(getattr(obj, f.name))
            if "plugin" in f.metadata:
                out.update(value or {})  # a plugin's options, inline (see ``plugin_field``)
            else:
                out[f.name] = value
        return out
    if isinstance(obj, list | tuple):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj
