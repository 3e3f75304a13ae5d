#!/usr/bin/env bash
# One accelerator check, about 5 minutes on one GPU, writing one report file.
#
#   scripts/gpu_check.sh [--dry-run] [OUT_DIR]
#
# Runs, each under its own time limit, from the repository root:
#   1. the device, jax and fnn versions (nvidia-smi if present);
#   2. the device-relevant quick tests (convolutions and their custom gradient, pooling, batch
#      norm, train steps and epochs);
#   3. scripts/bench_peers.py for the MLP and the CNN, fnn step and epoch mode against the
#      hand-written jax.jit + optax step, in float32 and in bfloat16 compute;
#   4. scripts/bench_conv_scan.py (a scanned vs an unrolled stack of convolutions);
#   5. 10 epochs of configs/mnist_cnn.yaml, epoch mode (needs MNIST: $FNN_DATA_DIR, or shared/data/mnist or
#      ../shared/data/mnist next to the repository; skipped with a note when absent).
# The report is OUT_DIR/gpu_check.md (OUT_DIR: the argument, else $OUT, else runs/gpu_check),
# with every command, its output, exit status and wall time; the MNIST run folder and the
# benchmark JSON files sit beside it.
#
# --dry-run: the same steps with tiny sizes (a few steps, 1 epoch on 3,000 examples), to check
# the script itself on a CPU-only machine (a few minutes; time limits x4).
# Python: $PYTHON, else python; it must already have a GPU build of jax and fnn's dependencies
# (the script installs nothing).
set -u
cd "$(dirname "$0")/.."

DRY=0
if [ "${1:-}" = "--dry-run" ]; then DRY=1; shift; fi
DEST="${1:-${OUT:-runs/gpu_check}}"
mkdir -p "$DEST"
DEST="$(cd "$DEST" && pwd)"
REPORT="$DEST/gpu_check.md"
PY="${PYTHON:-python}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [ -z "${FNN_DATA_DIR:-}" ]; then
  for dir in shared/data/mnist ../shared/data/mnist; do
    if [ -d "$dir" ]; then export FNN_DATA_DIR="$(cd "$dir" && pwd)"; break; fi
  done
fi

if [ "$DRY" = 1 ]; then
  TESTS=(tests/test_conv_ops.py -k "scan or auto or bad_method or forced")
  PEER_STEPS="mlp=5,cnn=3"; PEER_RUNNERS="fnn-step,fnn-epoch,jax-step"; PEER_MODELS="cnn"
  STACK=(--layers 4 --rounds 1)
  TRAIN=(training.epochs=1 data.validation=57000)
  SCALE=4  # a shared CPU is slow: the limits are for a GPU
else
  SCALE=1
  TESTS=(tests/test_conv_ops.py tests/test_conv.py tests/test_pooling.py
         tests/test_normalization.py tests/test_train.py)
  PEER_STEPS="mlp=400,cnn=200"; PEER_RUNNERS="fnn-step,fnn-epoch,jax-step"
  PEER_MODELS="mlp,cnn"
  STACK=(--layers 50 --rounds 5)
  TRAIN=(training.epochs=10)
fi

# step TITLE SECONDS COMMAND...: run COMMAND under a time limit, append it and its output.
step() {
  local title="$1" limit="$2"; shift 2
  local start rc
  echo "== $title"
  {
    echo
    echo "## $title"
    echo
    echo '```'
    echo "\$ $*"
  } >> "$REPORT"
  start=$SECONDS
  timeout "$((limit * SCALE))" "$@" >> "$REPORT" 2>&1
  rc=$?
  {
    echo '```'
    echo "exit $rc, $((SECONDS - start)) s (limit $((limit * SCALE)) s)"
  } >> "$REPORT"
  [ "$rc" = 124 ] && echo "   (timed out after $((limit * SCALE)) s)"
  return 0
}

{
  echo "# fnn accelerator check"
  echo
  echo "$(date -u '+%Y-%m-%d %H:%M UTC'), git $(git rev-parse --short HEAD 2>/dev/null || echo '?')," \
       "mode: $([ "$DRY" = 1 ] && echo 'dry run (tiny sizes)' || echo full)"
} > "$REPORT"

if command -v nvidia-smi > /dev/null; then
  step "nvidia-smi" 20 nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
fi
step "devices" 60 "$PY" -c "import jax, fnn; print('jax', jax.__version__, 'backend', \
jax.default_backend(), jax.devices())"
step "device-relevant quick tests" 120 "$PY" -m pytest -q -p no:cacheprovider "${TESTS[@]}"
step "peers, float32 compute" 150 "$PY" scripts/bench_peers.py --repeats 1 \
  --models "$PEER_MODELS" --runners "$PEER_RUNNERS" --steps "$PEER_STEPS" \
  --json "$DEST/peers_float32.json"
step "peers, bfloat16 compute" 150 "$PY" scripts/bench_peers.py --repeats 1 --dtype bfloat16 \
  --models "$PEER_MODELS" --runners "$PEER_RUNNERS" --steps "$PEER_STEPS" \
  --json "$DEST/peers_bfloat16.json"
step "scanned vs unrolled conv stack" 120 "$PY" scripts/bench_conv_scan.py "${STACK[@]}"
if [ -n "${FNN_DATA_DIR:-}" ]; then
  step "configs/mnist_cnn.yaml ${TRAIN[*]}" 240 "$PY" -m fnn.cli train configs/mnist_cnn.yaml \
    "${TRAIN[@]}" --out "$DEST/mnist_cnn"
  if [ -f "$DEST/mnist_cnn/metrics.jsonl" ]; then
    step "mnist_cnn per-epoch metrics" 10 cat "$DEST/mnist_cnn/metrics.jsonl"
  fi
else
  printf '\n## configs/mnist_cnn.yaml\n\nskipped: no MNIST (set FNN_DATA_DIR)\n' >> "$REPORT"
fi
echo "report: $REPORT"
