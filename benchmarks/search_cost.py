"""Search cost benchmarks (issue 4, benchmarks 1 and 5); prints one JSON object.

- ``step_cost``: time and peak memory of one search step of each strategy (DARTS, Gumbel,
  binary gates) on the super net of ``mbv2_pose_large`` (``--space``) vs one training step of
  the derived EfficientPose-C, same batch and input, as ratios; every step with an
  architecture step (the paper's alternation) and, for the single-path strategies, amortised
  over ``--arch-every`` steps with one architecture step (ProxylessNAS' schedule; cases named
  ``gumbel@5``). Each
  case runs in its own process so that peak memory is its own: on CUDA
  ``max_memory_allocated``, on CPU the rise of the process's peak resident set
  (``ru_maxrss``) over its resident set before the first step.
- ``throughput``: samples per second of whole search steps, data loading included (synthetic
  MPII-style data, full augmentation, the real loaders), per strategy, and on CPU a profile
  of one step (the ops that take the time, and data waiting vs compute).

Run: ``make bench-search`` (``make bench`` includes it) or, on a GPU, ``python
benchmarks/search_cost.py --device cuda --batch 32 --precision bf16 --channels-last``.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from dnas.allocator import keep_freed_memory
from dnas.config import CostConfig, SearchConfig
from dnas.engine.runtime import Amp, adam, machine_record, to_device, weight_step
from dnas.engine.sampling import stream, train_loader
from dnas.nn.network import Network
from dnas.registry import STRATEGIES, load_plugins
from dnas.search.cost_model import get_cost_model
from dnas.space.graph import load_space
from tasks.pose.synth import write_synthetic_mpii
from tasks.pose.task import PoseOptions, PoseTask

SPACE, DERIVED = "mbv2_pose_large", "efficientpose-c"
STRATEGY_NAMES = ("darts", "gumbel", "binary_gates")


def rss_bytes() -> int:
    """The current resident set of this process (Linux)."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * resource.getpagesize()


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def random_batch(batch: int, hw: int, device: torch.device) -> dict:
    return {
        "input": torch.randn(batch, 3, hw, hw, device=device),
        "target": torch.rand(batch, 16, hw // 4, hw // 4, device=device),
        "target_weight": torch.ones(batch, 16, 1, device=device),
    }


def make_strategy(name: str, space_name: str, task: PoseTask, hw: int, amp: Amp,
                  arch_every: int = 1):  # fmt: skip
    """A strategy on the super net of ``space_name``, past its warm-up: one architecture step
    per ``arch_every`` weight steps."""
    space = load_space(space_name)
    network = Network(space, 16).to(amp.device)
    table = get_cost_model("flops").table(space, (hw, hw), 16)
    cfg = SearchConfig(strategy=name, warmup_epochs=0, arch_every=arch_every)
    strategy = STRATEGIES.get(name)(cfg, CostConfig(), amp)
    strategy.adapt_search_space(network, task, table, amp.device)
    strategy.new_epoch(0)
    return strategy


def make_train_step(task: PoseTask, amp: Amp):
    net = amp.model(Network(load_space(DERIVED), 16).to(amp.device))
    params = net.weight_parameters()
    opt = adam(params, 1e-3)
    return lambda batch: weight_step(net, batch, task.loss, opt, params, amp=amp)


def cycle_of(strategy, arch_every: int):
    """``arch_every`` search steps (one of them with an architecture step), as the loop runs
    them; timed together and divided, this is the amortised cost of one search step."""

    def cycle(batch: dict) -> None:
        for _ in range(arch_every):
            strategy.step(batch, batch if strategy.wants_arch_batch() else None)

    return cycle


def run_case(case: str, args: argparse.Namespace) -> dict:
    """One case in this process: median seconds per step and peak memory of the steps."""
    device = torch.device(args.device)
    amp = Amp(device, args.precision, args.channels_last)
    task = PoseTask(PoseOptions(root="unused"), (args.input, args.input), "bench")
    name, _, every = case.partition("@")
    per_call = int(every or 1)
    if name == "train":
        step, per_call = make_train_step(task, amp), 1
    else:
        step = cycle_of(make_strategy(name, args.space, task, args.input, amp, per_call), per_call)
    batch = random_batch(args.batch, args.input, device)
    sync(device)
    base = torch.cuda.memory_allocated(device) if device.type == "cuda" else rss_bytes()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(args.repeats + 1):  # the first step is a warm-up
        start = time.perf_counter()
        step(batch)
        sync(device)
        times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else peak_rss_bytes()
    step_s = statistics.median(times[1:]) / per_call
    return {"step_s": step_s, "peak_mib": (peak - base) / 2**20}


def step_cost(args: argparse.Namespace) -> dict:
    """Every case in a child process; ratios against the EfficientPose-C training step."""
    rows = {}
    cases = [*args.strategies] + [f"{n}@{args.arch_every}" for n in args.strategies
                                  if args.arch_every > 1 and n != "darts"]  # fmt: skip
    for case in ("train", *cases):
        cmd = [sys.executable, __file__, "--case", case, *forward_args(args)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            rows[case] = {"error": (done.stderr.strip().splitlines() or ["killed"])[-1]}
            continue
        rows[case] = json.loads(done.stdout)
    base = rows["train"]
    for case in cases:
        row = rows[case]
        if "error" not in row and "error" not in base:
            row["time_ratio"] = row["step_s"] / base["step_s"]
            row["memory_ratio"] = row["peak_mib"] / base["peak_mib"]
    return {"space": args.space, "baseline": f"train step of {DERIVED}", "batch": args.batch,
            "input": args.input, "cases": rounded(rows)}  # fmt: skip


def forward_args(args: argparse.Namespace) -> list[str]:
    out = ["--device", args.device, "--space", args.space, "--batch", str(args.batch),
           "--input", str(args.input), "--repeats", str(args.repeats),
           "--precision", args.precision]  # fmt: skip
    return out + (["--channels-last"] if args.channels_last else [])


def rounded(value):
    if isinstance(value, dict):
        return {k: rounded(v) for k, v in value.items()}
    return round(value, 3) if isinstance(value, float) else value


def throughput(args: argparse.Namespace, root: Path) -> dict:
    """Whole search steps (weight and architecture batches from the real loaders) per strategy."""
    device = torch.device(args.device)
    amp = Amp(device, args.precision, args.channels_last)
    hw = (args.throughput_input, args.throughput_input)
    task = PoseTask(PoseOptions(root=str(root)), hw, "bench")
    dataset = task.dataset("train", augment=True, seed=0)
    rows = {}
    for name in args.strategies:
        strategy = make_strategy(name, args.space, task, hw[0], amp)
        every = range(len(dataset))
        weight = stream(train_loader(dataset, every, args.throughput_batch, args.workers, 0), 0)
        arch = stream(train_loader(dataset, every, args.throughput_batch, args.workers, 1), 0)
        waits, steps = [], []
        for i in range(args.throughput_steps + 1):  # the first step is a warm-up
            start = time.perf_counter()
            batch = to_device(next(weight), device)
            val = to_device(next(arch), device) if strategy.wants_arch_batch() else None
            loaded = time.perf_counter()
            strategy.step(batch, val)
            sync(device)
            if i:
                waits.append(loaded - start)
                steps.append(time.perf_counter() - start)
        total = sum(steps)
        rows[name] = {
            "samples_per_s": args.throughput_batch * len(steps) / total,
            "step_s": total / len(steps),
            "data_wait_fraction": sum(waits) / total,
        }
        if args.profile and device.type == "cpu":
            rows[name]["profile_top_ops"] = profile_step(strategy, next(weight), next(arch))
    return {"space": args.space, "batch": args.throughput_batch, "input": hw[0],
            "workers": args.workers, "strategies": rounded(rows)}  # fmt: skip


def profile_step(strategy, weight_batch: dict, arch_batch: dict, top: int = 8) -> dict:
    """Share of one step's CPU time per op kind (self time), the largest first."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        strategy.step(weight_batch, arch_batch)
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    ranked = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:top]
    return {e.key: round(e.self_cpu_time_total / total, 3) for e in ranked}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--space", default=SPACE, help="the super net's space (name or YAML)")
    parser.add_argument("--batch", type=int, default=8, help="step_cost batch (GPU: 32)")
    parser.add_argument("--input", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--strategies", default=",".join(STRATEGY_NAMES),
                        type=lambda s: tuple(s.split(",")))  # fmt: skip
    parser.add_argument(
        "--arch-every",
        type=int,
        default=5,
        help="also time single-path steps with one architecture step per N",
    )
    parser.add_argument("--throughput-batch", type=int, default=32)
    parser.add_argument("--throughput-input", type=int, default=256)
    parser.add_argument("--throughput-steps", type=int, default=3)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--profile", action="store_true", help="profile one CPU step")
    parser.add_argument("--only", choices=["step_cost", "throughput"])
    parser.add_argument("--case", help=argparse.SUPPRESS)  # internal: one step_cost case
    return parser.parse_args(argv)


def search_report(args: argparse.Namespace) -> dict:
    """The ``step_cost`` and ``throughput`` sections ``--only`` asks for (default: both)."""
    load_plugins()
    report: dict = {
        "machine": machine_record(torch.device(args.device))
        | {"precision": args.precision, "channels_last": args.channels_last},
    }  # fmt: skip
    if args.only in (None, "step_cost"):
        report["step_cost"] = step_cost(args)
    if args.only in (None, "throughput"):
        with tempfile.TemporaryDirectory() as tmp:
            n = args.throughput_batch * 2 * (args.throughput_steps + 2)
            write_synthetic_mpii(Path(tmp), n_train=n, n_val=2, seed=0, image_size=256)
            report["throughput"] = throughput(args, Path(tmp))
    return report


def main() -> None:
    keep_freed_memory()  # as dnas runs its steps (dnas.allocator)
    args = parse_args()
    if args.case:
        load_plugins()
        print(json.dumps(run_case(args.case, args)))
        return
    print(json.dumps(search_report(args), indent=1))


if __name__ == "__main__":
    main()
