"""Named model sizes. Builders stay size-agnostic; a preset only fills in a ``VLMConfig``.

* ``tiny``  — random-init CLIP (64 px, 4 layers) + random 2-layer Llama with the real SmolLM2 tokenizer:
  unit tests and smoke runs, seconds per step on a CPU.
* ``local`` — random-init CLIP (112 px, 49 patches, 8 layers, the TinyCLIP token count) + the real packaged
  SmolLM2-135M-Instruct: the study scaled down to run on a laptop CPU with no hub access. Its projector
  standardises the encoder's features (``feature_norm="standardize"``): a random-init encoder's features differ
  too little between images for a projector to learn from them in a few hundred steps otherwise.
* ``local-long`` — the ``local`` models; the sweep runs 24 steps of batch 8 per epoch instead of 1 of batch 2, and
  ``vlm-sweep run`` one lineage instead of the whole grid (36 min here; see README for what it shows).
* ``paper`` — TinyCLIP-ViT-40M-32 + Llama-3.2-1B-Instruct (hub ids or local folders), as in the study.
* ``paper-shaped`` / ``paper-shaped-2l`` — ``paper``'s architectures from their published configs with random
  weights (``vlm_core.paper_shaped``), the LLM at its 16 layers / cut to 2 (widths, vocabulary, special ids and
  chat template kept): the real shapes with no hub access. Resolved lazily: the folders are materialized into
  the asset cache (once) when the preset is asked for, never at import.

    python -c "from vlm_core.presets import get_preset; print(get_preset('local').to_json())"
"""

from __future__ import annotations

import copy
from typing import Callable

from .config import ConfigError, FormatConfig, LMConfig, ProjectorConfig, VisionConfig, VLMConfig
from .hub import LLAMA32_1B, PINNED_REVISIONS, TINYCLIP

_PRESETS: dict[str, VLMConfig] = {
    "tiny": VLMConfig(
        vision=VisionConfig(source="tiny", image_size=64, patch_size=16, hidden_size=64, num_layers=4, num_heads=4),
        projector=ProjectorConfig(name="mlp2x_gelu"),
        lm=LMConfig(source="tiny", hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128),
        format=FormatConfig(mode="chat", max_length=256)),
    "local": VLMConfig(
        vision=VisionConfig(source="tiny", image_size=112, patch_size=16, hidden_size=128, num_layers=8,
                            num_heads=4),
        projector=ProjectorConfig(name="mlp2x_gelu", feature_norm="standardize"),
        lm=LMConfig(source="smollm2"),
        format=FormatConfig(mode="chat", max_length=384)),
    "paper": VLMConfig(
        vision=VisionConfig(source=TINYCLIP, revision=PINNED_REVISIONS[TINYCLIP]),
        projector=ProjectorConfig(name="mlp2x_gelu"),
        lm=LMConfig(source=LLAMA32_1B, revision=PINNED_REVISIONS[LLAMA32_1B]),
        # 768 = the smallest multiple of 256 >= 1.5 x the p99 (460 tokens, chat) of ShareGPT4V-shaped captions
        # under this preset's formatter (`python bench/token_lengths.py`: p50 290, max 478 of 4,000 rows); the 1.5
        # leaves room for the real file's tail beyond the fixture's 300 words. Batches pad to their own longest.
        format=FormatConfig(mode="chat", max_length=768)),
}


_PRESETS["local-long"] = copy.deepcopy(_PRESETS["local"])  # same models; the sweep's Scale differs


def _paper_shaped(lm_layers: int | None) -> Callable[[], VLMConfig]:
    def build() -> VLMConfig:
        from .paper_shaped import paper_shaped_config

        return paper_shaped_config(lm_layers=lm_layers)
    return build


_LAZY_PRESETS: dict[str, Callable[[], VLMConfig]] = {
    "paper-shaped": _paper_shaped(None),  # Llama-3.2-1B's 16 layers (2.5 GB of bf16 weights in the cache)
    "paper-shaped-2l": _paper_shaped(2),  # 2 LLM layers: the paper's widths on a CPU
}
"""Presets whose config needs files written first (materialized on the first ``get_preset`` call, not at import)."""


def available_presets() -> list[str]:
    return sorted([*_PRESETS, *_LAZY_PRESETS])


def get_preset(name: str) -> VLMConfig:
    if name in _LAZY_PRESETS:
        return _LAZY_PRESETS[name]()
    if name not in _PRESETS:
        raise ConfigError(f"preset: unknown preset {name!r}; choose one of {available_presets()}")
    return copy.deepcopy(_PRESETS[name])
