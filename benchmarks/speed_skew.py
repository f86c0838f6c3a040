"""Does this machine's change of speed fall on every net alike? (`make bench-skew`) The 30
random architectures that `dnas lut check` draws, and the reference net, timed in turn pass
after pass for a while in one process, as a check times them; each net's slope against its
pass's shared speed and what it does to a check's ranking (``cost_models.speed_skew``). With
``--ops``, every entry a build times (each candidate op of each layer, and the head) in place
of the random nets: whether the reference net's speed, by which a build corrects its op
timings, is the ops' speed too. Prints one JSON object.

    python benchmarks/speed_skew.py                          # small space, 256x256, batch 1
    python benchmarks/speed_skew.py --batch 8 --minutes 25 --save passes.npy
    python benchmarks/speed_skew.py --ops
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from cost_models.latency_build import cpu_bench, network_job, op_jobs, reference_choices, warm_up
from cost_models.speed_skew import slopes, speed_skew
from cost_models.timing import shared_speeds
from dnas.cli import head_outputs
from dnas.engine.runtime import machine_record
from dnas.space.choices import uniform_choices
from dnas.space.graph import load_space


def timed_passes(space_name: str, size: int, batch: int, samples: int, seed: int,
                 minutes: float, ops: bool) -> tuple[np.ndarray, list[str], float]:  # fmt: skip
    """``passes[row][pass]`` (ms) timed in turn (``Bench.time_in_turn``) for ``minutes`` after
    a check's warm-up: the reference net, then ``samples`` random nets (drawn as ``lut check
    --seed`` draws them) or, with ``ops``, every entry a build times (``op_jobs``); with the
    rows' names and the minutes they took."""
    space, bench = load_space(space_name), cpu_bench()
    bench.prepare_allocator()
    outputs = head_outputs(None, None)
    x = torch.randn(batch, space.in_channels, size, size)
    rng = np.random.default_rng(seed)
    warm_up(bench, space, (size, size), outputs, x, np.random.default_rng(seed + 1000))
    fns = [network_job(bench, space, reference_choices(space), outputs, x)()]
    names = ["reference net"]
    if ops:
        jobs = [job for _, _, job in op_jobs(bench, space, (size, size), outputs, batch)]
    else:
        jobs = [(f"network {i + 1}", network_job(bench, space, c, outputs, x))
                for i, c in enumerate(uniform_choices(space.searchable_layers, rng)
                                      for _ in range(samples))]  # fmt: skip
    names += [name for name, _ in jobs]
    fns += [prepare() for _, prepare in jobs]
    passes, start = [], time.perf_counter()
    while not passes or time.perf_counter() - start < 60 * minutes:
        passes.append([t.median_ms for t in bench.time_in_turn(fns)])
    return np.array(passes).T, names, (time.perf_counter() - start) / 60


def row_slopes(passes: np.ndarray) -> tuple[np.ndarray, float]:
    """The slopes of the rows besides the reference net, as ``speed_skew`` fits them (against
    their shared speed), and the reference net's against the same speed."""
    log_ms = np.log(passes)
    rows, speeds = log_ms[1:], shared_speeds(log_ms[1:])
    centred = speeds - speeds.mean()
    reference = log_ms[0] - rows.mean(axis=0)  # its time beyond the rows' level in each pass
    reference_slope = (reference - reference.mean()) @ centred / (centred @ centred)
    return slopes(rows, speeds), float(reference_slope)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--space", default="mbv2_pose_small")
    parser.add_argument("--input", type=int, default=256, help="square input size")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--samples", type=int, default=30)
    parser.add_argument("--seed", type=int, default=1, help="lut check's default")
    parser.add_argument("--minutes", type=float, default=20.0)
    parser.add_argument(
        "--ops", action="store_true", help="time every entry a build times instead of random nets"
    )
    parser.add_argument("--save", type=Path, help="also write passes[net][pass] (ms) here, .npy")
    args = parser.parse_args()
    if not args.minutes > 0 or args.samples < 1:
        parser.error("--minutes must be above 0 and --samples at least 1")
    passes, names, minutes = timed_passes(args.space, args.input, args.batch, args.samples,
                                          args.seed, args.minutes, args.ops)  # fmt: skip
    if args.save:
        np.save(args.save, passes)
    skew = speed_skew(passes)
    slopes_of, reference_slope = row_slopes(passes) if skew else (None, None)
    if skew is None:
        print(f"speed_skew: {passes.shape[1]} passes of {passes.shape[0]} rows is too few for two "
              f"disjoint 5-pass checks in each third of them (30 passes, 4 rows): run it longer "
              f"(--minutes)", file=sys.stderr)  # fmt: skip
    print(json.dumps({
        "machine": machine_record(torch.device("cpu")),
        "date": datetime.date.today().isoformat(),
        "space": args.space, "input": args.input, "batch": args.batch, "seed": args.seed,
        "rows": "ops" if args.ops else "nets", "minutes": round(minutes, 1),
        "skew": skew.to_dict() if skew else None,
        # each row's median time, and each one's slope (0: it slows as the rows' shared speed)
        "ms": dict(zip(names, np.median(passes, axis=1).round(4).tolist(), strict=True)),
        "slopes": (dict(zip(names[1:], slopes_of.round(4).tolist(), strict=True))
                   if skew else None),
        "reference_slope": round(reference_slope, 4) if skew else None,
    }, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
