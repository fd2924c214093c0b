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

    python -c "from vlm_core.presets import get_preset; print(get_preset('local').to_json())"
"""

from __future__ import annotations

import copy

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
        format=FormatConfig(mode="chat", max_length=512)),
}


_PRESETS["local-long"] = copy.deepcopy(_PRESETS["local"])  # same models; the sweep's Scale differs


def available_presets() -> list[str]:
    return sorted(_PRESETS)


def get_preset(name: str) -> VLMConfig:
    if name not in _PRESETS:
        raise ConfigError(f"preset: unknown preset {name!r}; choose one of {available_presets()}")
    return copy.deepcopy(_PRESETS[name])
