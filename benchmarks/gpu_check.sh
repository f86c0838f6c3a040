#!/usr/bin/env bash
# One prepared check of the CUDA path (make gpu-check): the CUDA-marked tests, search and
# training throughput, EfficientPose-A/B/C inference latency, a latency table built and checked
# on the device. About 10 minutes on one H200 (measured 2026-12-04, docs/benchmarks.md); every
# step has its own time limit, so one that hangs cannot take the others' results with it, and
# --only reruns the steps named (e.g. one that timed out) in a fraction of that. Writes a log and one JSON per step
# under --out, then summary.json and a printed summary with the targets (docs/benchmarks.md).
#
# Works on a bare GPU machine without network: it uses the python3 that holds the CUDA torch
# (never reinstalls torch) and, if dnas is not installed there, installs this checkout and any
# wheels in .whl/ (an ignored folder: e.g. pycocotools) into a private folder, offline.
#
#   benchmarks/gpu_check.sh [--device cuda|cpu] [--quick] [--out DIR] [--only STEP,...]
#
# --device cpu --quick runs every step on tiny sizes: the test of this script.
set -uo pipefail

DEVICE=cuda
QUICK=0
OUT=runs/gpu-check
ALL_STEPS="cuda_tests,search_speed,model_speed,lut"
ONLY=$ALL_STEPS
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE="${2:?gpu_check.sh: --device needs a value (cuda or cpu)}"; shift 2 ;;
    --quick) QUICK=1; shift ;;
    --out) OUT="${2:?gpu_check.sh: --out needs a folder}"; shift 2 ;;
    --only) ONLY="${2:?gpu_check.sh: --only needs step names ($ALL_STEPS)}"; shift 2 ;;
    *) echo "gpu_check.sh: unknown argument '$1' (expected --device, --quick, --out, --only)" >&2
       exit 1 ;;
  esac
done
for name in ${ONLY//,/ }; do
  case ",$ALL_STEPS," in *",$name,"*) ;; *)
    echo "gpu_check.sh: --only: unknown step '$name' (expected some of $ALL_STEPS)" >&2; exit 1 ;;
  esac
done
case "$DEVICE" in cuda|cpu) ;; *) echo "gpu_check.sh: --device must be cuda or cpu" >&2; exit 1 ;; esac

REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO" || exit 1
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
LOG="$OUT/log.txt"
: > "$LOG"
PY=${PYTHON:-python3}
say() { echo "[gpu-check $(date +%H:%M:%S)] $*" | tee -a "$LOG"; }

# -- set-up: dnas importable with its plugins, offline ----------------------------------------
# an install from before 2026-12-08 lacks the lut entry point: installed anew too;
# DNAS_CHECK_INSTALL=1 takes this path even where dnas is installed (the script's own test)
if [ "${DNAS_CHECK_INSTALL:-0}" = 1 ] || ! "$PY" -c "import importlib.metadata as m, sys; sys.exit(not {'pose', 'lut'} <= {e.name for e in m.entry_points(group='dnas.plugins')})" 2>/dev/null; then
  SITE="$OUT/site"
  say "dnas is not installed for $PY: installing this checkout and .whl/*.whl into $SITE (offline)"
  WHEELS=$(ls "${DNAS_CHECK_WHEELS:-.whl}"/*.whl 2>/dev/null)
  # shellcheck disable=SC2086  # the wheel list is meant to split
  "$PY" -m pip install -q --no-index --no-deps --no-build-isolation --no-cache-dir \
      --target "$SITE" . $WHEELS >> "$LOG" 2>&1 || { say "set-up failed (see $LOG)"; exit 1; }
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
"$PY" - > "$OUT/machine.json" <<'EOF'
import json, torch
from dnas.engine.runtime import device_name, machine_record
device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
print(json.dumps(machine_record(device) | {"cuda": torch.version.cuda,
                                           "cpu": device_name(torch.device("cpu"))}))
EOF
say "machine: $(cat "$OUT/machine.json")"

# -- the steps: name, time limit (s), command ------------------------------------------------
STATUS="$OUT/steps.tsv"
: > "$STATUS"
step() {
  local name=$1 limit=$2
  shift 2
  case ",$ONLY," in *",$name,"*) ;; *) return ;; esac
  say "$name: $* (limit ${limit}s)"
  local start=$SECONDS
  timeout --signal=TERM --kill-after=10 "$limit" "$@" >> "$LOG" 2>&1
  local rc=$?
  printf '%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - start))" >> "$STATUS"
  say "$name: exit $rc after $((SECONDS - start)) s"
}

if [ "$QUICK" = 1 ]; then
  export DNAS_CHECK_SPACE=tests/data/tiny_space.yaml
  # every CUDA test but the other strategies' and precisions' cases of the search and training
  # steps (tests/test_single_path.py runs those on the CPU): half the time of all ten; a CUDA
  # test added later runs here too
  TESTS=(-k "not (search_step and not darts-fp32) and not (train_steps and not fp32)")
  SEARCH=(--space tests/data/tiny_space.yaml --throughput-batch 4 --throughput-input 64
          --throughput-steps 2 --workers 0)
  SPEED=(--quick)
  # one round each: every round already runs in a fresh process (tests/test_processes.py
  # covers merging several)
  LUT_BUILD=(--space tests/data/tiny_space.yaml --input 64x64 --batch 1 --min-time 0.01
             --calibration 4 --allow-noise --rounds 1)
  LUT_CHECK=(--space tests/data/tiny_space.yaml --samples 4 --min-time 0.01 --allow-noise
             --rounds 1)
  LIMITS=(900 600 300 300)
else
  TESTS=()
  SEARCH=(--throughput-batch 32 --throughput-input 256 --throughput-steps 20 --workers 12
          --precision bf16 --channels-last)
  SPEED=()
  # measured on the H200 (2026-12-04): about 1 s per timing whatever --min-time, so these
  # 3 rounds of the 237 ops and 20 calibration nets (771 timings) took about 13 minutes: an
  # eager op at batch 32 is launch-bound (about 0.5 ms of CPU work per call) and torch's
  # block estimate grew its blocks to 100 calls (docs/benchmarks.md, "GPU"). BlockTimer now
  # sizes blocks to 2.5 ms at --min-time 0.01: about 20 ms per timing, not yet run on a GPU;
  # at --min-time 0.01 a pass warms up for 0.2 s after the largest net's 3 runs (2 s before
  # 2026-12-06), also not yet run on a GPU
  LUT_BUILD=(--space mbv2_pose_large --input 256x256 --batch 32 --min-time 0.01 --rounds 3
             --calibration 20)
  LUT_CHECK=(--samples 30 --min-time 0.01 --rounds 3)
  # measured on the H200: the tests 140 s, search 93 s, model speed 113 s (compiling is slow)
  LIMITS=(200 120 150 150)
fi

DNAS_CHECK_DEVICE=$DEVICE step cuda_tests "${LIMITS[0]}" \
  "$PY" -m pytest -q -m cuda -p no:cacheprovider --junitxml="$OUT/cuda_tests.xml" "${TESTS[@]}" \
  tests/test_cuda.py
step search_speed "${LIMITS[1]}" sh -c \
  "\"$PY\" benchmarks/search_cost.py --only throughput --device $DEVICE ${SEARCH[*]} > \"$OUT/search_speed.json\""
step model_speed "${LIMITS[2]}" \
  "$PY" benchmarks/model_speed.py --device "$DEVICE" "${SPEED[@]}" --out "$OUT/model_speed.json"
step lut "${LIMITS[3]}" sh -c \
  "\"$PY\" -m dnas lut build --device $DEVICE ${LUT_BUILD[*]} -o \"$OUT/lut.json\" --force \
   && \"$PY\" -m dnas lut check --table \"$OUT/lut.json\" ${LUT_CHECK[*]} --format json \
      > \"$OUT/lut_check.json\""

"$PY" benchmarks/gpu_check_summary.py "$OUT" | tee -a "$LOG"
