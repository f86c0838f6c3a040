"""Specialisation: one search per cost model (FLOPs, eager-PyTorch CPU latency, ONNX Runtime
CPU latency), each under the budget form at the same fraction of its own cost range, then every
derived net measured in every runtime. Prints JSON; `docs/benchmarks.md` holds the table.

A fraction of each model's own range is not the same budget in two runtimes, so ``--matched``
adds one search per runtime R at the latency the other runtime's net has in R's table: the two
nets then cost the same in R, and the net searched for R is the specialised one when it buys
more MACs (capacity) there, i.e. it is the faster of the two per MAC in R.

Every search shares the seed, data and hyperparameters of `examples/demo.yaml` (the built-in
synthetic data), at 128x128 here; only the cost model and its target differ. A net is "specialised"
when it is the fastest of the three in the runtime it was searched for.

    python benchmarks/specialisation.py [--fraction 0.35] [--matched] [--allow-noise]

``--allow-noise`` builds the tables with the noise guard's strict mode off (``dnas lut build
--allow-noise``): a noisy timing or chunk is kept and counted in the JSON's ``noise``, not
refused, for a machine whose own speed wanders more than the guard accepts.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from cost_models.latency import Bench, build_lut, cpu_bench, time_forwards
from cost_models.timing import NoisePolicy
from dnas.config import CostConfig, load_experiment
from dnas.engine.progress import Reporter
from dnas.nn.network import Network
from dnas.nn.profile import count_macs
from dnas.schema import from_dict
from dnas.search.cost_model import CostTable, get_cost_model
from dnas.search.derive import derive
from dnas.search.run import run_search
from dnas.space.graph import load_space
from tasks.pose.synth import write_synthetic_mpii

REPO = Path(__file__).resolve().parents[1]
HW = (128, 128)
RUNTIMES = ("torch", "onnxruntime")


def cost_models(tables: dict[str, Path]) -> dict[str, dict]:
    """The three cost models: name -> ``cost_model:`` keys (without the target)."""
    models = {"flops": {"type": "flops"}}
    for runtime, path in tables.items():
        models[f"latency-{runtime}"] = {"type": "latency", "table": str(path)}
    return models


def table_of(keys: dict) -> CostTable:
    """The cost table of the model ``keys`` names, for the benchmark's space and input."""
    model = get_cost_model(keys["type"], from_dict(CostConfig, keys, "<specialisation>"))
    return model.table(load_space("mbv2_pose_small"), HW, 16)


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


def time_all(nets: list[dict]) -> None:
    """Add every net's time in every runtime (``<runtime>_ms``), all nets of a runtime timed
    together in interleaved rounds: timed one by one after their searches, minutes apart, the
    machine's change of speed would be part of the 3-5 % that tells the nets apart."""
    models = {str(i): Network(net.pop("arch"), 16).eval() for i, net in enumerate(nets)}
    for rt in RUNTIMES:
        ms = time_forwards(cpu_bench(rt), models, [torch.zeros(1, 3, *HW)])
        for i, net in enumerate(nets):
            net[f"{rt}_ms"] = round(ms[str(i)], 3)


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fraction", type=float, default=0.35)
    parser.add_argument("--allow-noise", action="store_true",
                        help="Keep (and count) noisy timings in the tables.")  # fmt: skip
    parser.add_argument("--matched", action="store_true",
                        help="Also search each runtime at the other one's net's cost.")  # fmt: skip
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_synthetic_mpii(tmp / "data", n_train=800, n_val=8, seed=0, image_size=256)
        space = load_space("mbv2_pose_small")
        tables, noise = {}, {}
        for runtime in RUNTIMES:
            tables[runtime] = tmp / f"lut-{runtime}.json"
            bench = cpu_bench(runtime)
            bench = Bench(bench.runtime, bench.min_time, NoisePolicy(strict=not args.allow_noise))
            table = build_lut(space, HW, 16, 1, bench, progress=False)
            tables[runtime].write_text(json.dumps(table))
            noise[runtime] = {k: v for k, v in table["meta"]["noise"].items()
                              if k != "reference_ms"}  # fmt: skip
        report: dict = {"input": list(HW), "fraction": args.fraction, "noise": noise, "nets": {}}
        models = cost_models(tables)
        for name, keys in models.items():
            report["nets"][name] = search(name, keys, target(keys, args.fraction), tmp)
        nets = report["nets"]
        if args.matched:
            report["matched"] = matched(models, nets, tmp)
        own = [m[f"searched_for_{rt}"] for rt, m in report.get("matched", {}).items()]
        time_all([*nets.values(), *own])
        report["fastest"] = {rt: min(nets, key=lambda n, rt=rt: nets[n][f"{rt}_ms"])
                             for rt in RUNTIMES}  # fmt: skip
        report["specialised"] = {rt: report["fastest"][rt] == f"latency-{rt}" for rt in RUNTIMES}
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
