"""Specialisation: one search per cost model (FLOPs, eager-PyTorch CPU latency, ONNX Runtime
CPU latency), each under the budget form at the same fraction of its own cost range, then every
derived net measured in every runtime. Prints JSON; `docs/benchmarks.md` holds the table.

Every search shares the seed, data and hyperparameters of `examples/demo.yaml` (the built-in
synthetic data), at 128x128 here; only the cost model and its target differ. A net is "specialised"
when it is the fastest of the three in the runtime it was searched for.

    python benchmarks/specialisation.py [--fraction 0.35]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from cost_models.latency import build_lut, cpu_bench, time_forward
from dnas.config import load_experiment
from dnas.engine.progress import Reporter
from dnas.nn.network import Network
from dnas.nn.profile import count_macs
from dnas.search.cost_model import get_cost_model
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


def target(keys: dict, fraction: float) -> float:
    """``fraction`` of the way from the space's cheapest to its dearest net, in the model's unit."""
    from dnas.config import CostConfig
    from dnas.schema import from_dict

    model = get_cost_model(keys["type"], from_dict(CostConfig, keys, "<specialisation>"))
    low, high = model.table(load_space("mbv2_pose_small"), HW, 16).cost_range()
    return low + fraction * (high - low)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fraction", type=float, default=0.35)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_synthetic_mpii(tmp / "data", n_train=800, n_val=8, seed=0, image_size=256)
        space = load_space("mbv2_pose_small")
        tables = {}
        for runtime in RUNTIMES:
            tables[runtime] = tmp / f"lut-{runtime}.json"
            table = build_lut(space, HW, 16, 1, cpu_bench(runtime), progress=False)
            tables[runtime].write_text(json.dumps(table))
        report: dict = {"input": list(HW), "fraction": args.fraction, "nets": {}}
        for name, keys in cost_models(tables).items():
            goal = target(keys, args.fraction)
            overrides = [f"task.root={tmp / 'data'}", f"input_size=[{HW[0]}, {HW[1]}]",
                         "cost_model.form=budget", f"cost_model.target={goal}"]  # fmt: skip
            overrides += [f"cost_model.{k}={v}" for k, v in keys.items()]
            exp = load_experiment(REPO / "examples" / "demo.yaml", overrides)
            run_search(exp, tmp / name, Reporter(lambda _: None))
            arch, rows = derive(tmp / name)
            net = Network(arch, 16).eval()
            x = torch.zeros(1, 3, *HW)
            report["nets"][name] = {
                "target": round(goal, 4), "ops": {r.layer: r.op for r in rows},
                "mmac": round(count_macs(net, x) / 1e6, 2),
                **{f"{rt}_ms": round(time_forward(cpu_bench(rt), net, [x]), 3)
                   for rt in RUNTIMES},
            }  # fmt: skip
        nets = report["nets"]
        report["fastest"] = {rt: min(nets, key=lambda n, rt=rt: nets[n][f"{rt}_ms"])
                             for rt in RUNTIMES}  # fmt: skip
        report["specialised"] = {rt: report["fastest"][rt] == f"latency-{rt}" for rt in RUNTIMES}
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
