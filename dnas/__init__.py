"""dnas: hardware-aware differentiable neural architecture search for dense prediction.

The public API, for notebooks and scripts (``examples/api_search.py`` runs these steps)::

    import dnas
    space = dnas.load_space("mbv2_pose_small")            # a shipped space or a YAML path
    table = dnas.cost_table(space, (256, 256), outputs=16) # MMAC per candidate op
    net = dnas.Network(space, num_outputs=16)              # the super net
    exp = dnas.load_experiment("examples/demo.yaml")
    result = dnas.run_search(exp, "runs/search")           # search.json's content
    arch, rows = dnas.derive("runs/search")                # the chosen net, per-layer probs
    metrics = dnas.run_train(exp, "runs/arch.yaml", "runs/train")

Names are imported on first use, so ``import dnas`` stays light (no torch until needed).
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    "DnasError": "dnas.errors",
    "ConfigError": "dnas.errors",
    "Experiment": "dnas.config",
    "CostConfig": "dnas.config",
    "load_experiment": "dnas.config",
    "TASKS": "dnas.registry",
    "HEADS": "dnas.registry",
    "STRATEGIES": "dnas.registry",
    "COST_MODELS": "dnas.registry",
    "OP_KINDS": "dnas.registry",
    "RUNTIMES": "dnas.registry",
    "DATA_COMMANDS": "dnas.registry",
    "COMMANDS": "dnas.registry",
    "SearchSpace": "dnas.space.graph",
    "load_space": "dnas.space.graph",
    "most_probable_ops": "dnas.space.choices",
    "decisiveness": "dnas.space.choices",
    "Task": "dnas.task",
    "Metrics": "dnas.task",
    "build_task": "dnas.task",
    "build_space": "dnas.task",
    "Network": "dnas.nn.network",
    "cost_report": "dnas.nn.profile",
    "CostModel": "dnas.search.cost_model",
    "CostTable": "dnas.search.cost_model",
    "get_cost_model": "dnas.search.cost_model",
    "cost_table": "dnas.search.cost_model",
    "Strategy": "dnas.search.strategy",
    "run_search": "dnas.search.run",
    "derive": "dnas.search.derive",
    "write_architecture": "dnas.search.derive",
    "compare_runs": "dnas.search.agreement",
    "run_sweep": "dnas.search.sweep",
    "run_train": "dnas.engine.train",
    "run_eval": "dnas.engine.train",
    "RunContext": "dnas.engine.loop",
    "EpochLoop": "dnas.engine.loop",
    "from_dict": "dnas.schema",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'dnas' has no attribute {name!r}")
    value = getattr(import_module(_EXPORTS[name]), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return [*__all__, "__version__"]
