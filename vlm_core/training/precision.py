"""Numeric precision of a run: bf16 autocast of the forward pass (on CUDA by default), the dtype the frozen modules'
weights are held in (frozen weights need no fp32 master copy), and activation checkpointing of the LLM.
"""

from __future__ import annotations

import logging
from contextlib import nullcontext

import torch

from ..config import TrainConfig
from .stages import MODULES, TRAINABLE_BY_STAGE

log = logging.getLogger(__name__)


def uses_bf16_autocast(cfg: TrainConfig, device: torch.device) -> bool:
    """Whether ``cfg.mixed_precision`` turns bf16 autocast on for ``device``."""
    return cfg.mixed_precision == "bf16" or (cfg.mixed_precision == "auto" and device.type == "cuda")


def autocast(cfg: TrainConfig, device: torch.device):
    """The forward pass's autocast context for ``cfg`` on ``device`` (bf16, or none)."""
    return torch.autocast(device.type, dtype=torch.bfloat16) if uses_bf16_autocast(cfg, device) else nullcontext()


def frozen_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype:
    """``cfg.frozen_dtype`` resolved: ``auto`` is bf16 on CUDA under bf16 autocast, fp32 otherwise."""
    if cfg.frozen_dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" and uses_bf16_autocast(cfg, device) else torch.float32
    return torch.bfloat16 if cfg.frozen_dtype == "bf16" else torch.float32


def cast_frozen_modules(model, cfg: TrainConfig, device: torch.device) -> dict[str, str]:
    """Hold the weights of the modules ``cfg.stage`` freezes (the encoder; the LLM in stage 1) in
    :func:`frozen_dtype`: they get no gradients and no optimizer state, so they need no fp32 master copy (stage 1's
    frozen Llama-3.2-1B: 4.9 GB in fp32, 2.5 GB in bf16). Trainable modules keep their fp32 weights.
    Returns ``{module: dtype}``."""
    dtype = frozen_dtype(cfg, device)
    dtypes = {}
    for name in MODULES:
        module = getattr(model, name)
        if name not in TRAINABLE_BY_STAGE[cfg.stage] and dtype != torch.float32:
            module.to(dtype)
        dtypes[name] = str(next(module.parameters()).dtype).removeprefix("torch.")
    if dtype != torch.float32:
        log.info("frozen modules held in %s: %s", dtype, dtypes)
    return dtypes


def enable_gradient_checkpointing(lm) -> None:
    """Non-reentrant activation checkpointing of the LLM's layers (works with a frozen LLM whose inputs need
    gradients). transformers >= 5.2x names it ``activation_checkpointing_enable``, earlier ones
    ``gradient_checkpointing_enable``."""
    kwargs = {"use_reentrant": False}
    if hasattr(lm, "activation_checkpointing_enable"):
        lm.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
