"""Evaluation under torchrun (`make bench-eval`): `dnas eval` of one net on a synthetic MPII
validation split, timed as a user runs it (start-up included), in one process with every core,
and under ``torchrun --nproc_per_node N`` with the cores shared out: the processes predicting
a slice each (``dnas.engine.evaluation``), and rank 0 alone (the same pose task with an
``evaluate`` of its own, as a plugin without ``predict``/``score`` is scored). The three are
timed in turn, ``--repeats`` times, and the medians compared, with how many predicted joints
agree. Prints one JSON object.

    python benchmarks/eval_speed.py                  # 1024 people, 256x256, EfficientPose-A
    python benchmarks/eval_speed.py --people 2048 --processes 4
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml
from scipy.io import loadmat

from dnas.engine.runtime import machine_record
from tasks.pose.synth import write_synthetic_mpii

# A launcher that gives the pose task an evaluate of its own (the base's, so the same work):
# scored by rank 0 alone, as a plugin without predict/score is, and as before evaluation was
# shared
WHOLE = """
from dnas.cli import main
from dnas.task import Task
from tasks.pose.task import PoseTask

def evaluate(self, model, loader, device, out_dir, save_vis=0):
    return Task.evaluate(self, model, loader, device, out_dir, save_vis)

PoseTask.evaluate = evaluate
main()
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--people", type=int, default=1024, help="validation people")
    parser.add_argument("--input", type=int, default=256, help="input side (square)")
    parser.add_argument("--arch", default="efficientpose_a", help="a shipped architecture")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    return parser.parse_args(argv)


def experiment(path: Path, root: Path, size: int) -> Path:
    path.write_text(yaml.safe_dump({
        "task": {"name": "pose", "root": str(root)}, "space": "mbv2_pose_small",
        "input_size": [size, size], "device": "cpu", "pictures": False,
        "train": {"epochs": 1, "batch_size": 16, "steps_per_epoch": 2, "eval_every": 2},
    }))  # fmt: skip
    return path


def timed(command: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, **env})
    if done.returncode:
        sys.exit(f"{' '.join(command)} failed:\n{done.stderr[-2000:]}")
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="dnas-bench-eval-") as work:
        print(json.dumps(measure(args, Path(work)), indent=1))


def measure(args: argparse.Namespace, work: Path) -> dict:
    cores = os.cpu_count() or 1
    per_process = str(max(1, cores // args.processes))
    arch = str(Path(__file__).parent.parent / "search_spaces" / f"{args.arch}.yaml")
    root = work / "data"
    write_synthetic_mpii(root, n_train=32, n_val=args.people, seed=0, image_size=128)
    exp = str(experiment(work / "exp.yaml", root, args.input))
    launcher = work / "whole.py"
    launcher.write_text(WHOLE)
    python = sys.executable
    trained = work / "train"
    # the net trained for 2 steps (its weights: any, since only the time is compared)
    subprocess.run([python, "-m", "dnas", "train", exp, "--arch", arch, "--out", str(trained)],
                   check=True, capture_output=True)  # fmt: skip
    weights = str(trained / "model.pt")
    torchrun = [python, "-m", "torch.distributed.run", "--standalone",
                f"--nproc_per_node={args.processes}"]  # fmt: skip
    runs = {
        "one_process": ([python, "-m", "dnas"], {"OMP_NUM_THREADS": str(cores)}),
        "torchrun_slices": ([*torchrun, "-m", "dnas"], {"OMP_NUM_THREADS": per_process}),
        "torchrun_rank0_alone": ([*torchrun, str(launcher)], {"OMP_NUM_THREADS": per_process}),
    }  # fmt: skip
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    for repeat in range(args.repeats):
        for name, (command, env) in runs.items():
            out = work / f"{name}-{repeat}"
            seconds[name].append(timed([*command, "eval", exp, "--weights", weights, "--out",
                                        str(out)], env))  # fmt: skip
    scores = {name: json.loads((work / f"{name}-0" / "results.json").read_text())["Mean"]
              for name in runs}  # fmt: skip
    preds = {name: loadmat(work / f"{name}-0" / "pred.mat")["preds"] for name in runs}
    agree = {name: float((abs(p - preds["one_process"]).max(-1) <= 1.0).mean())
             for name, p in preds.items()}  # fmt: skip
    median = {name: statistics.median(times) for name, times in seconds.items()}
    return {
        "benchmark": "eval_speed",
        "date": datetime.date.today().isoformat(),
        "machine": machine_record(torch.device("cpu")) | {"cores": cores},
        "people": args.people, "input": args.input, "arch": args.arch,
        "processes": args.processes, "threads_per_process": int(per_process),
        "seconds": seconds, "median_s": median,
        "slices_vs_rank0_alone": median["torchrun_slices"] / median["torchrun_rank0_alone"],
        "pckh_mean": scores,
        # a net trained 2 steps has flat heatmaps: a joint's peak may move with float rounding
        "joints_within_1px_of_one_process": agree,
    }  # fmt: skip


if __name__ == "__main__":
    main()
