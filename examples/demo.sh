#!/usr/bin/env bash
# The main job, end to end on the built-in synthetic dataset:
#   generate data (once, cached) -> search -> derive -> train -> eval.
# Each run writes into a new timestamped directory, so no earlier result is overwritten.
set -euo pipefail
DNAS=${DNAS:-dnas}
DATA=${DATA:-data/synth-mpii}
CONFIG=${CONFIG:-examples/demo.yaml}
OUT=${OUT:-runs/demo-$(date +%Y%m%d-%H%M%S)}
N_TRAIN=${N_TRAIN:-3000}
N_VAL=${N_VAL:-300}
START=$(date +%s)

step() { printf '\n== %s\n' "$*"; }

step "1/5 data: synthetic MPII-format set in $DATA"
$DNAS data synth-mpii "$DATA" --train "$N_TRAIN" --val "$N_VAL" --seed 0

step "2/5 search: gumbel over mbv2_pose_small under a FLOPs budget (cost_model.target)"
$DNAS search "$CONFIG" --out "$OUT/search" --set "task.root=$DATA"

step "3/5 derive: most probable op per layer (within the budget band)"
$DNAS derive "$OUT/search" -o "$OUT/arch.yaml" --name demo-derived

step "4/5 train the derived net"
$DNAS train "$CONFIG" --arch "$OUT/arch.yaml" --out "$OUT/train" --set "task.root=$DATA"

step "5/5 eval on the held-out synthetic split"
$DNAS eval "$CONFIG" --arch "$OUT/arch.yaml" --weights "$OUT/train/model.pt" \
    --out "$OUT/eval" --set "task.root=$DATA"

step "done in $(( $(date +%s) - START )) s; everything written:"
find "$OUT" -type f -not -path '*/tb/*' | sort
echo "$OUT/search/tb, $OUT/train/tb (TensorBoard: tensorboard --logdir $OUT)"
