"""Training throughput and inference latency of EfficientPose-A/B/C (the paper's latency table:
A 13.73, B 23.95, C 27.34 ms at batch 32, 256x256 on a 2080 Ti).

Modes: ``eager`` (fp32), ``cl_bf16`` (channels-last + bf16 autocast) and, for inference,
``compiled`` (``torch.compile`` of the ``cl_bf16`` net; recorded as an error where it does not
work). Timing is ``torch.utils.benchmark``'s ``blocked_autorange`` (CUDA synchronised, median
of blocks). The JSON file is rewritten after every measurement, so a run cut short by a time
limit keeps what it measured.

Run: ``python benchmarks/model_speed.py --device cuda`` (``make gpu-check`` does), or
``--device cpu --quick`` (EfficientPose-A alone, tiny batch and input: a test of the script).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils import benchmark

from dnas.allocator import keep_freed_memory
from dnas.engine.runtime import Amp, adam, device_name
from dnas.nn.network import Network
from dnas.space.graph import load_space

NETS = ("efficientpose-a", "efficientpose-b", "efficientpose-c")
PAPER_MS = {"efficientpose-a": 13.73, "efficientpose-b": 23.95, "efficientpose-c": 27.34}
JOINTS = 16


def median_s(fn: Callable[[], object], min_run_time: float) -> float:
    """Median seconds per call of ``fn`` (after a warm-up call)."""
    fn()
    timer = benchmark.Timer(stmt="fn()", globals={"fn": fn})
    return timer.blocked_autorange(min_run_time=min_run_time).median


def build(name: str, amp: Amp) -> Network:
    return amp.model(Network(load_space(name), JOINTS).to(amp.device))


def inference_fn(net: torch.nn.Module, amp: Amp, x: torch.Tensor) -> Callable[[], object]:
    def run() -> object:
        with torch.no_grad(), amp.autocast():
            return net(x)

    return run


def train_fn(net: Network, amp: Amp, x: torch.Tensor) -> Callable[[], object]:
    """One Adam step on a heatmap MSE loss (the training step's arithmetic, no data loading)."""
    params = net.weight_parameters()
    opt = adam(params, 1e-4)
    target = torch.rand(x.shape[0], JOINTS, x.shape[2] // 4, x.shape[3] // 4, device=x.device)

    def step() -> object:
        opt.zero_grad(set_to_none=True)
        loss = amp.forward_loss(net, {"input": x}, lambda out, _: (out - target).pow(2).mean())
        amp.step(loss, opt, params)
        return loss

    return step


def measure(args: argparse.Namespace, record: Callable[[str, str, dict], None]) -> None:
    """Eager and channels-last + bf16 for every net first, then the compiled nets (compiling
    takes the longest, so a time limit cuts it, not the other figures)."""
    device = torch.device(args.device)
    modes = {"eager": Amp(device), "cl_bf16": Amp(device, "bf16", channels_last=True)}
    for name in args.nets:
        for mode, amp in modes.items():
            x = amp.input(torch.randn(args.batch, 3, args.input, args.input, device=device))
            net = build(name, amp).eval()
            ms = 1e3 * median_s(inference_fn(net, amp, x), args.min_run_time)
            record(name, f"inference_{mode}", {"ms_per_batch": ms})
            net.train()
            step_s = median_s(train_fn(net, amp, x), args.min_run_time)
            record(name, f"train_{mode}", {"samples_per_s": args.batch / step_s})
    for name in args.nets if args.compile else ():
        amp = modes["cl_bf16"]
        x = amp.input(torch.randn(args.batch, 3, args.input, args.input, device=device))
        try:
            net = torch.compile(build(name, amp).eval())
            ms = 1e3 * median_s(inference_fn(net, amp, x), args.min_run_time)
            record(name, "inference_compiled", {"ms_per_batch": ms})
        except Exception as exc:  # any compiler failure is a finding to record
            record(name, "inference_compiled", {"error": f"{type(exc).__name__}: {exc}"[:300]})


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--input", type=int, default=256)
    parser.add_argument("--min-run-time", type=float, default=1.0, help="seconds per timing")
    parser.add_argument("--no-compile", dest="compile", action="store_false")
    parser.add_argument("--quick", action="store_true",
                        help="EfficientPose-A alone, batch 2, 32x32, no compile")  # fmt: skip
    parser.add_argument("--out", type=Path, default=Path("runs/model_speed.json"))
    args = parser.parse_args(argv)
    args.nets = NETS[:1] if args.quick else NETS
    if args.quick:
        args.batch, args.input, args.min_run_time, args.compile = 2, 32, 0.05, False
    return args


def main() -> None:
    keep_freed_memory()  # as dnas runs its steps (dnas.allocator)
    args = parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("model_speed.py: --device cuda, but torch sees no CUDA device")
    name = device_name(torch.device(args.device))
    result: dict = {"benchmark": "model_speed", "device": name, "torch": torch.__version__,
                    "batch": args.batch, "input": args.input, "paper_ms_2080ti": PAPER_MS,
                    "nets": {}}  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)

    def record(net: str, what: str, value: dict) -> None:
        result["nets"].setdefault(net, {})[what] = {k: round(v, 3) if isinstance(v, float)
                                                    else v for k, v in value.items()}  # fmt: skip
        args.out.write_text(json.dumps(result, indent=1))
        print(f"{net} {what}: {value}", flush=True)

    measure(args, record)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
