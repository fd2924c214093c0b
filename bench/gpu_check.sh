#!/usr/bin/env bash
# The device check: bench/gpu_step.py on the GPU (full-depth paper-shaped VLM, all four profiles, then stage-1
# trials of a100-10g and a100-26g packed 2 and 4 to the card, each capped at its profile's memory), 9-minute cap,
# output under $OUT (gpu_step.json + gpu_step.log). Run from the repository root:  bash bench/gpu_check.sh
set -uo pipefail
OUT="${OUT:-runs/gpu_check}"; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/nvidia-smi.csv" 2>&1 || true
PYTHONPATH=. HF_HUB_OFFLINE=1 timeout 540 python bench/gpu_step.py --out "$OUT/gpu_step.json" --pack 2,4 --pack_timeout 150 "$@" 2>&1 | tee "$OUT/gpu_step.log"
exit "${PIPESTATUS[0]}"
