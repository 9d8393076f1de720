#!/usr/bin/env bash
# The GPU measurements of docs/benchmarks.md: bf16 matmul peak, then the ViT-B (`vitb`) fit() step
# on JAX and PyTorch. Run from the repository root with keras importable (python3 = the GPU python):
#   OUT=/tmp/out bash benchmarks/gpu_vitb.sh [batch] [extra runs: "f32"]
# Writes $OUT/results.jsonl (one JSON line per run, appended by train_step.py --output atomically, so a
# run killed by its timeout never leaves a cut line) and $OUT/log.txt (everything, profiles included).
set -u
BATCH=${1:-64}
EXTRA=${2:-}
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
L=$OUT/log.txt
R=$OUT/results.jsonl
B=benchmarks/train_step.py
run() {  # run TIMEOUT ARGS...: one benchmark process; its JSON line goes to $R, everything to $L
  local limit=$1; shift
  echo "=== $(date +%T) python3 $B $*" | tee -a "$L"
  timeout "$limit" python3 "$B" "$@" --output "$R" 2>&1 | tee -a "$L" | grep '^{'
}
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,power.limit,memory.total --format=csv | tee -a "$L"
python3 -c "import jax, torch, keras; print('jax', jax.__version__, jax.devices(), 'torch', torch.__version__, 'keras', keras.__version__)" 2>&1 | tail -1 | tee -a "$L"
run 90 --backend torch --measure-peak
run 90 --backend jax --measure-peak
PEAK=$(python3 -c "import json; print(max(json.loads(l)['peak_tflops'] for l in open('$R') if 'peak_tflops' in l and 'measure_peak' in l))")
echo "peak used for MFU: $PEAK TFLOP/s" | tee -a "$L"
run 240 --backend jax --config vitb --dtype bfloat16 --batch-size "$BATCH" --peak-tflops "$PEAK" --profile 5
run 150 --backend torch --config vitb --dtype bfloat16 --batch-size "$BATCH" --peak-tflops "$PEAK" --profile 3
if [ "$EXTRA" = f32 ]; then
  run 200 --backend jax --config vitb --dtype float32 --batch-size "$BATCH" --peak-tflops "$PEAK"
  run 150 --backend torch --config vitb --dtype float32 --batch-size "$BATCH" --peak-tflops "$PEAK"
fi
echo "=== $(date +%T) done" | tee -a "$L"
cat "$R"
