"""The paper-shaped VLM built in memory on any device, with no folders and no hub: the GPU benchmark's path
(``bench/gpu_step.py``). It needs only torch, transformers and tokenizers with ``tokenizer="bytes"``.
"""

from __future__ import annotations

import torch

from ..assets.paper_shaped import build_clip_vision, build_llama, build_llama3_tokenizer
from ..config import VLMConfig
from .language_model import PAD_CANDIDATES, resolve_image_token
from .projectors import build_projector
from .vision.encoder import VisionTower
from .vlm import VisionLanguageModel


def build_vlm_in_memory(paper: VLMConfig, lm_layers: int | None = None, seed: int = 0,
                        device: str | torch.device = "cpu", tokenizer="bytes", attn_implementation: str = "sdpa"):
    """The paper-shaped ``VisionLanguageModel`` of ``paper`` (the ``paper`` preset's config) built in memory on
    ``device`` (no folders: the GPU benchmark's path; needs only torch + transformers + tokenizers with
    ``tokenizer="bytes"``). Same modules as ``VisionLanguageModel.build(paper_shaped_config(...))``; the weights
    are equal for the same seed on the CPU (another device's RNG draws others). ``tokenizer``: a base name or a
    tokenizer from :func:`build_llama3_tokenizer` (reused across builds). The image processor is left out (pass
    pixel values)."""
    cfg = VLMConfig.from_dict(paper.to_dict())
    cfg.lm.attn_implementation = attn_implementation
    tok = build_llama3_tokenizer(tokenizer) if isinstance(tokenizer, str) else tokenizer
    tok.pad_token = next(c for c in PAD_CANDIDATES if c in tok.get_vocab())
    image_token, grew = resolve_image_token(tok, cfg.lm.image_token)
    assert not grew
    vision = VisionTower(build_clip_vision(seed, device=device), None, cfg.vision)
    lm = build_llama(lm_layers, seed, device, attn_implementation=attn_implementation)
    lm.config.pad_token_id = tok.pad_token_id
    projector = build_projector(cfg.projector, vision.geometry, lm.config.hidden_size).to(device)
    return VisionLanguageModel(cfg, vision, projector, lm, tok, image_token)
