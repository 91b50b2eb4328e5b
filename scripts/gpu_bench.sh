#!/usr/bin/env bash
# One GPU session, prepared to fit a few lent minutes: device facts, every method on CUDA
# against the CPU in float64, metagrad against JAX at matched precision (CUDA graphs, launch
# counts, full float32 and TF32), the peer comparison on CUDA (metagrad eager, mg.compile
# with CUDA graphs, the per-task autograd loop, JAX, and higher/betty where installed), the
# HVP modes, and the gpu-quick sweep. Each step has its own time limit and its results are
# packed into $OUT as soon as it ends, so a cut-off run still returns what it finished.
#
#   OUT=gpu_out bash scripts/gpu_bench.sh                      # on the GPU machine
#   OUT=/tmp/gpu_try bash scripts/gpu_bench.sh --device cpu --preset tiny --no-peers
#
# Then unpack $OUT/*.tar.gz into bench/results/gpu_<card>/ and commit (the device, torch and
# CUDA versions are in env.txt and in every CSV row).
set -u

DEVICE=cuda
PRESET=gpu-quick
PEERS=1
ONLY=
while [ $# -gt 0 ]; do
    case "$1" in
        --device) DEVICE=$2; shift 2 ;;
        --preset) PRESET=$2; shift 2 ;;
        --no-peers) PEERS=0; shift ;;
        --only) ONLY=$2; shift 2 ;;  # run this one step (a rerun of what a first call missed)
        *) echo "gpu_bench.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
OUT=${OUT:?set OUT to the output folder}
mkdir -p "$OUT"
WORK=$(mktemp -d)
LOG="$OUT/gpu_run.log"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false NO_MKDOCS_2_WARNING=1

step() {  # step NAME SECONDS COMMAND...: run with a time limit, log, pack $WORK/NAME
    local name=$1 limit=$2 start rc
    shift 2
    if [ -n "$ONLY" ] && [ "$ONLY" != "$name" ]; then return; fi
    start=$(date +%s)
    echo "[gpu_bench] $name (limit ${limit} s)" | tee -a "$LOG"
    timeout "$limit" "$@" >>"$LOG" 2>&1
    rc=$?
    echo "[gpu_bench] $name: exit $rc after $(( $(date +%s) - start )) s" | tee -a "$LOG"
    if [ -d "$WORK/$name" ]; then tar czf "$OUT/$name.tar.gz" -C "$WORK" "$name"; fi
}

{
    date -u +%FT%TZ
    $PY -c "import torch, platform; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'python', platform.python_version())"
    if [ "$DEVICE" != cpu ]; then nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || true; fi
    nproc
} >"$OUT/env.txt" 2>&1

# metagrad itself, offline (nothing can be fetched on the GPU machine).
$PY -m pip install -q --no-deps --no-index --no-build-isolation -e . >>"$LOG" 2>&1 \
    || echo "[gpu_bench] editable install failed" | tee -a "$LOG"
# Optional peers carried as wheels in .whl/ (pure Python ones only).
if ls .whl/*.whl >/dev/null 2>&1; then
    $PY -m pip install -q --no-index --no-deps --no-compile --ignore-requires-python --target /tmp/peers .whl/*.whl >>"$LOG" 2>&1 \
        && export PYTHONPATH=/tmp/peers${PYTHONPATH:+:$PYTHONPATH}
fi

step gpu_check 60 $PY -m metagrad_bench.gpu_check --device "$DEVICE" --out "$WORK/gpu_check" --no-speed
# metagrad eager, mg.compile with and without CUDA graphs, and JAX at matched precision
# (full float32 and TF32), with launch counts: the round-3 comparison, first.
step gpu_speed 300 $PY -m metagrad_bench.gpu_speed --device "$DEVICE" --repeats 15 --out "$WORK/gpu_speed"
if [ "$PEERS" = 1 ]; then
    step peers 160 $PY -m metagrad_bench.peers --device "$DEVICE" --repeats 5 --out "$WORK/peers"
fi
step hvp_modes 45 $PY -m metagrad_bench.hvp_modes --device "$DEVICE" --repeats 7 --out "$WORK/hvp_modes"
step sweep 110 $PY -m metagrad sweep --preset "$PRESET" --device "$DEVICE" --repeats 5 --out "$WORK/sweep"
echo "[gpu_bench] done" | tee -a "$LOG"
