"""What each training stage trains, in one explicit function.

``stage1``: the projector only (alignment). ``stage2``: projector + LLM (instruction tuning); with LoRA
(``train.lm_tuning: lora``) the LLM's adapters only, its base weights frozen. The vision encoder is frozen in every
stage.
"""

from __future__ import annotations

import logging

from torch import nn

from ..model.lora import is_lora

log = logging.getLogger(__name__)

TRAINABLE_BY_STAGE: dict[int, tuple[str, ...]] = {1: ("projector",), 2: ("projector", "lm")}
MODULES = ("vision", "projector", "lm")


def freeze_for_stage(model: nn.Module, stage: int) -> dict[str, dict[str, int]]:
    """Set ``requires_grad`` for ``stage`` and return/log ``{module: {trainable, total}}`` parameter counts."""
    if stage not in TRAINABLE_BY_STAGE:
        raise ValueError(f"stage {stage} is not one of {sorted(TRAINABLE_BY_STAGE)}")
    trainable = TRAINABLE_BY_STAGE[stage]
    counts = {}
    for name in MODULES:
        module = getattr(model, name)
        module.requires_grad_(name in trainable)
        if name == "lm" and name in trainable and is_lora(module):
            for pname, p in module.named_parameters():
                p.requires_grad_("lora_" in pname)  # the adapters; the base LLM stays frozen
        counts[name] = {"trainable": sum(p.numel() for p in module.parameters() if p.requires_grad),
                        "total": sum(p.numel() for p in module.parameters())}
        log.info("stage %d: %-9s %12s / %12s parameters trainable", stage, name,
                 f"{counts[name]['trainable']:,}", f"{counts[name]['total']:,}")
    return counts
