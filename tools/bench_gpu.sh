#!/usr/bin/env bash
# The GPU benchmark kit: one unattended run (< 5 min on one GPU) of every figure docs/BENCHMARKS.md asks a GPU
# node for; results as JSON and one Markdown report in an output folder.
#
#   bash tools/bench_gpu.sh [OUT]                      # OUT defaults to ./bench_gpu_out
#   BENCH_GPU_DEVICE=cpu BENCH_GPU_TINY=1 bash tools/bench_gpu.sh OUT   # CPU smoke test, tiny sizes (< 60 s)
#
# Steps (each under its own time cap, cut to what is left of BENCH_GPU_BUDGET_S, default 290 s; a failed or
# timed-out step is listed in OUT/errors.txt, the others still run, and the exit status is 1):
#   env        torch / CUDA / GPU names (env.json)
#   loader     training streams item / block / memory / device and the gather alternatives (loader.json)
#   simulate   the lensing simulator: whole images vs window rendering when sample_windows exists
#   train      train step fp32 (TF32) / bf16 / bf16+channels_last, G and GAN phase (train.json)
#   scaling    1 vs N GPUs, DDP over NCCL against N independent processes, when N > 1 GPUs (scaling.json)
#   upscale    hpc-sr upscale cutouts/s: per file, stack, HDF5 catalog, ONNX Runtime, I/O alone (upscale.json)
#   compile    bf16+channels_last with and without torch.compile, cold inductor cache (train_compile.json);
#              last, as the step most likely to run long
#   report     OUT/REPORT.md (tables of all of the above) and OUT/summary.json, by tools/bench_report.py
# Environment: PYTHON (default: python), BENCH_GPU_DEVICE (cuda | cpu), BENCH_GPU_TINY (1: tiny sizes),
# BENCH_GPU_BUDGET_S (total seconds), BENCH_GPU_GPUS (GPUs for the scaling step; default: all visible).
set -u -o pipefail

OUT=${1:-./bench_gpu_out}
DEVICE=${BENCH_GPU_DEVICE:-cuda}
TINY=${BENCH_GPU_TINY:-0}
PY=${PYTHON:-python}
BUDGET=${BENCH_GPU_BUDGET_S:-290}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
export HDF5_USE_FILE_LOCKING=FALSE
if [ "$DEVICE" = cpu ]; then
    export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} DS_ACCELERATOR=cpu
else
    export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}
fi
command -v timeout > /dev/null || { echo "bench_gpu.sh needs coreutils timeout" >&2; exit 2; }
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
: > "$OUT/errors.txt"
START=$(date +%s)
cd "$REPO" || exit 2

left() { echo $(( BUDGET - ($(date +%s) - START) )); }

# run_step NAME CAP_S CMD...: stdout -> NAME.log (its last line, the bench's JSON, -> NAME.json), stderr -> NAME.err
run_step() {
    local name=$1 cap=$2; shift 2
    local budget; budget=$(left)
    if [ "$budget" -lt 10 ]; then
        echo "$name: skipped (time budget spent)" | tee -a "$OUT/errors.txt"
        return 0
    fi
    [ "$cap" -gt "$budget" ] && cap=$budget
    echo "[$(( $(date +%s) - START )) s] $name (cap ${cap} s)"
    timeout --kill-after=10 "$cap" "$@" > "$OUT/$name.log" 2> "$OUT/$name.err"
    local rc=$?
    if [ $rc -ne 0 ]; then
        echo "$name: exit $rc$( [ $rc -eq 124 ] && echo ' (timed out)'): $(tail -n 3 "$OUT/$name.err" | tr '\n' ' ')" \
            | tee -a "$OUT/errors.txt"
        return 0
    fi
    tail -n 1 "$OUT/$name.log" > "$OUT/$name.json"
}

# ---------------------------------------------------------------------------------------------------- env
"$PY" - "$DEVICE" > "$OUT/env.json" <<'EOF' || echo "env: failed" >> "$OUT/errors.txt"
import json, os, platform, sys
import torch
from hpc_sr.data.lensing import LensingSimulator
dev = sys.argv[1]
info = {"bench": "env", "device": dev, "torch": torch.__version__, "python": platform.python_version(),
        "host": platform.node(), "cpus": os.cpu_count(), "cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(), "gpus": torch.cuda.device_count(),
        "gpu_names": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "nccl": ".".join(map(str, torch.cuda.nccl.version())) if torch.cuda.is_available() else None,
        "bf16_supported": torch.cuda.is_bf16_supported() if torch.cuda.is_available() else None,
        "sample_windows": hasattr(LensingSimulator, "sample_windows")}
if dev == "cuda" and not torch.cuda.is_available():
    raise SystemExit("BENCH_GPU_DEVICE=cuda but torch sees no CUDA device")
print(json.dumps(info))
EOF
if ! "$PY" -c "import json,sys; json.load(open(sys.argv[1]))" "$OUT/env.json" 2>/dev/null; then
    echo "env: no usable torch/CUDA set-up; nothing else can run" | tee -a "$OUT/errors.txt"
    exit 1
fi
GPUS=$("$PY" -c "import json,sys; print(json.load(open(sys.argv[1]))['gpus'])" "$OUT/env.json")
[ "$DEVICE" = cpu ] && GPUS=1
GPUS=${BENCH_GPU_GPUS:-$GPUS}
WINDOWS=$("$PY" -c "import json,sys; print(int(json.load(open(sys.argv[1]))['sample_windows']))" "$OUT/env.json")

# ---------------------------------------------------------------------------------------------------- sizes
if [ "$TINY" = 1 ]; then
    LOADER=(--num 64 --hr-size 32 --patch 8 --batches 8 --rounds 1 --window 0.05 --shard-size 32)
    SIM=(--num 8 --batch 8 --hr-size 32 --lenstronomy-num 0 --window-batch 4 --rounds 1 --round-s 0.05
         --peak-check 0)
    SIM_WINDOW=16
    TRAIN=(--g-options '{"channels": 4, "blocks": 1}' --d-options '{"channels": 4, "blocks": 1}' --batch 4
           --patch 8 --hr-size 32 --variants fp32,bf16 --rounds 1 --window 0.05 --warmup 1 --sim-steps 1)
    COMPILE=()  # torch.compile on CPU at tiny sizes still takes minutes: not in the smoke test
    SCALING=(--g-options '{"channels": 4, "blocks": 1}' --d-options '{"channels": 4, "blocks": 1}' --batch 4
             --patch 8 --hr-size 32 --repeats 1 --steps 1 --windows 1 --warmup 1 --probe-matmuls 5)
    CAPS=(60 60 60 60 0)
    UPSCALE=(--num 8 --side 16 --batches 4 --rounds 1 --window 0.01 --proc-rounds 0)
else
    LOADER=(--num 4000 --batches 64,256 --rounds 3 --window 0.2)
    SIM=(--num 2048 --batch 256 --lenstronomy-num 0 --window-batch 256 --rounds 5 --round-s 0.3 --peak-check 512)
    SIM_WINDOW=48
    TRAIN=(--full --batch 16 --variants fp32,bf16,bf16+cl --rounds 5 --window 0.5 --warmup 3 --sim-steps 5)
    COMPILE=(--full --batch 16 --variants bf16+cl,bf16+cl+compile --rounds 3 --window 0.5 --warmup 2 --sim-steps 0
             --cold-compile)
    SCALING=(--full --batch 16 --repeats 1 --steps 10 --windows 2 --warmup 3 --probe-matmuls 200 --profile-steps 5)
    CAPS=(45 30 50 60 110)
    UPSCALE=(--num 2048 --batches 64,256 --batch-size 256 --rounds 3 --window 0.5 --proc-rounds 1)
fi
[ "$WINDOWS" = 1 ] || SIM_WINDOW=0

# ---------------------------------------------------------------------------------------------------- steps
run_step loader "${CAPS[0]}" "$PY" tools/bench_loader.py --device "$DEVICE" "${LOADER[@]}"
run_step simulate "${CAPS[1]}" "$PY" tools/bench_simulate.py --device "$DEVICE" --window "$SIM_WINDOW" "${SIM[@]}"
run_step train "${CAPS[2]}" "$PY" tools/bench_train.py --device "$DEVICE" --backends ddp "${TRAIN[@]}"
if [ "$GPUS" -gt 1 ]; then
    run_step scaling "${CAPS[3]}" "$PY" tools/bench_scaling.py --device "$DEVICE" --ranks "1,$GPUS" "${SCALING[@]}"
else
    echo "scaling: skipped (one device; 1-vs-N DDP needs N > 1 GPUs)" >> "$OUT/notes.txt"
fi
run_step upscale 45 "$PY" tools/bench_upscale.py --device "$DEVICE" "${UPSCALE[@]}"
if [ ${#COMPILE[@]} -gt 0 ]; then
    run_step train_compile "${CAPS[4]}" "$PY" tools/bench_train.py --device "$DEVICE" --backends ddp "${COMPILE[@]}"
else
    echo "compile: skipped (tiny CPU smoke run)" >> "$OUT/notes.txt"
fi

# ---------------------------------------------------------------------------------------------------- report
"$PY" tools/bench_report.py "$OUT" || echo "report: failed" | tee -a "$OUT/errors.txt"
echo "[$(( $(date +%s) - START )) s] done: $OUT/REPORT.md"
if [ -s "$OUT/errors.txt" ]; then
    echo "errors:"; cat "$OUT/errors.txt"
    exit 1
fi
exit 0
