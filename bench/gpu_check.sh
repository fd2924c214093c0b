#!/usr/bin/env bash
# The device check: bench/gpu_step.py on the GPU (full-depth paper-shaped VLM, all four profiles), 9-minute cap,
# output under $OUT (gpu_step.json + gpu_step.log). Run from the repository root:  bash bench/gpu_check.sh
set -uo pipefail
OUT="${OUT:-runs/gpu_check}"; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/nvidia-smi.csv" 2>&1 || true
PYTHONPATH=. HF_HUB_OFFLINE=1 timeout 540 python bench/gpu_step.py --out "$OUT/gpu_step.json" "$@" 2>&1 | tee "$OUT/gpu_step.log"
exit "${PIPESTATUS[0]}"
