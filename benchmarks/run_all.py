"""Speed benchmarks for the CPU path; prints one JSON object (figures go to docs/benchmarks.md).

- search_step: one DARTS step (architecture + weights) on the small space's super net vs one
  training step of the derived-size net EfficientPose-A, same batch and input;
- data_pipeline: MPII-style crops with full augmentation and heatmap targets, one process;
- inference: EfficientPose-A/B/C, MobileNetV2, SimpleBaseline-R50 at batch 1, 256x256: eager
  PyTorch, channels_last and ONNX Runtime (BN folded), median latency;
- search_cost: per strategy on the large space, step cost vs an EfficientPose-C training step,
  and whole-step throughput at batch 32 (``benchmarks/search_cost.py``).
Run: ``make bench`` (or ``python benchmarks/run_all.py --quick`` for a smoke run).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from search_cost import parse_args as search_args  # benchmarks/search_cost.py
from search_cost import search_report

from dnas.allocator import keep_freed_memory
from dnas.config import CostConfig, SearchConfig
from dnas.engine.runtime import adam, machine_record, weight_step
from dnas.nn.export import export_onnx
from dnas.nn.network import Network
from dnas.search.cost_model import get_cost_model
from dnas.search.darts import DartsStrategy
from dnas.space.graph import load_space
from tasks.pose.mpii import MPIIDataset
from tasks.pose.synth import write_synthetic_mpii
from tasks.pose.task import PoseOptions, PoseTask
from tasks.pose.topdown import Augment

# --quick: the search benchmarks on tiny sizes, for a smoke run
QUICK_SEARCH = ["--batch", "2", "--input", "64", "--repeats", "1", "--throughput-batch", "2",
                "--throughput-input", "64", "--throughput-steps", "1"]  # fmt: skip


def timed(fn, repeats: int, warmup: int = 1) -> float:
    """Median seconds of ``fn()`` over ``repeats`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def fake_batch(batch: int, hw: int) -> dict:
    return {
        "input": torch.randn(batch, 3, hw, hw),
        "target": torch.rand(batch, 16, hw // 4, hw // 4),
        "target_weight": torch.ones(batch, 16, 1),
    }


def bench_search_step(root: Path, batch: int, hw: int, repeats: int) -> dict:
    task = PoseTask(PoseOptions(root=str(root)), (hw, hw), "bench")
    space = load_space("mbv2_pose_small")
    supernet = Network(space, 16)
    table = get_cost_model("flops").table(space, (hw, hw), 16)
    darts = DartsStrategy(SearchConfig(warmup_epochs=0), CostConfig())
    darts.adapt_search_space(supernet, task, table, torch.device("cpu"))
    darts.new_epoch(0)
    data = fake_batch(batch, hw)
    search_s = timed(lambda: darts.step(data, data), repeats)
    net = Network(load_space("efficientpose-a"), 16)
    params = net.weight_parameters()
    opt = adam(params, 1e-3)
    train_s = timed(lambda: weight_step(net, data, task.loss, opt, params), repeats)
    return {
        "batch": batch, "input": hw,
        "darts_step_s": round(search_s, 3), "darts_samples_per_s": round(batch / search_s, 1),
        "train_step_efficientpose_a_s": round(train_s, 3),
        "train_samples_per_s": round(batch / train_s, 1),
        "search_over_train_time": round(search_s / train_s, 2),
    }  # fmt: skip


def bench_data(root: Path, hw: int, items: int) -> dict:
    ds = MPIIDataset(root, "train", (hw, hw), augment=Augment())
    n = min(items, len(ds))
    seconds = timed(lambda: [ds[i] for i in range(n)], repeats=3)
    return {"input": hw, "samples_per_s_per_worker": round(n / seconds, 1)}


def bench_inference(repeats: int, tmp: Path) -> dict:
    """Batch-1 256x256 latency per net in eager PyTorch, channels_last and ONNX Runtime."""
    import onnxruntime as ort

    out: dict = {}
    x = torch.randn(1, 3, 256, 256)
    for name in ("efficientpose-a", "efficientpose-b", "efficientpose-c", "mobilenetv2",
                 "simplebaseline-r50"):  # fmt: skip
        net = Network(load_space(name), 16).eval()
        row = {}
        with torch.inference_mode():
            row["eager_ms"] = 1000 * timed(lambda n=net: n(x), repeats, warmup=3)
            last = copy.deepcopy(net).to(memory_format=torch.channels_last)
            xl = x.contiguous(memory_format=torch.channels_last)
            row["channels_last_ms"] = 1000 * timed(lambda n=last, v=xl: n(v), repeats, warmup=3)
        path = export_onnx(net, (256, 256), tmp / f"{name}.onnx")
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        feed = {"input": x.numpy()}
        row["onnxruntime_ms"] = 1000 * timed(lambda s=session, f=feed: s.run(None, f), repeats, 3)
        row = {k: round(v, 2) for k, v in row.items()}
        row["onnxruntime_over_eager"] = round(row["onnxruntime_ms"] / row["eager_ms"], 3)
        out[name] = row
    return out


def main() -> None:
    keep_freed_memory()  # as dnas runs its steps (dnas.allocator)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny repeats, for a smoke run")
    args = parser.parse_args()
    repeats = 2 if args.quick else 10
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_synthetic_mpii(root, n_train=64, n_val=4, seed=0, image_size=256)
        report = {
            "machine": machine_record(torch.device("cpu")),
            "search_step": bench_search_step(root, 16, 128, repeats),
            "data_pipeline": bench_data(root, 256, 64),
            "inference_batch1_256": bench_inference(repeats * 3, root),
        }  # fmt: skip
    report["search_cost"] = search_report(search_args(QUICK_SEARCH if args.quick else []))
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
