"""LoRA in stage 2 (``train.lm_tuning: lora``), through peft: low-rank adapters on the LLM's linear layers
(``train.lora``), the base LLM frozen. A checkpoint holds the projector and the adapters only
(``lm_adapter/adapter_model.safetensors`` + ``adapter_config.json``); loading one rebuilds the base LLM from the
config and puts the adapters back on it; LLaVA export merges them into the LLM's weights.
"""

from __future__ import annotations

import logging
from pathlib import Path

from safetensors.torch import load_file

from ..base.errors import CheckpointError
from ..config import LoraSpec

log = logging.getLogger(__name__)

ADAPTER_DIR = "lm_adapter"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


def is_lora(lm) -> bool:
    """Whether ``lm`` carries peft adapters (a ``PeftModel``)."""
    from peft import PeftModel

    return isinstance(lm, PeftModel)


def add_adapters(model, spec: LoraSpec, seed: int = 0) -> dict[str, int]:
    """Wrap ``model.lm`` with fresh LoRA adapters (A drawn from ``seed``, so every run of a config starts from the
    same adapters; B = 0, so the model's outputs are unchanged until it trains); returns ``{trainable, total}``
    parameter counts of the LLM."""
    import torch
    from peft import LoraConfig, get_peft_model

    if is_lora(model.lm):
        raise ValueError("the LLM already carries adapters")
    config = LoraConfig(r=spec.rank, lora_alpha=spec.alpha, lora_dropout=spec.dropout,
                        target_modules=list(spec.target_modules), bias="none", task_type="CAUSAL_LM")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model.lm = get_peft_model(model.lm, config)
    trainable, total = model.lm.get_nb_trainable_parameters()
    log.info("LoRA r=%d alpha=%d on %s: %s of the LLM's %s parameters trainable (%.2f%%)", spec.rank, spec.alpha,
             ",".join(spec.target_modules), f"{trainable:,}", f"{total:,}", 100 * trainable / max(total, 1))
    return {"trainable": trainable, "total": total}


def save_adapters(model, folder: Path) -> None:
    """The adapters alone (safetensors + their peft config), not the base LLM."""
    model.lm.save_pretrained(folder, safe_serialization=True)


def load_adapters(model, folder: str | Path, trainable: bool = False) -> None:
    """Put a checkpoint's adapters on ``model.lm``: wrap a plain LLM (``peft.PeftModel.from_pretrained``), or load
    the weights into one that already carries adapters of the same shape (resuming)."""
    from peft import PeftModel, set_peft_model_state_dict

    folder = Path(folder)
    if not (folder / ADAPTER_WEIGHTS).is_file():
        raise CheckpointError(f"{folder}: no {ADAPTER_WEIGHTS}; not a LoRA checkpoint")
    if is_lora(model.lm):
        result = set_peft_model_state_dict(model.lm, load_file(folder / ADAPTER_WEIGHTS))
        if result.unexpected_keys:
            raise CheckpointError(f"{folder}: adapter weights do not fit (unexpected {result.unexpected_keys[:5]})")
        return
    model.lm = PeftModel.from_pretrained(model.lm, folder, is_trainable=trainable)


def merged_lm(model):
    """The LLM with its adapters merged into its weights (a plain transformers model), for export; ``model``'s own
    LLM is left as it is."""
    import copy

    return copy.deepcopy(model.lm).merge_and_unload() if is_lora(model.lm) else model.lm
