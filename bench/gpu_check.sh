#!/usr/bin/env bash
# The device check, two runs under one 9-minute budget, output under $OUT. Run from the repository root:
#   bash bench/gpu_check.sh
# 1. bench/gpu_step.py on the GPU: full-depth paper-shaped VLM, all four profiles (5 min cap) -> gpu_step.json/.log
# 2. fractional packing: stage-1 trials of a100-10g and a100-26g alone, then 2 and 4 sharing the card, each capped at
#    its profile's memory (4 min cap) -> pack.json/.log
set -uo pipefail
OUT="${OUT:-runs/gpu_check}"; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/nvidia-smi.csv" 2>&1 || true
export PYTHONPATH=. HF_HUB_OFFLINE=1
timeout 300 python bench/gpu_step.py --out "$OUT/gpu_step.json" "$@" 2>&1 | tee "$OUT/gpu_step.log"
first=${PIPESTATUS[0]}
timeout 230 python bench/gpu_step.py --pack 2,4 --pack_only --pack_timeout 70 --matmul_size 4096 \
  --out "$OUT/pack.json" 2>&1 | tee "$OUT/pack.log"
second=${PIPESTATUS[0]}
exit $(( first != 0 ? first : second ))
