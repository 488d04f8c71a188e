#!/usr/bin/env bash
# The one device call of a session lent a GPU (see DEVELOPERS.md): install the carried wheels,
# unpack the data, run the gpu-marked tests, time the trainer, run a campaign under a hard time
# cap while sampling nvidia-smi, and pack what must come back into at most 8 files under $OUT.
# Every step gets what is left of one deadline (8 minutes after the start by default), so the
# whole script ends by itself well inside 9 minutes.
#
# Here, once before the device call: bash scripts/device_prepare.sh (fills .whl/ and .data/).
# On the device machine, from the repository root (run's carry: [".whl", ".data", ".carry"]):
#
#   bash scripts/device_check.sh [PRESET]          (default configs/campaign/gpu.toml)
#
# A campaign that needs two calls: the first packs the campaign's folders into
# $OUT/campaign-<name>.tar.gz (scripts/campaign_carry.py: no trained weights, the training state
# of cut runs while it fits). Copy that file into .carry/ here; the next call unpacks it before
# the campaign, which continues where it stopped. Back here, after the last call:
#
#   python scripts/campaign_carry.py unpack .carry/campaign-<name>.tar.gz
#   python -m search.campaign --config PRESET --summarize      (the PNGs: the device has no
#                                                               browser for kaleido)
#
# and commit results/reference/<name>/. $OUT/result.tar.gz holds that result folder as the
# device wrote it and results/bench/.
#
# Which steps run: NAS_STEPS, a comma-separated list of
#   tests     the gpu-marked tests (their outcome is in the summary)
#   train     bench_train.py: trainer img/s through the real pipeline vs its ceiling
#   modes     bench_train.py --modes: eager vs CUDA graph vs torch.compile(reduce-overhead)
#   jobs      bench_jobs.py --mps: aggregate img/s of 1, 2, 4 and 8 trainings at once
#   campaign  the campaign of PRESET, capped, then --summarize and packed
# (default tests,train,campaign). A dry run on a CPU (the test suite does this on tiny generated
# images) sets NAS_DRY_RUN=1: nothing is installed or unpacked, and the variables below point
# the steps at small inputs.
#   NAS_CAMPAIGN_CONFIG  campaign preset          (default: PRESET, else configs/campaign/gpu.toml)
#   NAS_CAMPAIGN_ARGS    extra campaign flags     (default none; e.g. --device cpu --data DIR)
#   NAS_DEADLINE         seconds for everything   (default 480)
#   NAS_CAMPAIGN_CAP     campaign cap in seconds  (default: what is left of the deadline)
#   NAS_BENCH_ARGS       bench_train.py flags     (default: --device cuda, resnet20 and res3-66,
#                                                  40 timed steps a row)
#   NAS_MODES_ARGS       bench_train.py --modes flags   (default --device cuda)
#   NAS_JOBS_ARGS        bench_jobs.py flags      (default --device cuda --mps)
#   NAS_CARRY_MB         most MB of the carry tarball (default 20: the 64 MiB a call carries
#                        also hold .whl and .data)
#   NAS_CARRY_DIR        where the carried-in tarball is looked for (default .carry)
#   NAS_RESULTS          results folder           (default results)
#   NAS_PYTHON           the interpreter          (default python3)
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:?set OUT to the folder that comes back}
mkdir -p "$OUT"
START=$(date +%s)
LOG="$OUT/device_check.log"
exec > >(tee -a "$LOG") 2>&1

DRY=${NAS_DRY_RUN:-0}
PY=${NAS_PYTHON:-python3}
CONFIG=${1:-${NAS_CAMPAIGN_CONFIG:-configs/campaign/gpu.toml}}
STEPS=",${NAS_STEPS:-tests,train,campaign},"
wants() { [[ "$STEPS" == *",$1,"* ]]; }
DEADLINE=$(( START + ${NAS_DEADLINE:-480} ))
RESULTS=${NAS_RESULTS:-results}
read -r -a CAMPAIGN_ARGS <<< "${NAS_CAMPAIGN_ARGS:-}"
read -r -a BENCH_ARGS <<< "${NAS_BENCH_ARGS:---device cuda --models resnet20 res3-66 --steps 40}"
read -r -a MODES_ARGS <<< "${NAS_MODES_ARGS:---device cuda}"
read -r -a JOBS_ARGS <<< "${NAS_JOBS_ARGS:---device cuda --mps}"

step() { echo; echo "== +$(( $(date +%s) - START ))s $*"; }
status=()
record() { status+=("$1: exit $2 after +$(( $(date +%s) - START ))s"); }
# Seconds a step may take: its own cap, or what is left before the deadline less a reserve
# for the steps after it, whichever is smaller (at least 5).
budget() {
  local cap=$1 reserve=$2 left
  left=$(( DEADLINE - $(date +%s) - reserve ))
  (( left < cap )) && cap=$left
  (( cap < 5 )) && cap=5
  echo "$cap"
}

SAMPLER=""
cleanup() { [ -n "$SAMPLER" ] && kill "$SAMPLER" 2> /dev/null; }
trap cleanup EXIT

step "set-up"
if [ "$DRY" != 1 ]; then
  timeout 90 python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
  mkdir -p data && timeout 60 tar xzf .data/cifar10-jpeg.tar.gz -C data || exit 1
fi
NAME=$($PY -c "import sys, tomllib, pathlib; p = pathlib.Path(sys.argv[1]); \
print(tomllib.loads(p.read_text()).get('campaign', {}).get('name') or p.stem)" "$CONFIG") || exit 1
CARRY="${NAS_CARRY_DIR:-.carry}/campaign-$NAME.tar.gz"
if [ -f "$CARRY" ]; then  # the campaign's folders as the previous call left them
  $PY scripts/campaign_carry.py unpack "$CARRY" --results "$RESULTS"
  record "carry-in $CARRY" $?
fi
$PY - <<'EOF'
import torch
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, GPU: "
      f"{torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none'}")
EOF

if command -v nvidia-smi > /dev/null; then
  nvidia-smi --query-gpu=timestamp,utilization.gpu,utilization.memory,memory.used,power.draw \
    --format=csv -l 2 > "$OUT/gpu-utilization.csv" 2>&1 &
  SAMPLER=$!
fi

if wants tests; then
  step "gpu-marked tests"
  # Only the files that hold them (the others need test tools the device may lack); a file
  # that cannot be collected does not stop the others.
  mapfile -t GPU_TESTS < <(grep -rl --include='test_*.py' 'pytest.mark.gpu' tests | sort)
  timeout -k 5 "$(budget 100 360)" $PY -m pytest -m gpu -q -p no:cacheprovider \
    --continue-on-collection-errors "${GPU_TESTS[@]}" 2>&1 | tee "$OUT/.gpu-tests.txt"
  code=${PIPESTATUS[0]}
  outcome=$(grep -E "(passed|failed|error|skipped|no tests ran)" "$OUT/.gpu-tests.txt" | tail -1)
  rm -f "$OUT/.gpu-tests.txt"
  record "gpu tests (${#GPU_TESTS[@]} files: ${outcome:-no outcome line})" "$code"
fi

if wants train; then
  step "trainer benchmark: ${BENCH_ARGS[*]}"
  timeout -k 5 "$(budget 120 330)" $PY scripts/bench_train.py "${BENCH_ARGS[@]}" \
    --out "$RESULTS/bench"
  record "bench_train" $?
fi

if wants modes; then
  step "eager, CUDA graph and reduce-overhead: ${MODES_ARGS[*]}"
  timeout -k 5 "$(budget 240 200)" $PY scripts/bench_train.py --modes "${MODES_ARGS[@]}" \
    --out "$RESULTS/bench"
  record "bench_train --modes" $?
fi

if wants jobs; then
  step "trainings at once: ${JOBS_ARGS[*]}"
  timeout -k 5 "$(budget 240 120)" $PY scripts/bench_jobs.py "${JOBS_ARGS[@]}" \
    --out "$RESULTS/bench"
  record "bench_jobs" $?
fi

if wants campaign; then
  CAP=${NAS_CAMPAIGN_CAP:-$(budget 600 40)}
  step "campaign $CONFIG (capped at ${CAP}s)"
  # SIGTERM at the cap to the campaign alone (--foreground: not to its process group): it
  # stops its trial or training at the next step, writes a partial leaderboard and exits;
  # SIGKILL 20 s later if it has not.
  timeout --foreground -s TERM -k 20 "$CAP" $PY -m search.campaign --config "$CONFIG" \
    --results "$RESULTS" --no-progress "${CAMPAIGN_ARGS[@]}"
  record "campaign" $?
  # Whatever happened above, write the result from what finished (trains nothing).
  timeout -k 5 30 $PY -m search.campaign --config "$CONFIG" --results "$RESULTS" --summarize \
    "${CAMPAIGN_ARGS[@]}"
  record "campaign --summarize" $?
  # What the next call needs to continue it.
  timeout -k 5 60 $PY scripts/campaign_carry.py pack "$NAME" --results "$RESULTS" \
    --out "$OUT/campaign-$NAME.tar.gz" --limit-mb "${NAS_CARRY_MB:-20}"
  record "carry-out campaign-$NAME.tar.gz" $?
fi
cleanup

step "packing"
packed=()
for f in "$RESULTS/reference/$NAME" "$RESULTS/bench" "$RESULTS/campaigns/$NAME/log.json" \
         "$RESULTS"/campaigns/"$NAME"/*/report/trials.csv \
         "$RESULTS"/campaigns/"$NAME"/*/leaderboard.csv; do
  [ -e "$f" ] && packed+=("$f")
done
if (( ${#packed[@]} )); then
  tar czf "$OUT/result.tar.gz" "${packed[@]}"
  record "pack (${#packed[@]} paths)" $?
else
  record "pack (nothing to pack)" 1
fi

step "summary"
{
  echo "device check, $(date -u +%FT%TZ), $(( $(date +%s) - START )) s"
  for s in "${status[@]}"; do echo "  $s"; done
  if [ -f "$RESULTS/reference/$NAME/leaderboard.csv" ]; then
    echo; echo "leaderboard ($RESULTS/reference/$NAME/leaderboard.csv):"
    $PY - "$RESULTS/reference/$NAME/leaderboard.csv" <<'EOF'
import sys
import pandas as pd
board = pd.read_csv(sys.argv[1])
cols = ["budget", "name", "recipe", "params", "val_acc", "race_val_acc", "test_acc_mean",
        "test_acc_std", "seeds", "epochs", "minutes"]
cols = [c for c in cols if c in board.columns]
print(board[cols].to_string(index=False) if not board.empty else "(no model finished)")
EOF
  fi
} | tee "$OUT/summary.txt"
sleep 1  # let tee write the log out
exit 0
