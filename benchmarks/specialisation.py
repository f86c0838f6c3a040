"""Specialisation: does a latency table pick the net that runs fastest in its runtime?

First the tables alone (``capacity``): at 25, 50 and 75 % of the space's MAC range, the net
each table (eager PyTorch and ONNX Runtime on this CPU) predicts fastest among the nets of
those MACs (a knapsack over the table), and random nets of the same MACs (FLOPs cannot tell
them apart), all timed in both runtimes. Then
searches: one per cost model (FLOPs, eager latency, ONNX Runtime latency), each under the
budget form at the same fraction of its own cost range, and every derived net measured in every
runtime. Prints JSON; `docs/benchmarks.md` holds the tables.

A fraction of each model's own range is not the same budget in two runtimes, so ``--matched``
adds one search per runtime R at the latency the other runtime's net has in R's table: the two
nets then cost the same in R, and the net searched for R is the specialised one when it buys
more MACs (capacity) there, i.e. it is the faster of the two per MAC in R.

Every search shares the seed, data and hyperparameters of `examples/demo.yaml` (the built-in
synthetic data), at 128x128 here; only the cost model and its target differ. A net is "specialised"
when it is the fastest of the three in the runtime it was searched for.

    python benchmarks/specialisation.py [--fraction 0.35] [--matched] [--allow-noise]
                                        [--no-search] [--keep-tables DIR]

``--allow-noise`` builds the tables with the noise guard's strict mode off (``dnas lut build
--allow-noise``): a noisy timing or chunk is kept and counted in the JSON's ``noise`` even
while other processes take CPU time. Without it a busy machine stops the build, while a quiet
machine whose own speed wanders keeps its noisy timings anyway (``noise.unsteady``).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch

from cost_models.latency_build import Bench, build_lut, cpu_bench, time_forwards
from cost_models.latency_check import mac_bands
from cost_models.timing import NoisePolicy
from dnas.allocator import keep_freed_memory
from dnas.config import CostConfig, load_experiment
from dnas.engine.progress import Reporter
from dnas.nn.network import Network
from dnas.nn.profile import count_macs
from dnas.schema import from_dict
from dnas.search.budget import DRAW_TRIES, cheapest_within, sample_within
from dnas.search.cost_model import CostTable, get_cost_model
from dnas.search.derive import derive
from dnas.search.run import run_search
from dnas.space.graph import load_space
from tasks.pose.synth import write_synthetic_mpii

REPO = Path(__file__).resolve().parents[1]
SPACE = "mbv2_pose_small"
HW = (128, 128)
RUNTIMES = ("torch", "onnxruntime")
CAPACITY_RANDOM = 3  # random nets per level (draw seed CAPACITY_SEED, fixed up front)
CAPACITY_SEED = 0


def cost_models(tables: dict[str, Path]) -> dict[str, dict]:
    """The three cost models: name -> ``cost_model:`` keys (without the target)."""
    models = {"flops": {"type": "flops"}}
    for runtime, path in tables.items():
        models[f"latency-{runtime}"] = {"type": "latency", "table": str(path)}
    return models


def table_of(keys: dict) -> CostTable:
    """The cost table of the model ``keys`` names, for the benchmark's space and input."""
    model = get_cost_model(keys["type"], from_dict(CostConfig, keys, "<specialisation>"))
    return model.table(load_space(SPACE), HW, 16)


def target(keys: dict, fraction: float) -> float:
    """``fraction`` of the way from the space's cheapest to its dearest net, in the model's unit."""
    low, high = table_of(keys).cost_range()
    return low + fraction * (high - low)


def search(name: str, keys: dict, goal: float, tmp: Path) -> dict:
    """One budget search at ``goal``; the derived net's ops, MACs and architecture (``arch``,
    timed later by :func:`time_all`)."""
    overrides = [f"task.root={tmp / 'data'}", f"input_size=[{HW[0]}, {HW[1]}]",
                 "cost_model.form=budget", f"cost_model.target={goal}"]  # fmt: skip
    overrides += [f"cost_model.{k}={v}" for k, v in keys.items()]
    exp = load_experiment(REPO / "examples" / "demo.yaml", overrides)
    run_search(exp, tmp / name, Reporter(lambda _: None))
    arch, rows = derive(tmp / name)
    return {"target": round(goal, 4), "ops": {r.layer: r.op for r in rows},
            "mmac": round(count_macs(Network(arch, 16), torch.zeros(1, 3, *HW)) / 1e6, 2),
            "arch": arch}  # fmt: skip


def time_all(nets: list[dict], latency: dict[str, CostTable]) -> None:
    """Add every net's time in every runtime, as its table predicts it (``<runtime>_predicted_ms``)
    and measured (``<runtime>_ms``), all nets of a runtime timed together in interleaved rounds:
    timed one by one after their searches, minutes apart, the machine's change of speed would
    be part of the 3-5 % that tells the nets apart."""
    models = {str(i): Network(net.pop("arch"), 16).eval() for i, net in enumerate(nets)}
    for rt in RUNTIMES:
        ms = time_forwards(cpu_bench(rt), models, [torch.zeros(1, 3, *HW)])
        for i, net in enumerate(nets):
            net[f"{rt}_predicted_ms"] = round(latency[rt].of_choices(net["ops"]), 3)
            net[f"{rt}_ms"] = round(ms[str(i)], 3)


def latency_tables(models: dict[str, dict]) -> dict[str, CostTable]:
    """Each runtime's latency table, for the benchmark's space and input."""
    return {rt: table_of(models[f"latency-{rt}"]) for rt in RUNTIMES}


def matched(models: dict[str, dict], nets: dict[str, dict], tmp: Path) -> dict:
    """Per runtime R: a search for R at the cost the other runtime's net has in R's table, and
    both nets side by side; R's net is specialised when it holds more MACs at that cost."""
    out = {}
    for rt in RUNTIMES:
        (other,) = [o for o in RUNTIMES if o != rt]
        rival = nets[f"latency-{other}"]
        keys = models[f"latency-{rt}"]
        goal = table_of(keys).of_choices(rival["ops"])
        own = search(f"latency-{rt}-matched", keys, goal, tmp)
        out[rt] = {"target_ms": round(goal, 4), "searched_for_" + rt: own,
                   "searched_for_" + other: rival,
                   "specialised": own["mmac"] > rival["mmac"]}  # fmt: skip
    return out


def capacity(models: dict[str, dict]) -> list[dict]:
    """At the MAC levels of ``lut check``'s picks (``mac_bands``): the net each latency table
    predicts fastest among the nets of that many MACs (:func:`cheapest_within`), and random
    nets of those MACs, which FLOPs cannot tell apart; every net timed in every runtime. This
    isolates the tables from the search, whose task signal picks among nets of one cost by
    noise at this scale (issue 10)."""
    space = load_space(SPACE)
    flops, latency = table_of(models["flops"]), latency_tables(models)
    rng = np.random.default_rng(CAPACITY_SEED)
    levels = []
    for fraction, band in mac_bands(flops).items():
        picks = {f"fastest-{rt}": cheapest_within(table, flops, *band)
                 for rt, table in latency.items()}  # fmt: skip
        picks |= {f"random-{i}": sample_within(flops, rng, *band, DRAW_TRIES)
                  for i in range(CAPACITY_RANDOM)}  # fmt: skip
        if None in picks.values():
            raise SystemExit(f"no net of {space.name} has {band[0]:.1f}-{band[1]:.1f} MMAC")
        nets = {name: {"ops": ops, "mmac": round(flops.of_choices(ops), 2),
                       "arch": space.with_choices(ops)}
                for name, ops in picks.items()}  # fmt: skip
        same = picks["fastest-torch"] == picks["fastest-onnxruntime"]
        levels.append({"fraction": fraction, "mmac": round(sum(band) / 2, 2), "nets": nets,
                       "same_net": same})  # fmt: skip
    time_all([net for level in levels for net in level["nets"].values()], latency)
    for level in levels:
        nets = level["nets"]
        level["fastest"] = {rt: min(nets, key=lambda n, rt=rt: nets[n][f"{rt}_ms"])
                            for rt in RUNTIMES}  # fmt: skip
    return levels


def searches(models: dict[str, dict], args: argparse.Namespace, tmp: Path) -> dict:
    """One budget search per cost model at ``args.fraction`` of its range (and with
    ``--matched`` the matched pairs), every derived net timed in every runtime."""
    nets = {name: search(name, keys, target(keys, args.fraction), tmp)
            for name, keys in models.items()}  # fmt: skip
    report: dict = {"fraction": args.fraction, "nets": nets}
    if args.matched:
        report["matched"] = matched(models, nets, tmp)
    own = [m[f"searched_for_{rt}"] for rt, m in report.get("matched", {}).items()]
    time_all([*nets.values(), *own], latency_tables(models))
    report["fastest"] = {rt: min(nets, key=lambda n, rt=rt: nets[n][f"{rt}_ms"])
                         for rt in RUNTIMES}  # fmt: skip
    report["specialised"] = {rt: report["fastest"][rt] == f"latency-{rt}" for rt in RUNTIMES}
    return report


def main() -> None:
    keep_freed_memory()  # the searches keep it (RunContext): every timing here alike
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fraction", type=float, default=0.35)
    parser.add_argument("--allow-noise", action="store_true",
                        help="Keep (and count) noisy timings in the tables.")  # fmt: skip
    parser.add_argument("--matched", action="store_true",
                        help="Also search each runtime at the other one's net's cost.")  # fmt: skip
    parser.add_argument("--no-search", action="store_true",
                        help="Build the tables and time the capacity nets only.")  # fmt: skip
    parser.add_argument("--keep-tables", type=Path, metavar="DIR",
                        help="Also write the latency tables built into DIR.")  # fmt: skip
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_synthetic_mpii(tmp / "data", n_train=800, n_val=8, seed=0, image_size=256)
        space = load_space(SPACE)
        tables, noise = {}, {}
        for runtime in RUNTIMES:
            tables[runtime] = tmp / f"lut-{runtime}.json"
            bench = cpu_bench(runtime)
            bench = Bench(
                bench.runtime,
                bench.min_time,
                NoisePolicy(strict=not args.allow_noise),
                keep_memory=True,
            )  # as this process times the nets (main)
            table = build_lut(space, HW, 16, 1, bench, progress=False)
            tables[runtime].write_text(json.dumps(table))
            if args.keep_tables is not None:
                args.keep_tables.mkdir(parents=True, exist_ok=True)
                (args.keep_tables / tables[runtime].name).write_text(json.dumps(table))
            noise[runtime] = {k: v for k, v in table["meta"]["noise"].items()
                              if k != "reference_ms"}  # fmt: skip
        models = cost_models(tables)
        report: dict = {"input": list(HW), "noise": noise, "capacity": capacity(models)}
        if not args.no_search:
            report |= searches(models, args, tmp)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
