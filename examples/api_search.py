"""The Python API end to end on a small synthetic set: a space and its cost table, a search
under a budget picked from that table, derive, then train and score the derived net.

    python examples/api_search.py --out runs/api            # about a minute on 2 CPU cores
"""

from __future__ import annotations

import argparse
from pathlib import Path

import dnas
from tasks.pose.synth import write_synthetic_mpii

EXPERIMENT = Path(__file__).parent / "demo.yaml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/api"))
    parser.add_argument("--size", type=int, default=64, help="input size (square)")
    parser.add_argument("--steps", type=int, default=4, help="steps per epoch")
    args = parser.parse_args()

    data = args.out / "data"
    write_synthetic_mpii(data, n_train=16 * args.steps, n_val=8, seed=0, image_size=args.size)

    space = dnas.load_space("mbv2_pose_small")
    table = dnas.cost_table(space, (args.size, args.size), outputs=16)
    low, high = table.cost_range()
    target = low + 0.3 * (high - low)  # a budget 30 % of the way up the space's range
    size = f"{args.size}x{args.size}"
    print(f"{space.name}: {len(space.searchable_layers)} searchable layers, "
          f"{low:.2f}-{high:.2f} MMAC at {size}; target {target:.2f} MMAC")  # fmt: skip

    exp = dnas.load_experiment(EXPERIMENT, [
        f"task.root={data}", f"input_size=[{args.size}, {args.size}]",
        f"cost_model.target={target}", "search.warmup_epochs=1", "search.epochs=2",
        f"search.steps_per_epoch={args.steps}", "search.batch_size=8",
        "train.epochs=1", f"train.steps_per_epoch={args.steps}", "train.batch_size=8",
        "train.milestones=[]", "train.eval_every=1",
    ])  # fmt: skip
    result = dnas.run_search(exp, args.out / "search", force=True)  # a rerun replaces its runs
    arch, rows = dnas.derive(args.out / "search", "api-derived")
    dnas.write_architecture(arch, args.out / "arch.yaml", force=True)
    print(f"derived {result['final_cost']:.2f} MMAC (target {target:.2f}), decisiveness "
          f"{dnas.decisiveness({r.layer: list(r.probs.values()) for r in rows}):.3f}")  # fmt: skip

    metrics = dnas.run_train(exp, str(args.out / "arch.yaml"), args.out / "train", force=True)
    print(f"{metrics.primary}: {metrics.score:.2f}")


if __name__ == "__main__":
    main()
