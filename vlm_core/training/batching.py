"""Which samples form each micro-batch, and how a batch reaches the model.

An epoch's order is a pure function of (seed, epoch), so a resumed run sees the same batches; ``group_by_length``
(LLaVA's ``group_by_modality_length``) sorts mega-batches of 50 batches by length. ``plan_steps`` sizes the run (and
its LR schedule) from the data, the batch, accumulation and the caps.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..config import TrainConfig


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The sample order of an epoch: a pure function of (seed, epoch), so a resumed run sees the same batches."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g).tolist()


MEGABATCH = 50
"""``group_by_length``: batches per length-sorted mega-batch (transformers' LengthGroupedSampler uses 50)."""


def epoch_batches(lengths: list[int], batch_size: int, seed: int, epoch: int,
                  group_by_length: bool = False) -> list[list[int]]:
    """The micro-batches of an epoch (sample indices): a pure function of its arguments, so a resumed run sees the
    same batches. Grouped by length on request (``TrainConfig.group_by_length``)."""
    order = epoch_order(len(lengths), seed, epoch)
    if not group_by_length:
        return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    mega = batch_size * MEGABATCH
    batches = []
    for start in range(0, len(order), mega):
        chunk = sorted(order[start:start + mega], key=lambda i: -lengths[i])
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    longest = max(range(len(batches)), key=lambda b: lengths[batches[b][0]])
    rest = [b for k, b in enumerate(batches) if k != longest]
    perm = torch.randperm(len(rest), generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch + 1)).tolist()
    return [batches[longest]] + [rest[k] for k in perm]


def plan_steps(n_samples: int, cfg: TrainConfig) -> tuple[int, int]:
    """(optimizer steps per epoch, total optimizer steps)."""
    micro = math.ceil(n_samples / cfg.batch_size)
    per_epoch = math.ceil(micro / cfg.grad_accum)
    if cfg.max_steps_per_epoch:
        per_epoch = min(per_epoch, cfg.max_steps_per_epoch)
    total = per_epoch * cfg.epochs
    return per_epoch, min(total, cfg.max_steps) if cfg.max_steps else total


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """A collated batch with its tensors on ``device``."""
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def forward(model, batch: dict[str, Any]):
    """The VLM's forward on a collated batch (pixels, or the feature cache's features when the batch has them)."""
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"],
                 pixel_values=batch.get("pixel_values"), image_features=batch.get("image_features"))
