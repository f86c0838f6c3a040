"""Named registries for pluggable parts (tasks, heads, strategies, cost models), as in mmpose.

Plugins (the task plugins, the cost models, third-party packages) register themselves when
imported; :func:`load_plugins` imports every module of the ``dnas.plugins`` entry-point group, so
the core never names a plugin.
"""

from __future__ import annotations

import dataclasses
import sys
import warnings
from collections.abc import Callable
from functools import cache
from importlib import import_module
from importlib.metadata import entry_points
from typing import Any

from dnas.errors import ConfigError, DnasError, brief
from dnas.schema import default_problem

PLUGIN_GROUP = "dnas.plugins"
_loaded = False  # every plugin imported
_builtins_loaded = False  # dnas's own imported (what code registering outside dnas needs first)
_registries: list[Registry] = []
_failed: list[str] = []  # "name (error)" of every plugin that did not load


def load_plugins(builtin_only: bool = False) -> None:
    """Import every plugin module declared under the ``dnas.plugins`` entry-point group (once),
    dnas's own first; ``builtin_only``: those alone. A plugin that fails to import is skipped
    with a warning, and what its failed modules had registered is taken back
    (:func:`forget_unimported`)."""
    global _loaded, _builtins_loaded
    if _loaded or (builtin_only and _builtins_loaded):
        return
    _builtins_loaded = True
    _loaded = not builtin_only
    for ep in sorted(entry_points(group=PLUGIN_GROUP), key=lambda ep: not is_builtin(ep)):
        if builtin_only and not is_builtin(ep):
            continue
        try:
            import_module(ep.value)
        except Exception as exc:  # noqa: BLE001  any failure of third-party code: one broken
            # plugin must not take the others down (nor be blamed on the user's files)
            forget_unimported()
            _failed.append(f"{ep.name} ({brief(exc)})")
            warnings.warn(f"dnas plugin {ep.name!r} ({ep.value}) not loaded: {brief(exc)}",
                          stacklevel=2)  # fmt: skip


def is_builtin(ep: Any) -> bool:
    """Whether an entry point is dnas's own: those load first, so a third-party plugin that
    registers a built-in name (a strategy 'darts') is the one refused, never the built-in."""
    dist = getattr(ep, "dist", None)
    return dist is not None and dist.name == "dnas"


@cache
def builtin_packages() -> frozenset[str]:
    """The top-level packages of dnas's own entry points (dnas, tasks, cost_models)."""
    entries = entry_points(group=PLUGIN_GROUP)
    return frozenset(ep.value.split(".")[0] for ep in entries if is_builtin(ep))


def forget_unimported() -> None:
    """Drop what modules that failed to import had registered: Python removes such a module
    from ``sys.modules``, and importing it again (a sibling entry point) would register its
    objects anew and clash with these. Modules that did import keep their registrations."""
    for registry in _registries:
        registry._items = {name: obj for name, obj in registry._items.items()
                           if defining_module(obj) in sys.modules}  # fmt: skip


def defining_module(obj: Any) -> str:
    """The module that made ``obj``: a click command's is its callback's (the command object
    itself says ``click.core``); '__main__' when nothing says."""
    target = getattr(obj, "callback", None) or obj
    return getattr(target, "__module__", None) or "__main__"


def check_concrete(cls: Any, kind: str, name: str, needs_options: bool = False,
                   attributes: tuple[str, ...] = ()) -> None:  # fmt: skip
    """A registered plugin class must implement its base's abstract methods, declare its YAML
    keys as an ``Options`` dataclass (where ``needs_options``, or where it declares any) and
    set its ``attributes`` (a cost model's ``metric`` and ``unit``) before it is built: one
    line naming the plugin, not an AttributeError in the middle of a run."""
    where = f"{kind} {name!r} ({cls.__module__}.{cls.__qualname__})"
    missing = sorted(getattr(cls, "__abstractmethods__", ()))
    if missing:
        raise DnasError(f"{where} does not implement {', '.join(missing)}")
    options = getattr(cls, "Options", None)
    if (options is not None or needs_options) and not (
            isinstance(options, type) and dataclasses.is_dataclass(options)):  # fmt: skip
        raise DnasError(f"{where}: Options must be a dataclass of its YAML keys (an empty "
                        f"@dataclass for none), got {options!r}")  # fmt: skip
    if options is not None and (problem := default_problem(options)):
        raise DnasError(f"{where}: Options: {problem}")
    if absent := [a for a in attributes if not isinstance(getattr(cls, a, None), str)]:
        raise DnasError(f"{where} does not set {', '.join(absent)} (a string each)")


def head_class(name: str, source: str) -> type:
    """The head class registered as ``name``, checked against the head contract (``Options``,
    ``__init__(in_channels, num_outputs, options)``); an unknown name is an error at
    ``source``'s ``head.type``."""
    try:
        cls = HEADS.get(name)
    except DnasError as exc:
        raise ConfigError(source, "head.type", str(exc)) from None
    check_concrete(cls, "head", name, needs_options=True)
    return cls


class Registry:
    """A name -> object table; ``get`` loads plugins first so registered names are complete."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, Any] = {}
        _registries.append(self)

    def register(self, name: str) -> Callable[[Any], Any]:
        def add(obj: Any) -> Any:
            if defining_module(obj).split(".")[0] not in builtin_packages():
                # the built-ins first, so that a clash with them is this code's own; the other
                # plugins wait for a lookup: one importing this module would find it half-made
                load_plugins(builtin_only=True)
            if name in self._items and self._items[name] is not obj:
                raise ValueError(f"{self.kind} {name!r} is registered twice: by "
                                 f"{defining_module(self._items[name])} and "
                                 f"{defining_module(obj)}")  # fmt: skip
            self._items[name] = obj
            return obj

        return add

    def get(self, name: str) -> Any:
        load_plugins()
        if not isinstance(name, str) or name not in self._items:
            known = ", ".join(sorted(self._items)) or "none"
            failed = f"; plugins not loaded: {'; '.join(_failed)}" if _failed else ""
            raise DnasError(
                f"unknown {self.kind} {name!r} (registered: {known}{failed}; "
                f"plugins register through the {PLUGIN_GROUP!r} entry points)"
            )
        return self._items[name]

    def names(self) -> list[str]:
        load_plugins()
        return sorted(self._items)


TASKS = Registry("task")
OP_KINDS = Registry("op kind")  # dnas.space.ops.OpKind records: the op grammar
HEADS = Registry("head")
STRATEGIES = Registry("strategy")
COST_MODELS = Registry("cost model")
RUNTIMES = Registry("runtime")  # what a latency table is measured in (cost_models.runtimes)
DATA_COMMANDS = Registry("data command")
COMMANDS = Registry("command")  # top-level CLI commands or groups contributed by plugins
