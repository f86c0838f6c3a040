"""Specialisation: the same search on the built-in data under the FLOPs model and under this
CPU's latency table; prints the derived nets' ops, MACs and measured latency as JSON.

Both runs share the seed, data, warm-up and every hyperparameter; only the cost model differs.
The search is short (CPU), so the cost weight (1.0) and the architecture lr (3e-3) are raised
to let the cost term show within 48 steps. Run: ``python benchmarks/specialisation.py``.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch

from cost_models.latency import build_lut, time_module
from dnas.config import load_experiment
from dnas.engine.progress import Reporter
from dnas.nn.network import Network
from dnas.nn.profile import count_macs
from dnas.search.derive import derive
from dnas.search.run import run_search
from dnas.space.graph import load_space
from tasks.pose.synth import write_synthetic_mpii

REPO = Path(__file__).resolve().parents[1]
HW = (128, 128)


def main() -> None:
    torch.set_num_threads(2)
    cpu = torch.device("cpu")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_synthetic_mpii(tmp / "data", n_train=800, n_val=8, seed=0, image_size=256)
        space = load_space("mbv2_pose_small")
        table = build_lut(space, HW, 16, 1, cpu, progress=False)
        (tmp / "lut.json").write_text(json.dumps(table))
        report = {"input": list(HW), "lut_correction": [table["scale"], table["overhead_ms"]]}
        for model in ("flops", "latency"):
            exp = load_experiment(REPO / "examples" / "demo.yaml", [
                f"task.root={tmp / 'data'}", f"cost_model.type={model}",
                f"cost_model.table={tmp / 'lut.json'}", "cost_model.weight=1.0",
                "search.arch_optimizer.lr=0.003",
            ])  # fmt: skip
            run_search(exp, tmp / model, Reporter(lambda _: None))
            arch, rows = derive(tmp / model)
            net = Network(arch, 16).eval()
            x = torch.zeros(1, 3, *HW)
            report[model] = {
                "ops": {r.layer: r.op for r in rows},
                "mmac": round(count_macs(net, x) / 1e6, 2),
                "measured_ms": round(time_module(net, [x], cpu, 10, 50), 3),
                "skips": sum(r.op == "skip" for r in rows),
                "kernel_7": sum(r.op.startswith("k7") for r in rows),
                "expansion_6": sum(r.op.endswith("e6") for r in rows),
            }
        differ = [n for n in report["flops"]["ops"]
                  if report["flops"]["ops"][n] != report["latency"]["ops"][n]]  # fmt: skip
        report["layers_that_differ"] = {
            n: [report["flops"]["ops"][n], report["latency"]["ops"][n]] for n in differ
        }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
