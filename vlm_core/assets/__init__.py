"""Where weights come from.

``hub`` (hub ids at pinned revisions, an assets folder, safetensors-only loading), ``packaged`` (models that
packages ship: SmolLM2's GGUF, MiniLM, the asset cache), ``convert`` (pickle → safetensors), ``download`` (a
preset's hub models into an assets folder), ``paper_shaped`` (the paper's models from their published configs in
``model_configs/``, with random weights).
"""

from __future__ import annotations

from .hub import LLAMA32_1B, MINILM, OPUS_MT_EN_ID, PINNED_REVISIONS, TINYCLIP, load_files, load_weights, resolve
from .packaged import cache_dir, minilm_path, smollm2_folder

__all__ = ["LLAMA32_1B", "MINILM", "OPUS_MT_EN_ID", "PINNED_REVISIONS", "TINYCLIP", "cache_dir", "load_files",
           "load_weights", "minilm_path", "resolve", "smollm2_folder"]
