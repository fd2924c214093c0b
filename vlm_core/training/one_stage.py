"""One stage of one config, end to end: build the model, load data, train, write the final checkpoint.

This is what a Ray Train worker calls and what ``vlm-sweep train`` runs in-process. The resolved configs are
written into the run folder first (``run_config.json``) so that every run says exactly what it was.

    vlm-sweep train --preset tiny --data corpus/sharegpt4v_sample.jsonl --images corpus/images \
        --train.max-steps 4 --out runs/smoke
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from ..base.devices import pick_device
from ..config import TrainConfig, VLMConfig
from ..data.dataset import ConversationDataset, read_records, split_records
from ..data.feature_cache import FeatureCache, model_cache_key
from ..model.vlm import VisionLanguageModel
from .checkpoint import export_weights
from .faults import Faults
from .loop import StepLog, TrainResult, train

log = logging.getLogger(__name__)


@dataclass
class DataSpec:
    """Where a run's data comes from."""

    train: str
    """ShareGPT4V records (.json / .jsonl / .parquet) used for training."""
    images: str
    """Folder the records' ``image`` paths are relative to."""
    val: str | None = None
    """Separate validation records; when unset, ``val_fraction`` of ``train`` is held out by id hash."""
    val_fraction: float = 0.1
    """Held-out fraction when ``val`` is unset."""
    features: str | None = None
    """A feature cache folder (``vlm_core.data.feature_cache``) holding the frozen encoder's output for these images:
    read instead of running the encoder. Refused unless its key matches the model and its images are unchanged."""


def load_datasets(model: VisionLanguageModel, data: DataSpec, seed: int = 0):
    records = read_records(data.train)
    if data.val:
        train_records, val_records = records, read_records(data.val)
    else:
        train_records, val_records = split_records(records, data.val_fraction, seed)
    features = None
    if data.features:
        features = FeatureCache.open(data.features, model_cache_key(model))
        n = features.verify([r["image"] for r in train_records + val_records if isinstance(r, dict) and
                             isinstance(r.get("image"), str)], data.images)
        log.info("features: %d images read from the cache %s (the encoder does not run)", n, data.features)

    def make(recs):
        return ConversationDataset(recs, model.formatter, model.vision.preprocess, data.images, features=features)

    return make(train_records), make(val_records)


def run_stage(model_cfg: VLMConfig, train_cfg: TrainConfig, data: DataSpec, out: str | Path, *,
              resume_from: str | Path | None = None, on_step: Callable[[StepLog], None] | None = None,
              on_epoch: Callable[[dict[str, Any], Path | None], None] | None = None,
              write_final: bool = True, faults: Faults | None = None,
              device: torch.device | None = None) -> tuple[TrainResult, Path | None]:
    """Train one stage; returns the result and ``out/final`` (the last checkpoint's weights, no optimizer),
    or None with ``write_final=False`` (Ray Train keeps its own reported checkpoints). ``device``: where this process
    trains (default :func:`vlm_core.base.devices.pick_device`; a Ray Train worker passes the GPU Ray gave it). In a
    ``torch.distributed`` group every rank calls this and they train one model together (see ``training.train``)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "run_config.json").write_text(json.dumps(
        {"model": model_cfg.to_dict(), "train": train_cfg.to_dict(), "data": data.__dict__}, indent=2))
    model = VisionLanguageModel.build(model_cfg)  # train() moves it to the device (sharded first under fsdp)
    train_set, val_set = load_datasets(model, data, train_cfg.seed)
    log.info("data: %d train / %d val samples (%d skipped)", len(train_set), len(val_set),
             sum(train_set.skipped.values()) + sum(val_set.skipped.values()))
    result = train(model, train_cfg, train_set, val_set, out, resume_from=resume_from, on_step=on_step,
                   on_epoch=on_epoch, faults=faults, device=device or pick_device())
    return result, export_weights(result.checkpoint, out / "final") if write_final else None
