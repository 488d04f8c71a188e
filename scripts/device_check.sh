#!/usr/bin/env bash
# The one device call of a session lent a GPU (see DEVELOPERS.md): install the carried wheels,
# unpack the data, run the gpu-marked tests, time the trainer on resnet20 and res3-66, run the
# GPU campaign under a hard time cap while sampling nvidia-smi, and pack what must come back into
# at most 8 files under $OUT. It stops by itself well inside 9 minutes.
#
# On the device machine, from the repository root (carry .whl and .data, see
# ../shared/device/README.md):
#
#   bash scripts/device_check.sh
#
# Then, here: unpack $OUT/result.tar.gz at the repository root (it holds results/reference/gpu/
# and results/bench/) and commit results/reference/gpu/.
#
# A dry run on a CPU (the test suite does this on tiny generated images) sets NAS_DRY_RUN=1:
# nothing is installed or unpacked, and the variables below point the steps at small inputs.
#   NAS_CAMPAIGN_CONFIG  campaign preset          (default configs/campaign/gpu.toml)
#   NAS_CAMPAIGN_ARGS    extra campaign flags     (default none; e.g. --device cpu --data DIR)
#   NAS_CAMPAIGN_CAP     campaign cap in seconds  (default 390)
#   NAS_BENCH_ARGS       bench_train.py flags     (default --device cuda --models resnet20 res3-66)
#   NAS_RESULTS          results folder           (default results)
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:?set OUT to the folder that comes back}
mkdir -p "$OUT"
DRY=${NAS_DRY_RUN:-0}
CONFIG=${NAS_CAMPAIGN_CONFIG:-configs/campaign/gpu.toml}
CAP=${NAS_CAMPAIGN_CAP:-390}
RESULTS=${NAS_RESULTS:-results}
read -r -a CAMPAIGN_ARGS <<< "${NAS_CAMPAIGN_ARGS:-}"
read -r -a BENCH_ARGS <<< "${NAS_BENCH_ARGS:---device cuda --models resnet20 res3-66}"
NAME=$(python3 -c "import sys, tomllib, pathlib; p = pathlib.Path(sys.argv[1]); \
print(tomllib.loads(p.read_text()).get('campaign', {}).get('name') or p.stem)" "$CONFIG")
LOG="$OUT/device_check.log"
START=$(date +%s)
exec > >(tee -a "$LOG") 2>&1

step() { echo; echo "== +$(( $(date +%s) - START ))s $*"; }
status=()
record() { status+=("$1: exit $2 after +$(( $(date +%s) - START ))s"); }

step "set-up"
if [ "$DRY" != 1 ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site \
    .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
  mkdir -p data && tar xzf .data/cifar10-jpeg.tar.gz -C data || exit 1
fi
PY=${NAS_PYTHON:-python3}
$PY - <<'EOF'
import torch
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, GPU: "
      f"{torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none'}")
EOF

SAMPLER=""
if command -v nvidia-smi > /dev/null; then
  nvidia-smi --query-gpu=timestamp,utilization.gpu,utilization.memory,memory.used,power.draw \
    --format=csv -l 2 > "$OUT/gpu-utilization.csv" 2>&1 &
  SAMPLER=$!
fi

step "gpu-marked tests"
# Only the files that hold them: the others import test tools (hypothesis, playwright) that the
# device machine lacks.
mapfile -t GPU_TESTS < <(grep -rl --include='test_*.py' 'pytest.mark.gpu' tests | sort)
timeout -k 10 120 $PY -m pytest -m gpu -q -p no:cacheprovider "${GPU_TESTS[@]}"
record "gpu tests (${#GPU_TESTS[@]} files)" $?

step "trainer benchmark: ${BENCH_ARGS[*]}"
timeout -k 10 150 $PY scripts/bench_train.py "${BENCH_ARGS[@]}" --out "$RESULTS/bench"
record "bench_train" $?

step "campaign $CONFIG (capped at ${CAP}s)"
# SIGINT at the cap: the campaign stops its trial or training at the next step, writes a partial
# leaderboard and exits 130; SIGKILL 30 s later if it has not.
timeout -s INT -k 30 "$CAP" $PY -m search.campaign --config "$CONFIG" --results "$RESULTS" \
  --no-progress "${CAMPAIGN_ARGS[@]}"
record "campaign" $?
# Whatever happened above, write the result from what finished (trains nothing).
timeout -k 5 60 $PY -m search.campaign --config "$CONFIG" --results "$RESULTS" --summarize \
  "${CAMPAIGN_ARGS[@]}"
record "campaign --summarize" $?

[ -n "$SAMPLER" ] && kill "$SAMPLER" 2> /dev/null

step "packing"
packed=()
for f in "$RESULTS/reference/$NAME" "$RESULTS/bench" "$RESULTS/campaigns/$NAME/log.json" \
         "$RESULTS"/campaigns/"$NAME"/*/report/trials.csv \
         "$RESULTS"/campaigns/"$NAME"/*/leaderboard.csv; do
  [ -e "$f" ] && packed+=("$f")
done
tar czf "$OUT/result.tar.gz" "${packed[@]}"
record "pack (${#packed[@]} paths)" $?

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
cols = ["budget", "name", "recipe", "params", "test_acc_mean", "test_acc_std", "seeds", "epochs",
        "minutes"]
print(board[cols].to_string(index=False) if not board.empty else "(no model finished)")
EOF
  fi
} | tee "$OUT/summary.txt"
exit 0
