"""Pareto sweeps: one search per cost weight (lambda) or per budget target, each derived net
trained and scored, written as a table and a cost-vs-metric plot (specialisation curves)."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path

from dnas.config import Experiment
from dnas.derive import derive, write_architecture
from dnas.profile import cost_report
from dnas.search import run_search
from dnas.task import build_task
from dnas.train import run_train


def _variant(exp: Experiment, kind: str, value: float) -> Experiment:
    variant = copy.deepcopy(exp)
    if kind == "weight":
        variant.cost_model.weight = value
    else:
        variant.cost_model.target = value
        if variant.cost_model.form == "log":
            variant.cost_model.form = "hinge"
    return variant


def run_dir_of(out_dir: Path, kind: str, value: float) -> Path:
    return out_dir / f"{kind}_{value:g}"


def run_sweep(exp: Experiment, kind: str, values: list[float], out_dir: Path,
              log: Callable[[str], None] = print) -> list[dict]:  # fmt: skip
    """Search, derive, train and score once per value; returns the table rows."""
    rows = []
    outputs = build_task(exp).num_outputs
    for value in values:
        run_dir = run_dir_of(out_dir, kind, value)
        variant = _variant(exp, kind, value)
        log(f"== sweep: cost_model.{'weight' if kind == 'weight' else 'target'} = {value:g}")
        result = run_search(variant, run_dir / "search", log)
        arch, _ = derive(run_dir / "search", f"sweep-{kind}-{value:g}")
        arch_path = run_dir / "arch.yaml"
        write_architecture(arch, arch_path, f"derived by dnas sweep ({kind} = {value:g})")
        metrics = run_train(variant, str(arch_path), run_dir / "train", log=log)
        size = cost_report(str(arch_path), variant.input_hw, outputs)
        rows.append({kind: value, "cost": result["final_cost"], "cost_unit": result["cost_unit"],
                     "params": size["params"], "macs": size["macs"],
                     "metric": metrics.primary, "score": metrics.score,
                     "architecture": str(arch_path)})  # fmt: skip
    write_outputs(rows, kind, out_dir)
    return rows


def write_outputs(rows: list[dict], kind: str, out_dir: Path) -> dict[str, Path]:
    """``sweep.json``, ``sweep.md`` (a Markdown table) and ``sweep.png`` (score vs cost)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "sweep.json", "table": out_dir / "sweep.md",
             "plot": out_dir / "sweep.png"}  # fmt: skip
    paths["json"].write_text(json.dumps(rows, indent=1))
    unit = rows[0]["cost_unit"] if rows else ""
    lines = [f"| {kind} | cost ({unit}) | params | MACs | score |", "|---|---|---|---|---|"]
    lines += [f"| {r[kind]:g} | {r['cost']:.3f} | {r['params']:,} | {r['macs']:,} | "
              f"{r['score']:.2f} |" for r in rows]  # fmt: skip
    paths["table"].write_text("\n".join(lines) + "\n")
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.plot([r["cost"] for r in rows], [r["score"] for r in rows], "o-")
    for r in rows:
        ax.annotate(f"{kind}={r[kind]:g}", (r["cost"], r["score"]), fontsize=8)
    ax.set_xlabel(f"cost ({unit})")
    ax.set_ylabel(rows[0]["metric"] if rows else "score")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(paths["plot"], dpi=120)
    plt.close(fig)
    return paths
