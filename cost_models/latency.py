"""Measured latency lookup tables (FBNet-style) and the ``latency`` cost model.

``build_lut`` times every candidate op of every searchable layer at its exact input shape,
every fixed layer and the head (warm-up, repeats, median; CUDA synchronised), then measures
random whole networks and fits measured = scale x (sum of parts) + overhead by least squares.
Additive tables miss what happens between ops (dispatch, cache traffic); on the 2-core CPU
heavier networks run ~10% slower than their parts add up to, so a constant overhead alone
is not enough. The correction is linear, so expected costs stay linear in the op
probabilities. ``check_lut`` compares predictions with end-to-end measurements.
"""

from __future__ import annotations

import datetime
import json
import math
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import click
import numpy as np
import scipy.stats
import torch
from torch import nn
from tqdm import tqdm

from dnas.cli import example, head_outputs, out_opt, outputs_opt
from dnas.config import MAX_BATCH
from dnas.errors import ConfigError, DnasError, listing
from dnas.files import write_text_atomic
from dnas.nn.heads import build_head
from dnas.nn.network import Network
from dnas.nn.profile import _HeadOnInputs, op_costs
from dnas.registry import COMMANDS, COST_MODELS
from dnas.schema import read_json
from dnas.search.cost_model import CostModel, CostTable
from dnas.space.choices import uniform_choices
from dnas.space.graph import SearchSpace
from dnas.space.ops import build_op, parse_op


def time_module(module: nn.Module, inputs: list[torch.Tensor], device: torch.device,
                warmup: int, repeats: int) -> float:  # fmt: skip
    """Median milliseconds of one forward pass."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times = []
    with torch.inference_mode():
        for i in range(warmup + repeats):
            sync()
            start = time.perf_counter()
            module(*inputs)
            sync()
            if i >= warmup:
                times.append(1000.0 * (time.perf_counter() - start))
    return statistics.median(times)


def parts_ms(table: dict, choices: dict[str, str]) -> float:
    return sum(table["fixed"].values()) + sum(table["layers"][n][op] for n, op in choices.items())


def predict_ms(table: dict, choices: dict[str, str]) -> float:
    """Predicted latency of the architecture that picks ``choices``."""
    return table["scale"] * parts_ms(table, choices) + table["overhead_ms"]


def _measure_network(space: SearchSpace, choices: dict[str, str], num_outputs: int,
                     x: torch.Tensor, device: torch.device, warmup: int,
                     repeats: int) -> float:  # fmt: skip
    net = Network(space.with_choices(choices), num_outputs).eval().to(device)
    return time_module(net, [x], device, warmup, repeats)


def _warm_up(
    space: SearchSpace,
    num_outputs: int,
    x: torch.Tensor,
    device: torch.device,
    rng: np.random.Generator,
    seconds: float = 2.0,
) -> None:
    """Run random whole networks for a while (discarded): the first passes of a process are
    slower (thread pools, allocator, CPU clocks) and would bias whatever is timed first."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        _measure_network(
            space, uniform_choices(space.searchable_layers, rng), num_outputs, x, device, 1, 3
        )


def build_lut(space: SearchSpace, input_hw: tuple[int, int], num_outputs: int, batch: int,
              device: torch.device, warmup: int = 5, repeats: int = 20, calibration: int = 10,
              seed: int = 0, progress: bool = True) -> dict:  # fmt: skip
    """The latency table of ``space`` on this machine (see the module docstring)."""
    op_costs(space, input_hw, num_outputs)  # size checks before anything is allocated
    shapes = space.infer_shapes(*input_hw)
    x = torch.randn(batch, space.in_channels, *input_hw, device=device)
    rng = np.random.default_rng(seed)
    _warm_up(space, num_outputs, x, device, rng)
    jobs = [(layer, op) for layer in space.layers for op in layer.candidates]
    table: dict = {"fixed": {}, "layers": {}, "shapes": {}}
    # a bar on a terminal only (disable=None): no carriage returns into pipes and log files
    bar = tqdm(total=len(jobs) + 1 + calibration, desc="lut", disable=None if progress else True)
    for layer, op in jobs:
        cin, h, w = shapes[layer.input]
        module = build_op(parse_op(op), cin, layer.width, layer.stride).eval().to(device)
        ms = time_module(module, [torch.randn(batch, cin, h, w, device=device)], device, warmup,
                         repeats)  # fmt: skip
        table["shapes"][layer.name] = [cin, h, w]
        if layer.searchable:
            table["layers"].setdefault(layer.name, {})[op] = ms
        else:
            table["fixed"][layer.name] = ms
        bar.update()
    head = _HeadOnInputs(build_head(space, num_outputs)).eval().to(device)
    feats = [torch.randn(batch, *shapes[n], device=device) for n in space.head_inputs()]
    table["fixed"]["head"] = time_module(head, feats, device, warmup, repeats)
    bar.update()
    parts, measured = [], []
    for _ in range(calibration):
        choices = uniform_choices(space.searchable_layers, rng)
        parts.append(parts_ms(table, choices))
        measured.append(_measure_network(space, choices, num_outputs, x, device, warmup,
                                         repeats))  # fmt: skip
        bar.update()
    bar.close()
    lowest = sum(table["fixed"].values()) + sum(min(ops.values())
                                                for ops in table["layers"].values())  # fmt: skip
    table["scale"], table["overhead_ms"] = fit_correction(parts, measured, lowest)
    table["meta"] = {
        "space": space.name, "space_digest": space.digest(), "input": list(input_hw),
        "num_outputs": num_outputs, "batch": batch, "device": device.type,
        "device_name": (torch.cuda.get_device_name(device) if device.type == "cuda"
                        else "cpu"),
        "threads": torch.get_num_threads(), "torch": torch.__version__, "dtype": "float32",
        "warmup": warmup, "repeats": repeats, "calibration": calibration,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }  # fmt: skip
    return table


def check_lut(table: dict, space: SearchSpace, samples: int, device: torch.device,
              warmup: int = 5, repeats: int = 20, seed: int = 1) -> dict:  # fmt: skip
    """Predicted vs measured latency of ``samples`` random architectures."""
    meta = table["meta"]
    x = torch.randn(meta["batch"], space.in_channels, *meta["input"], device=device)
    rng = np.random.default_rng(seed)
    _warm_up(space, meta["num_outputs"], x, device, rng)
    rows = []
    for _ in tqdm(range(samples), desc="check", disable=None):
        choices = uniform_choices(space.searchable_layers, rng)
        measured = _measure_network(space, choices, meta["num_outputs"], x, device, warmup,
                                    repeats)  # fmt: skip
        rows.append({"predicted_ms": predict_ms(table, choices), "measured_ms": measured})
    pred = np.array([r["predicted_ms"] for r in rows])
    real = np.array([r["measured_ms"] for r in rows])
    tau = float(scipy.stats.kendalltau(pred, real).statistic) if samples > 1 else float("nan")
    return {"kendall_tau": tau, "mape": float(100 * np.mean(np.abs(pred - real) / real)),
            "samples": samples, "rows": rows}  # fmt: skip


def fit_correction(parts: list[float], measured: list[float],
                   lowest: float = 0.0) -> tuple[float, float]:  # fmt: skip
    """(scale, overhead_ms) with measured ~ scale x parts + overhead, by least squares. A fit
    that ranks bigger nets as faster (scale not positive) or predicts a non-positive latency
    for the cheapest architecture (whose parts sum to ``lowest``: a steep line with a large
    negative offset, fitted to noisy timings of a few nets) is not used: scale 1 and the
    median overhead instead, or the proportional fit (no offset) if that overhead is negative
    enough to make the cheapest net's latency non-positive."""
    if not measured:
        return 1.0, 0.0
    if len(measured) >= 2 and np.ptp(parts) > 0:
        scale, overhead = np.polyfit(parts, measured, 1)
        if scale > 0 and scale * lowest + overhead > 0:
            return float(scale), float(overhead)
    overhead = float(np.median(np.subtract(measured, parts)))
    if lowest + overhead > 0:
        return 1.0, overhead
    p, m = np.asarray(parts), np.asarray(measured)
    return float(p @ m / max(float(p @ p), 1e-12)), 0.0


def read_lut(path: Path) -> dict:
    table = read_json(path, "latency table")
    needed = {"meta", "fixed", "layers", "scale", "overhead_ms"}
    if not isinstance(table, dict) or not needed <= set(table):
        raise DnasError(f"{path}: not a dnas latency table (needs {', '.join(sorted(needed))}; "
                        "build one with 'dnas lut build')")  # fmt: skip
    _check_table(table, str(path))
    return table


def _is_number(value: object) -> bool:
    return (isinstance(value, int | float) and not isinstance(value, bool)
            and math.isfinite(value))  # fmt: skip


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _check_ms(entries: object, source: str, key: str) -> None:
    """A mapping of names to finite, non-negative milliseconds."""
    if not isinstance(entries, dict):
        raise ConfigError(source, key, "expected a mapping of names to milliseconds")
    for name, ms in entries.items():
        if not _is_number(ms) or ms < 0:
            raise ConfigError(source, f"{key}.{name}", f"expected milliseconds >= 0, got {ms!r}")


def _check_table(table: dict, source: str) -> None:
    """The shape and types of a table from ``dnas lut build``; a one-line error naming the key."""
    _check_ms(table["fixed"], source, "fixed")
    if not isinstance(table["layers"], dict):
        raise ConfigError(source, "layers", "expected a mapping of layer names to op timings")
    for name, ops in table["layers"].items():
        _check_ms(ops, source, f"layers.{name}")
    shapes = table.get("shapes", {})
    if not isinstance(shapes, dict):
        raise ConfigError(source, "shapes", "expected a mapping of layer names to [C, H, W]")
    for name, shape in shapes.items():
        if not isinstance(shape, list) or len(shape) != 3 or not all(map(_is_count, shape)):
            raise ConfigError(source, f"shapes.{name}", f"expected [C, H, W], got {shape!r}")
    for key in ("scale", "overhead_ms"):
        if not _is_number(table[key]):
            raise ConfigError(source, key, f"expected a finite number, got {table[key]!r}")
    meta = table["meta"]
    if not isinstance(meta, dict):
        raise ConfigError(source, "meta", "expected a mapping (space, input, batch, device, ...)")
    checks = {
        "input": (lambda v: isinstance(v, list) and len(v) == 2 and all(map(_is_count, v)),
                  "[height, width]"),
        "num_outputs": (_is_count, "a positive integer"),
        "batch": (_is_count, "a positive integer"),
        "threads": (_is_count, "a positive integer"),
        "device": (lambda v: v in ("cpu", "cuda"), "cpu or cuda"),
        "space": (lambda v: isinstance(v, str) and bool(v), "a space name"),
    }  # fmt: skip
    for key, (ok, expected) in checks.items():
        if key not in meta:
            raise ConfigError(source, f"meta.{key}", "missing required key")
        if not ok(meta[key]):
            raise ConfigError(source, f"meta.{key}", f"expected {expected}, got {meta[key]!r}")


@dataclass
class LatencyOptions:
    """``cost_model:`` keys of ``type: latency``: the table from ``dnas lut build``, and the
    batch and device it must have been measured at (unchecked when null)."""

    table: str | None = None
    batch: int | None = field(default=None, metadata={"min": 1, "max": MAX_BATCH})
    device: str | None = None  # cpu, cuda


@COST_MODELS.register("latency")
class LatencyCostModel(CostModel):
    """Measured milliseconds from a table written by ``dnas lut build``."""

    metric, unit = "latency", "ms"
    Options = LatencyOptions

    def __init__(self, options: LatencyOptions | None = None) -> None:
        super().__init__(options)
        if self.options.table is None:
            raise DnasError(
                "cost_model.table: the latency cost model needs a table (build one "
                "with 'dnas lut build --space S --input HxW -o table.json')"
            )
        self.path, self.batch = Path(self.options.table), self.options.batch
        self.device = self.options.device

    def table(self, space: SearchSpace, input_hw: tuple[int, int], num_outputs: int) -> CostTable:
        return self.build(space, input_hw, num_outputs)  # the file is the cache

    def build(self, space: SearchSpace, input_hw: tuple[int, int], num_outputs: int) -> CostTable:
        lut = read_lut(self.path)
        op_costs(space, input_hw, num_outputs)  # size checks, on the meta device
        meta, shapes = lut["meta"], space.infer_shapes(*input_hw)
        missing = []
        for name, expected in (("input", list(input_hw)), ("num_outputs", num_outputs),
                               ("batch", self.batch), ("device", self.device)):  # fmt: skip
            if expected is not None and meta.get(name) != expected:
                missing.append(f"{name} {expected} (table has {meta.get(name)})")
        for layer in space.layers:
            if lut.get("shapes", {}).get(layer.name) != list(shapes[layer.input]):
                missing.append(f"{layer.name} at input {list(shapes[layer.input])}")
                continue
            ops = lut["layers"].get(layer.name, {}) if layer.searchable else {}
            absent = [op for op in layer.candidates if layer.searchable and op not in ops]
            if not layer.searchable and layer.name not in lut["fixed"]:
                absent = list(layer.candidates)
            missing += [f"{layer.name}/{op}" for op in absent]
        if "head" not in lut["fixed"]:
            missing.append("head")
        if missing:
            raise DnasError(
                f"{self.path}: latency table does not cover this search: missing "
                f"{listing(missing, 8)}; "
                f"build it with: dnas lut build --space {space.source} --input "
                f"{input_hw[0]}x{input_hw[1]} --batch {self.batch or meta.get('batch', 1)} "
                f"--device {self.device or meta.get('device', 'cpu')} -o {self.path}"
            )
        scale = lut["scale"]  # the linear correction, folded into every entry
        layers = {lay.name: {op: scale * lut["layers"][lay.name][op] for op in lay.candidates}
                  for lay in space.searchable_layers}  # fmt: skip
        fixed = scale * sum(lut["fixed"].values()) + lut["overhead_ms"]
        return CostTable(self.metric, self.unit, fixed, layers, key={"table": str(self.path)})


@click.group("lut")
def lut() -> None:
    """Latency lookup tables: build one for this machine, check its predictions."""


@lut.command(
    "build",
    epilog=example("dnas lut build --space mbv2_pose_small --input 256x256 --batch 1 -o lut.json"),
)
@click.option("--space", required=True, help="Search space YAML or shipped name.")
@click.option("--input", "input_size", default="256x256", show_default=True, help="HxW.")
@click.option("--batch", type=click.IntRange(1), help="Batch (default: CPU 1, GPU 32).")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--threads", type=click.IntRange(1), help="CPU threads (torch.set_num_threads).")
@outputs_opt
@click.option("--repeats", type=click.IntRange(1), default=20, show_default=True)
@click.option("--warmup", type=click.IntRange(0), default=5, show_default=True)
@click.option(
    "--calibration",
    type=click.IntRange(0),
    default=10,
    show_default=True,
    help="Random whole networks measured for the per-network overhead.",
)
@out_opt("output", file=True)
@click.option("--force", is_flag=True)
def lut_build(space: str, input_size: str, batch: int | None, device: str, threads: int | None,
              outputs: int | None, joints: int | None, repeats: int, warmup: int,
              calibration: int, output: Path, force: bool) -> None:  # fmt: skip
    """Time every candidate op of SPACE at its exact input shape on this machine."""
    from dnas.cli import guard_output, parse_size
    from dnas.engine.runtime import pick_device
    from dnas.space.graph import load_space

    guard_output(output, force)
    if threads:
        torch.set_num_threads(threads)
    batch = batch or (32 if device == "cuda" else 1)
    num_outputs = head_outputs(outputs, joints)
    table = build_lut(load_space(space), parse_size(input_size), num_outputs, batch,
                      pick_device(device), warmup, repeats, calibration)  # fmt: skip
    if Path(space).is_file():  # a space of the user's: 'lut check' finds it again by its path
        table["meta"]["space_file"] = str(Path(space).resolve())
    output.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(output, json.dumps(table, indent=1))
    click.echo(
        f"wrote {output}: {sum(len(v) for v in table['layers'].values())} op entries, "
        f"correction {table['scale']:.3f} x parts + {table['overhead_ms']:.3f} ms, "
        f"batch {batch}, {table['meta']['device']}"
    )


@lut.command("check", epilog=example("dnas lut check --table lut.json --samples 30"))
@click.option("--table", "table_path", type=click.Path(path_type=Path), required=True)
@click.option("--space", help="Search space (default: the table's own, by its file or name).")
@click.option("--samples", type=click.IntRange(2), default=30, show_default=True)
@click.option("--repeats", type=click.IntRange(1), default=20, show_default=True)
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text")
def lut_check(table_path: Path, space: str | None, samples: int, repeats: int, fmt: str) -> None:
    """Predicted vs measured latency of random architectures: Kendall tau and MAPE (%)."""
    from dnas.engine.runtime import pick_device
    from dnas.space.graph import load_space

    table = read_lut(table_path)
    meta = table["meta"]
    torch.set_num_threads(meta["threads"])
    recorded = meta.get("space_file")
    search_space = load_space(space or (recorded if recorded and Path(recorded).is_file()
                                        else meta["space"]))  # fmt: skip
    LatencyCostModel(LatencyOptions(str(table_path))).table(
        search_space, tuple(meta["input"]), meta["num_outputs"]
    )  # validates coverage
    report = check_lut(table, search_space, samples, pick_device(meta["device"]),
                       repeats=repeats)  # fmt: skip
    if fmt == "json":
        click.echo(json.dumps(report))
        return
    for row in report["rows"]:
        click.echo(
            f"predicted {row['predicted_ms']:8.3f} ms   measured {row['measured_ms']:8.3f} ms"
        )
    click.echo(f"Kendall tau {report['kendall_tau']:.3f}   MAPE {report['mape']:.2f} %")


COMMANDS.register("lut")(lut)
