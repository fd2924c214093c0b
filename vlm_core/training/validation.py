"""The held-out loss: token-weighted assistant-token loss over collated batches, in eval mode and the run's
precision. One function for validation during training and for ``vlm-sweep eval`` (whose text-only controls swap
each batch's image features); in a data-parallel run each rank scores its share and the sums are reduced.
"""

from __future__ import annotations

import torch

from ..config import TrainConfig
from ..data.dataset import Collator, ConversationDataset
from . import sharding
from .batching import forward, to_device
from .distributed import World, all_sum, shard
from .precision import autocast


def loss_batches(model, dataset: ConversationDataset, batch_size: int, limit: int | None = None,
                 world: World = World()) -> list[dict]:
    """The first ``limit`` samples of ``dataset`` (all when None) — this rank's share of them in a data-parallel
    run — collated into batches of ``batch_size``."""
    n = len(dataset) if limit is None else min(len(dataset), limit)
    mine = shard(range(n), world)
    collate = Collator(model.tokenizer.pad_token_id)
    return [collate([dataset[i] for i in mine[start:start + batch_size]]) for start in range(0, len(mine), batch_size)]


@torch.no_grad()
def summed_loss(model, batches: list[dict], cfg: TrainConfig | None = None,
                image_features: list[torch.Tensor] | None = None) -> tuple[float, int]:
    """(sum of the assistant-token losses, number of those tokens) over collated ``batches``, in eval mode and the
    run's precision; ``image_features`` (one tensor per batch) replaces each batch's own image input (the
    evaluation's text-only controls). The one held-out loss: validation during training and ``vlm-sweep eval``."""
    device = model.device
    was_training = model.training
    model.eval()
    total, tokens = 0.0, 0
    for i, batch in enumerate(batches):
        batch = to_device(batch, device)
        if image_features is not None:
            batch = {**batch, "pixel_values": None, "image_features": image_features[i].to(device)}
        with autocast(cfg or TrainConfig(), device):
            out = forward(model, batch)
        total += out.loss_sum.item()
        tokens += out.num_tokens
    model.train(was_training)
    return total, tokens


def evaluate_loss(model, dataset: ConversationDataset, batch_size: int, cfg: TrainConfig | None = None,
                  world: World = World()) -> float:
    """Token-weighted mean loss over ``dataset`` (its first ``cfg.max_val_samples`` samples when set); in a
    data-parallel run each rank scores its share and the sums are reduced, so every rank gets the same value."""
    limit = None if cfg is None else cfg.max_val_samples
    batches = loss_batches(model, dataset, batch_size, limit, world)
    total, tokens = summed_loss(model, batches, cfg) if batches else (0.0, 0)
    if sharding.is_sharded(model):  # FSDP: every rank runs as many forwards as rank 0; these count nothing
        n = len(dataset) if limit is None else min(len(dataset), limit)
        extra = sharding.lockstep_batches(n, batch_size, world) - len(batches)
        summed_loss(model, loss_batches(model, dataset, 1, 1) * extra, cfg)
    total, tokens, samples = all_sum([total, tokens, sum(len(b["ids"]) for b in batches)], world)
    return total / max(tokens, 1) if samples else float("nan")
