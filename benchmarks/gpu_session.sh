#!/usr/bin/env bash
# The GPU measurements of issues 13, 9 and 10 in one call of a lent GPU machine (benchmarks/RESULTS.md).
#
# Usage: benchmarks/gpu_session.sh DONE_RUN CIRCUIT_RUN LOG_DIR
#   DONE_RUN     a finished `cimcosim run` folder of the quick preset (its train/ and chips/ are what is read)
#   CIRCUIT_RUN  a run folder stopped after `--until chips`: the network stages are run here with --device cuda
#   LOG_DIR      where each step's log goes
# Environment: PY (the Python that has torch with CUDA; default python3), CIMCOSIM_FASHION_MNIST (the folder of
# the Fashion-MNIST idx files where Debian's package is not installed); for a dry run on a CPU, DEVICE=cpu with
# small BATCH1 / BATCH2 / RUNS. Each step has its own time limit and a failed step does not stop the next one.
set -u
DONE_RUN=$(realpath "$1"); CIRCUIT_RUN=$(realpath "$2"); LOG=$(realpath "$3")
PY=${PY:-python3}
DEV=${DEVICE:-cuda}; B1=${BATCH1:-64}; B2=${BATCH2:-256}; RUNS=${RUNS:-3}
export PYTHONUNBUFFERED=1
mkdir -p "$LOG"
cd "$(dirname "$0")"

step() {  # step NAME SECONDS COMMAND...
    local name=$1 limit=$2; shift 2
    echo "=== $name (limit ${limit} s) $(date +%T)"
    local t0=$SECONDS
    timeout "$limit" "$@" > "$LOG/$name.log" 2>&1
    local rc=$?
    echo "=== $name rc=$rc in $((SECONDS - t0)) s"
    grep -E "^(RESULT|machine|host syncs|peak|work bound|fused /| *[a-z_]+: median|bound |.*done in)" "$LOG/$name.log"
    [ "$rc" = 0 ] || tail -n 3 "$LOG/$name.log"
}

[ "$DEV" = cuda ] && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
"$PY" -c "import torch, numba; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'numba', numba.__version__)"

# Issue 13: the engine on the GPU (batch 64 and 256), its host syncs, and a GPU-sized chunk.
step engine_b64 100 "$PY" bench_engine.py --device "$DEV" --batch "$B1" --runs "$RUNS" --sync-check
step engine_b256 100 "$PY" bench_engine.py --device "$DEV" --batch "$B2" --runs "$RUNS"
step engine_b256_chunk26 60 "$PY" bench_engine.py --device "$DEV" --batch "$B2" --runs "$RUNS" --chunk-elements 67108864
step torch_path 90 "$PY" bench_torch_path.py --device "$DEV" --batch "$B1" --runs "$RUNS"
# Issue 9: chip-in-the-loop costs (C&W L2 iteration on 100 images, finetune step) on the GPU.
step chip_loop 60 "$PY" bench_chip_loop.py --run-dir "$DONE_RUN" --tag vgg8_fmnist --adc sar --wl 4 --device "$DEV" --runs "$RUNS"
# Issue 10: one BFA iteration against its bound on the GPU.
step bfa 35 "$PY" bench_bfa.py --run-dir "$DONE_RUN" --tag vgg8_fmnist --device "$DEV" --runs "$RUNS"
step bfa_noisy_psq 35 "$PY" bench_bfa.py --run-dir "$DONE_RUN" --tag sn_b4_n0.5_1bit_std --device "$DEV" --runs "$RUNS"
# The network stages of the quick preset on the GPU (wall time per stage in the manifest).
cd ..
step pipeline_cuda 110 "$PY" -m pipeline.cli run --run-dir "$CIRCUIT_RUN" --device "$DEV"
cp "$CIRCUIT_RUN/manifest.json" "$LOG/manifest_cuda.json" 2>/dev/null
echo "=== end $(date +%T)"
