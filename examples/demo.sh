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
$DNAS derive "$OUT/search" -o "$OUT/arch.yaml" --name demo-derived 2>&1 | tee "$OUT/derive.txt"
$DNAS plot "$OUT/search" -o "$OUT/plots"   # op probabilities and the derived net, as PNGs

step "4/5 train the derived net"
$DNAS train "$CONFIG" --arch "$OUT/arch.yaml" --out "$OUT/train" --set "task.root=$DATA"

step "5/5 eval on the held-out synthetic split (8 people drawn into $OUT/eval/vis)"
$DNAS eval "$CONFIG" --arch "$OUT/arch.yaml" --weights "$OUT/train/model.pt" \
    --out "$OUT/eval" --set "task.root=$DATA" --save-vis 8 | tee "$OUT/eval.txt"

step "summary ($(( $(date +%s) - START )) s)"
# the search's closing line (asked vs derived cost, decisiveness, gradient evidence), what derive
# warned about, and the score: what to read, without scrolling back
grep -h "derived architecture cost" "$OUT/search/log.txt" | cut -d' ' -f2- | sed 's/^/search: /'
grep -h "^warning:" "$OUT/derive.txt" | sed 's/^/derive /' || true
grep -h -e "^params " -e "^| " -e "^|-" "$OUT/eval.txt"
echo "pictures: $OUT/plots/op_probs.png, $OUT/plots/architecture.png, $OUT/eval/vis/"
echo "logs: $OUT/*/log.txt; TensorBoard: tensorboard --logdir $OUT"
