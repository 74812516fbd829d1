#!/usr/bin/env bash
# Everything only a GPU can show, in one call (for the lent H100/H200 machine):
#   1. build the extension with CUDA and run the whole test suite on CUDA;
#   2. run every benchmark and save the results with device and date to
#      benchmarks/results/ (and $OUT when set, so they come back);
#   3. continue the committed meta-training runs (direct_x2, then bicubic_x2) on the GPU
#      for the time left; the run folders come back under $OUT.
# Usage: bash scripts/gpu_session.sh [total minutes, default 9]
# The device machine has python3 with a CUDA torch and no network: nothing is installed.
set -uo pipefail
cd "$(dirname "$0")/.."
budget_s=$(( ${1:-9} * 60 ))
start=$(date +%s)
left() { echo $(( budget_s - ($(date +%s) - start) )); }
out=${OUT:-benchmarks/results}
mkdir -p "$out" benchmarks/results
stamp="$(date -u +%Y-%m-%d)"
device=$(python3 -c "import torch; print(torch.cuda.get_device_name(0).replace(' ', '-'))" 2>/dev/null || echo cpu)
export PYTHONUNBUFFERED=1 MAX_JOBS=16 TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}"

echo "== build ($device)"
MZSR_FAST_CUDA=1 python3 -m pip install -q --no-build-isolation --no-deps -e . 2>&1 | tail -3
python3 -m mzsr_fast info | tee "$out/info-$device-$stamp.json"

echo "== tests on CUDA"
timeout $(( $(left) / 3 )) python3 -m pytest -q -x tests 2>&1 | tee "$out/tests-$device-$stamp.log" | tail -15

echo "== benchmarks"
timeout $(( $(left) / 2 )) python3 -m pytest benchmarks --benchmark-only -q -s \
  --benchmark-json="benchmarks/results/$device-$stamp.json" 2>&1 | tee "$out/bench-$device-$stamp.log" | tail -40
cp "benchmarks/results/$device-$stamp.json" "$out/" 2>/dev/null

echo "== training for the time left: continue the committed meta-training runs on the GPU"
data=$( [ -d shared/data/train ] && echo shared/data/train || echo ../shared/data/train )
# name, share of the time left (%): the default model first
for run in "direct_x2 60" "bicubic_x2 100"; do
  set -- $run
  train_s=$(( ($(left) - 30) * $2 / 100 ))
  if [ "$train_s" -gt 60 ] && [ -d "$data" ]; then
    timeout --signal=TERM "$train_s" python3 -m mzsr_fast.cli metatrain "$data" --variant "$1" \
      --init training/pretrain_x2/latest.safetensors --out "training/metatrain_$1" --iterations 100000 \
      --order 1 --patch-size 48 --meta-batch 4 --task-batch 8 --inner-steps 5 --checkpoint-every 20 --keep 2 \
      --log-every 5 --no-progress --seed 0 --resume --device cuda --allow-config-change 2>&1 | tail -5
    mkdir -p "$out/metatrain_$1"
    cp -r "training/metatrain_$1/." "$out/metatrain_$1/" 2>/dev/null
  fi
done
echo "== done in $(( $(date +%s) - start )) s"
