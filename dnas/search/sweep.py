"""Pareto sweeps: one search per cost weight (lambda) or per budget target, each derived net
trained and scored, written as a table and a cost-vs-metric plot (specialisation curves)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

from dnas.checkpoint import step_files
from dnas.config import CostConfig, Experiment, config_changes, form_reads
from dnas.engine.progress import Reporter
from dnas.engine.rundir import RunLock, held_outputs
from dnas.engine.train import TrainRun, run_train
from dnas.errors import ConfigError, DnasError, listing
from dnas.files import write_text_atomic
from dnas.nn.profile import cost_report
from dnas.schema import from_dict, load_yaml, to_dict
from dnas.search.derive import derive, write_architecture
from dnas.search.run import SearchRun, check_target, run_search, search_table
from dnas.task import Task, build_task
from dnas.vis.plot import save_figure, sweep_figure


def _variant(exp: Experiment, kind: str, value: float) -> Experiment:
    variant = copy.deepcopy(exp)
    if kind == "weight":
        variant.cost_model.weight = value
    else:
        variant.cost_model.target = value
        if not form_reads(variant.cost_model.form, "target"):  # a target asks for a budget form
            variant.cost_model.form = "budget"
    return variant


def run_dir_of(out_dir: Path, kind: str, value: float) -> Path:
    return out_dir / f"{kind}_{value:g}"


KINDS = ("weight", "target")  # what a sweep varies: cost_model.weight or cost_model.target


def run_sweep(exp: Experiment, kind: str, values: list[float], out_dir: Path | str,
              report: Reporter | None = None, resume: bool = False,
              force: bool = False) -> list[dict]:  # fmt: skip
    """Search, derive, train and score once per value of ``cost_model.<kind>`` (``weight`` or
    ``target``); returns the table rows. With ``resume``, finished runs (their ``row.json``)
    are kept and an interrupted search or training continues from its checkpoints."""
    if kind not in KINDS:
        raise DnasError(f"run_sweep: kind: expected one of {', '.join(KINDS)}, got {kind!r}")
    if not isinstance(values, list | tuple) or not values:
        raise DnasError(f"run_sweep: values: expected a non-empty list of numbers, got {values!r}")
    out_dir, report = Path(out_dir), report or Reporter()
    task = build_task(exp)
    check_values(exp, kind, values, out_dir, task)
    runs = held_outputs(out_dir, tuple(dict.fromkeys((*SearchRun.outputs, *TrainRun.outputs))))
    if runs and not force:  # a sweep writes its own runs into sub-folders, never into a run
        raise DnasError(f"{out_dir} holds a search or train run ({listing(runs, 4)}), not a "
                        "sweep; choose another --out (or pass --force to write the sweep "
                        "beside it)")  # fmt: skip
    if not (resume or force):  # a partial sweep's finished runs are results too
        paths = [out_dir / "sweep.json", *(run_dir_of(out_dir, kind, v) for v in values)]
        held = [path.name for path in paths if path.exists()]
        if held:
            raise DnasError(f"{out_dir} already holds an earlier sweep's {listing(held, 4)}; "
                            "pass --resume to keep its finished runs or --force to overwrite, "
                            "or choose another --out")  # fmt: skip
    out_dir.mkdir(parents=True, exist_ok=True)
    lock = RunLock(out_dir)  # one sweep at a time; each run locks its own directory too
    lock.acquire(report.line)
    try:
        return _sweep(exp, kind, values, out_dir, task.num_outputs, report, resume, force)
    finally:
        lock.release()


def check_values(exp: Experiment, kind: str, values: list[float], out_dir: Path,
                 task: Task) -> None:  # fmt: skip
    """Every point before the first search starts: values that name distinct run directories,
    each variant's ``cost_model`` within the schema's bounds, and every budget target within
    the space's cost range; a mistake names the option and the value."""
    option = f"--{kind}s"
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        raise DnasError(f"{option}: expected numbers, got {values!r}")
    if kind == "weight" and exp.cost_model.form == "budget":
        raise ConfigError(exp.source, "cost_model.form",
                          "budget adapts the cost weight itself (dual ascent from 0), so every "
                          "point of a --weights sweep would be the same search; sweep --targets, "
                          "or set cost_model.form to relative")  # fmt: skip
    names = [run_dir_of(out_dir, kind, value).name for value in values]
    if len(set(names)) < len(names):
        raise DnasError(f"{option}: two values name one run directory ({', '.join(names)})")
    table = search_table(exp, task)[1] if kind == "target" else None
    for value in values:
        variant = _variant(exp, kind, value)
        try:
            from_dict(CostConfig, to_dict(variant.cost_model), option, "cost_model")
            if table is not None:
                check_target(variant, table)
        except ConfigError as exc:
            raise DnasError(f"{option} {value:g}: {exc.key}: {exc.detail}") from None


def recorded_changes(run_dir: Path, variant: Experiment) -> list[str]:
    """The keys in which a sweep point's recorded search (its ``config.yaml``) differs from the
    variant the sweep runs now; none when the point recorded none yet."""
    recorded = run_dir / "search" / "config.yaml"
    return config_changes(load_yaml(recorded), variant) if recorded.is_file() else []


def _sweep(exp: Experiment, kind: str, values: list[float], out_dir: Path, outputs: int,
           report: Reporter, resume: bool, force: bool) -> list[dict]:  # fmt: skip
    rows = []
    for value in values:
        run_dir, variant = run_dir_of(out_dir, kind, value), _variant(exp, kind, value)
        row_path, keep = run_dir / "row.json", resume
        if resume and (changed := recorded_changes(run_dir, variant)):
            if not force:
                raise DnasError(f"{run_dir}: ran with another config ({listing(changed, 6)}); "
                                "pass --force to run it again with this one")  # fmt: skip
            keep = False  # --force: this point afresh, its old results replaced
        if keep and row_path.exists():
            report.line(f"== sweep: {kind} = {value:g} already done ({row_path})")
            rows.append(json.loads(row_path.read_text()))
            continue
        report.line(f"== sweep: cost_model.{kind} = {value:g}")
        rows.append(sweep_one(variant, kind, value, run_dir, outputs, report, keep, force))
        write_text_atomic(row_path, json.dumps(rows[-1], indent=1))
    write_outputs(rows, kind, out_dir)
    return rows


def sweep_one(variant: Experiment, kind: str, value: float, run_dir: Path, outputs: int,
              report: Reporter, resume: bool, force: bool) -> dict:  # fmt: skip
    """One sweep point: search (or continue it), derive, train (or continue it), score."""
    search_dir, train_dir = run_dir / "search", run_dir / "train"
    if resume and (search_dir / "search.json").exists():
        result = json.loads((search_dir / "search.json").read_text())
    else:
        result = run_search(variant, search_dir, report, has_checkpoints(search_dir, resume),
                            force)  # fmt: skip
    arch, _ = derive(search_dir, f"sweep-{kind}-{value:g}")
    arch_path = run_dir / "arch.yaml"
    write_architecture(
        arch, arch_path, f"derived by dnas sweep ({kind} = {value:g})", force=True
    )  # derived again on a resume: the same search, the same net
    metrics = run_train(variant, str(arch_path), train_dir, None, report,
                        has_checkpoints(train_dir, resume), force)  # fmt: skip
    size = cost_report(str(arch_path), variant.input_hw, outputs)
    return {kind: value, "cost": result["final_cost"], "cost_unit": result["cost_unit"],
            "params": size["params"], "macs": size["macs"], "metric": metrics.primary,
            "metric_label": metrics.primary_label,
            "score": metrics.score, "architecture": str(arch_path)}  # fmt: skip


def has_checkpoints(run_dir: Path, resume: bool) -> bool:
    """Resume a sub-run only when it left checkpoints; otherwise start it."""
    return resume and bool(step_files(run_dir / "checkpoints"))


def write_outputs(rows: list[dict], kind: str, out_dir: Path) -> dict[str, Path]:
    """``sweep.json``, ``sweep.md`` (a Markdown table) and ``sweep.png`` (score vs cost)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "sweep.json", "table": out_dir / "sweep.md",
             "plot": out_dir / "sweep.png"}  # fmt: skip
    write_text_atomic(paths["json"], json.dumps(rows, indent=1))
    unit = rows[0]["cost_unit"] if rows else ""
    label = (rows[0].get("metric_label") or rows[0]["metric"]) if rows else ""  # the task's
    off = kind == "target"  # how far each derived net lies from its target (hinge: no band)
    lines = [f"| {kind} | cost ({unit}) |{' vs target |' if off else ''} params | MACs | "
             f"score: {label} |", "|---|---|---|---|---|" + ("---|" if off else "")]  # fmt: skip
    # four significant digits: a COCO AP of 0.0034 (a fraction) too, not 0.00
    lines += [f"| {r[kind]:g} | {r['cost']:.3f} |"
              + (f" {100 * (r['cost'] / r[kind] - 1):+.1f} % |" if off else "")
              + f" {r['params']:,} | {r['macs']:,} | {r['score']:.4g} |" for r in rows]  # fmt: skip
    write_text_atomic(paths["table"], "\n".join(lines) + "\n")
    save_figure(sweep_figure(rows, kind), paths["plot"])
    return paths
