#!/usr/bin/env bash
# GPU benchmark run: the `gpu` sweep preset + the peer comparison, CSV and figures in $OUT.
# Prepared for one H100 (< 5 min); CPU-tested with a tiny grid:
#
#   OUT=/tmp/gpu_try bash scripts/gpu_bench.sh --device cpu --preset tiny
#
# Usage: OUT=DIR bash scripts/gpu_bench.sh [--device cuda] [--preset gpu] [--no-peers]
# Then copy $OUT to bench/results/gpu_<card>/ and commit (device, torch and CUDA versions
# are in every CSV row and in env.txt).
set -euo pipefail

DEVICE=cuda
PRESET=gpu
PEERS=1
while [ $# -gt 0 ]; do
    case "$1" in
        --device) DEVICE=$2; shift 2 ;;
        --preset) PRESET=$2; shift 2 ;;
        --no-peers) PEERS=0; shift ;;
        *) echo "gpu_bench.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
OUT=${OUT:?set OUT to the output folder}
mkdir -p "$OUT"
PY=${PYTHON:-python}
if [ -f .venv/bin/activate ] && [ -z "${VIRTUAL_ENV:-}" ]; then . .venv/bin/activate; fi

{
    date -u +%FT%TZ
    $PY -c "import torch, platform; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'python', platform.python_version())"
    if [ "$DEVICE" != cpu ]; then nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || true; fi
} | tee "$OUT/env.txt"

start=$(date +%s)
$PY -m metagrad sweep --preset "$PRESET" --device "$DEVICE" --repeats 5 --out "$OUT/sweep"
echo "[gpu_bench] sweep done in $(( $(date +%s) - start )) s" | tee -a "$OUT/env.txt"

if [ "$PEERS" = 1 ]; then
    # Peers are optional; without them the table still has metagrad and the autograd loop.
    $PY -m bench.peers --device "$DEVICE" --repeats 7 --out "$OUT/peers" || echo "[gpu_bench] peers failed"
fi
echo "[gpu_bench] total $(( $(date +%s) - start )) s" | tee -a "$OUT/env.txt"
