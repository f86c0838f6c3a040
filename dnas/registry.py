"""Named registries for pluggable parts (tasks, heads, strategies, cost models), as in mmpose.

Plugins (the task plugins, the cost models, third-party packages) register themselves when
imported; :func:`load_plugins` imports every module of the ``dnas.plugins`` entry-point group, so
the core never names a plugin.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable
from importlib import import_module
from importlib.metadata import entry_points
from typing import Any

from dnas.errors import DnasError

PLUGIN_GROUP = "dnas.plugins"
_loaded = False
_registries: list[Registry] = []
_failed: list[str] = []  # "name (error)" of every plugin that did not load


def load_plugins() -> None:
    """Import every plugin module declared under the ``dnas.plugins`` entry-point group (once).
    A plugin that fails to import is skipped with a warning, and what its failed modules had
    registered is taken back (:func:`forget_unimported`)."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    for ep in entry_points(group=PLUGIN_GROUP):
        try:
            import_module(ep.value)
        except Exception as exc:  # noqa: BLE001  any failure of third-party code: one broken
            # plugin must not take the others down (nor be blamed on the user's files)
            forget_unimported()
            _failed.append(f"{ep.name} ({type(exc).__name__}: {exc})")
            warnings.warn(f"dnas plugin {ep.name!r} ({ep.value}) not loaded: "
                          f"{type(exc).__name__}: {exc}", stacklevel=2)  # fmt: skip


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


def check_concrete(cls: Any, kind: str, name: str) -> None:
    """A registered class must implement its base's abstract methods before it is built."""
    missing = sorted(getattr(cls, "__abstractmethods__", ()))
    if missing:
        raise DnasError(f"{kind} {name!r} ({cls.__module__}.{cls.__qualname__}) does not "
                        f"implement {', '.join(missing)}")  # fmt: skip


class Registry:
    """A name -> object table; ``get`` loads plugins first so registered names are complete."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, Any] = {}
        _registries.append(self)

    def register(self, name: str) -> Callable[[Any], Any]:
        def add(obj: Any) -> Any:
            if name in self._items and self._items[name] is not obj:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = obj
            return obj

        return add

    def get(self, name: str) -> Any:
        load_plugins()
        if not isinstance(name, str) or name not in self._items:
            known = ", ".join(sorted(self._items)) or "none"
            failed = f"; plugins not loaded: {'; '.join(_failed)}" if _failed else ""
            raise DnasError(f"unknown {self.kind} {name!r} (registered: {known}{failed})")
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
