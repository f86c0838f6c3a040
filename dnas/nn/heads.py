"""Building the task head named in a space's ``head:`` section from the heads registry."""

from __future__ import annotations

from torch import nn

from dnas.errors import ConfigError, DnasError
from dnas.nn import slim_deconv  # noqa: F401  (registers the built-in head)
from dnas.registry import head_class
from dnas.schema import from_dict
from dnas.space.graph import SearchSpace


def build_head(space: SearchSpace, num_outputs: int) -> nn.Module:
    """Instantiate ``space.head`` for ``num_outputs`` channels on its input nodes.

    A head class is registered under its YAML ``type`` and declares an ``Options`` dataclass
    (its YAML keys and defaults) and ``__init__(in_channels, num_outputs, options)``.
    """
    if space.head is None:
        raise ConfigError(space.source, "head", "missing: this space has no head section")
    cls = head_class(space.head.type, space.source)
    options = from_dict(cls.Options, space.head.options, space.source, "head")
    in_channels = [space.channels(node) for node in space.head.inputs]
    try:
        return cls(in_channels, num_outputs, options)
    except ValueError as exc:  # the head's own check of its options against the inputs
        raise ConfigError(space.source, "head", str(exc)) from None
    except TypeError as exc:  # a head plugin off its contract: name it, not the space file
        raise DnasError(
            f"{head_plugin(space)}: __init__(in_channels, num_outputs, options) failed: {exc}"
        ) from None


def head_plugin(space: SearchSpace) -> str:
    """The head plugin of ``space`` as errors name it: its type and its class."""
    if space.head is None:
        return "head"
    cls = head_class(space.head.type, space.source)
    return f"head {space.head.type!r} ({cls.__module__}.{cls.__qualname__})"
