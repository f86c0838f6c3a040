"""Semantic segmentation plugin: registers its task, the ``fpn_lite`` head and ``synth-seg``."""

from tasks.segmentation import commands, heads, task  # noqa: F401  (registration side effects)
