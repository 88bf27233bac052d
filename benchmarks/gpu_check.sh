#!/usr/bin/env bash
# Issue #18's GPU check, in one call of the device tool (docs/gpu.md). On a machine
# that reaches no registry and has its own torch: installs the wheels carried in .whl/ into a
# folder of their own, reads MNIST from .gpu-data/ (both made by benchmarks/gpu_bundle.sh),
# prints the GPU and the versions, runs the CUDA tests, trains Step 6 for its 15 epochs on the
# GPU, then Step 0 for seeds 1-3 while time remains. Runs go to a GPU store of their own
# (never the reference store). Everything it prints goes to $OUT/gpu-check.log; $OUT also
# gets gpu-summary.md (device, times, accuracies, every epoch) and gpu.db (the GPU store).
#
# Usage, from the repository root: bash benchmarks/gpu_check.sh [options]
#   --budget S         seconds for all of it (default 560, for a 600 s call); whatever
#                      happens, the script ends within S + 18 s
#   --device D         cuda (default, or $GPU_CHECK_DEVICE) | cpu: cpu is a dry run of the
#                      script itself on a machine without a GPU
#   --epochs N, --train-limit N, --eval-limit N
#                      passed to every `ladder run` (quick looks; default: the recipe, full data)
#   --seeds "1 2 3"    Step 0's seeds (default 1 2 3); "" for none
#   --no-tests         skip the tests
# Env: OUT (default /tmp/gpu-check-out), PYTHON (default python3), GPU_CHECK_SITE (where
# the wheels go, default /tmp/site), GPU_CHECK_WORK (store and run folders, default
# /tmp/gpu-check; emptied first).
set -uo pipefail
SELF=$(cd "$(dirname "$0")" && pwd)/$(basename "$0")
cd "$(dirname "$SELF")/.." || exit 1
ROOT=$PWD

BUDGET=560
DEVICE=${GPU_CHECK_DEVICE:-cuda}
SEEDS="1 2 3"
TESTS=1
RUN_ARGS=()
ARGS=("$@")
while [ $# -gt 0 ]; do
  case $1 in
    --budget) BUDGET=${2:?}; shift 2 ;;
    --device) DEVICE=${2:?}; shift 2 ;;
    --epochs | --train-limit | --eval-limit) RUN_ARGS+=("$1" "${2:?}"); shift 2 ;;
    --seeds) SEEDS=${2?}; shift 2 ;;
    --no-tests) TESTS=0; shift ;;
    -h | --help) sed -n '2,24p' "$SELF"; exit 0 ;;
    *) echo "gpu_check.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
case $BUDGET in '' | *[!0-9]*) echo "gpu_check.sh: --budget takes whole seconds" >&2; exit 2 ;; esac
OUT=${OUT:-/tmp/gpu-check-out}

# The outer call: the whole check under one hard limit, its output tee'd into $OUT.
if [ -z "${_GPU_CHECK_INNER:-}" ]; then
  mkdir -p "$OUT" || exit 1
  _GPU_CHECK_INNER=1 _GPU_CHECK_T0=$(date +%s) OUT=$OUT \
    timeout -k 3 $((BUDGET + 15)) bash "$SELF" "${ARGS[@]}" 2>&1 | tee "$OUT/gpu-check.log"
  exit "${PIPESTATUS[0]}"
fi

RESERVE=20  # seconds kept for the summary and the store's copy
DEADLINE=$((_GPU_CHECK_T0 + BUDGET - RESERVE))
PY=${PYTHON:-python3}
SITE=${GPU_CHECK_SITE:-/tmp/site}
WORK=${GPU_CHECK_WORK:-/tmp/gpu-check}
STORE=$WORK/gpu.db
RUNS=$WORK/runs
PHASES=$WORK/phases.tsv
INFO=$WORK/info.tsv
rm -rf "$WORK" && mkdir -p "$WORK" "$OUT" || exit 1
FAILED=0
LAST_SECONDS=0

left() { echo $((DEADLINE - $(date +%s))); }
info() { printf '%s\t%s\n' "$1" "$2" >>"$INFO"; }
note() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "${3:-}" "${4:-}" >>"$PHASES"; echo "== $1: $2 ${4:-}"; }

# phase NAME CAP CMD...: CMD under `timeout`, at most CAP seconds and never past the deadline;
# its exit status and seconds go to the phase log.
phase() {
  local name=$1 cap=$2 t rc s secs why=""
  shift 2
  t=$(left)
  [ "$cap" -lt "$t" ] && t=$cap
  if [ "$t" -lt 10 ]; then
    note "$name" skipped "" "no time left"
    return 99
  fi
  echo "== $name (at most $t s)"
  s=$(date +%s.%N)
  timeout -k 5 "$t" "$@"
  rc=$?
  secs=$(awk -v s="$s" -v e="$(date +%s.%N)" 'BEGIN { printf "%.1f", e - s }')
  if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then why="stopped at its $t s limit"; fi
  note "$name" "$rc" "$secs" "$why"
  LAST_SECONDS=$secs
  [ $rc -eq 0 ] || FAILED=1
  return $rc
}

# shellcheck disable=SC2317  # invoked by the traps below
finish() {
  trap - EXIT TERM INT
  echo "== summary"
  timeout -k 2 15 "$PY" "$ROOT/benchmarks/gpu_summary.py" --store "$STORE" --phases "$PHASES" \
    --info "$INFO" --out "$OUT/gpu-summary.md" --copy-to "$OUT/gpu.db" \
    --reference "$ROOT/results/ladder.db" >/dev/null || echo "the summary failed" >&2
  echo "== done in $(($(date +%s) - _GPU_CHECK_T0)) s; \$OUT: $(cd "$OUT" && echo *)"
  [ -f "$OUT/gpu-summary.md" ] && cat "$OUT/gpu-summary.md"
}
trap finish EXIT
trap 'echo "gpu_check.sh: stopped by a signal"; exit 143' TERM INT

info date "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
info host "$(hostname)"
info bundle "$(tr '\n' ' ' <.gpu-data/SOURCE 2>/dev/null || echo 'no .gpu-data/SOURCE')"
info options "device $DEVICE, budget $BUDGET s, run options: ${RUN_ARGS[*]:-none (each recipe, full data)}"

echo "== the machine"
uname -a
if command -v nvidia-smi >/dev/null; then
  timeout 30 nvidia-smi
  info nvidia-smi "$(timeout 20 nvidia-smi --query-gpu=name,driver_version,memory.total \
    --format=csv,noheader 2>&1 | head -1)"
else
  echo "no nvidia-smi"
fi

shopt -s nullglob
wheels=("$ROOT"/.whl/*.whl)
if [ ${#wheels[@]} -eq 0 ]; then
  note install failed "" "no wheels in .whl/: run benchmarks/gpu_bundle.sh first and carry .whl"
  exit 1
fi
phase install 120 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
  --upgrade --target "$SITE" "${wheels[@]}" || exit 1

export PYTHONPATH="$SITE:$ROOT/src${PYTHONPATH:+:$PYTHONPATH}"
export MNIST_LADDER_IDX=$ROOT/.gpu-data MNIST_LADDER_DATA=/tmp/gpu-check-mnist
export MNIST_LADDER_CACHE=$WORK/cache MNIST_LADDER_OFFLINE=1
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 MPLBACKEND=Agg
export PYTEST_DISABLE_PLUGIN_AUTOLOAD=1  # the image's pytest plugins are not ours
unset MNIST_LADDER_DB MNIST_LADDER_REFERENCE MNIST_LADDER_STEPS

# Every module `ladder` imports, and where each came from: a missing one stops here.
GPU_CHECK_INFO=$INFO phase versions 90 "$PY" - <<'EOF' || exit 1
import importlib, os, platform, sys
import torch
info = open(os.environ["GPU_CHECK_INFO"], "a")
def say(key, value):
    print(f"{key}: {value}")
    info.write(f"{key}\t{value}\n")
say("python", f"{platform.python_version()} ({sys.executable})")
say("torch", f"{torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}")
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    say("gpu", f"{p.name} ({p.total_memory / 2**30:.0f} GiB, capability {p.major}.{p.minor}, "
               f"{p.multi_processor_count} SMs, bf16 {torch.cuda.is_bf16_supported()})")
else:
    say("gpu", "none visible to torch")
for name in ["torchinfo", "optuna", "sqlalchemy", "alembic", "mako", "colorlog", "pytest",
             "numpy", "scipy", "matplotlib", "PIL", "tqdm", "yaml", "mnist_ladder.apps.cli"]:
    m = importlib.import_module(name)
    print(f"  {name} {getattr(m, '__version__', '')} from {os.path.dirname(m.__file__)}")
EOF
if [ "$DEVICE" != cpu ] && ! "$PY" -c 'import torch, sys; sys.exit(not torch.cuda.is_available())'; then
  echo "warning: --device $DEVICE, but torch sees no CUDA device: the runs below will refuse"
fi

phase "MNIST from .gpu-data" 90 "$PY" -m mnist_ladder data || exit 1

if [ "$TESTS" = 1 ]; then
  # The tests that take the CUDA path when there is one (tests/test_cuda.py is skipped
  # without CUDA), and the two that check asking for CUDA where there is none.
  phase tests 180 "$PY" -m pytest -q -p no:cacheprovider -o addopts=-ra tests/test_cuda.py \
    tests/test_train.py::test_bad_device_and_precision_are_config_errors \
    tests/test_cli.py::test_cuda_asked_for_but_absent
fi

# On the CPU (the dry run) the memory-layout probe would time Step 0 in four layouts first.
[ "$DEVICE" = cpu ] && RUN_ARGS+=(--layout cl)
LADDER=("$PY" -m mnist_ladder run --device "$DEVICE" --db "$STORE" --out "$RUNS" "${RUN_ARGS[@]}")
phase "step6 seed 1" 300 "${LADDER[@]}" step6 --seed 1

prev=0
for seed in $SEEDS; do  # while time remains: another seed only when the last one's time is left
  need=$(awk -v p="$prev" 'BEGIN { n = int(p * 1.15 + 0.5); print (n > 30 ? n : 30) }')
  if [ "$(left)" -lt "$need" ]; then
    note "step0 seed $seed" skipped "" "needs about $need s, $(left) s left"
    continue
  fi
  phase "step0 seed $seed" 600 "${LADDER[@]}" step0 --seed "$seed"
  prev=$LAST_SECONDS
done

exit $FAILED
