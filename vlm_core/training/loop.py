"""The single-run training loop: plain PyTorch, called in-process or from a Ray Train worker.

AdamW over the trainable parameters only (no optimizer state for frozen weights), linear/cosine schedule
with warmup spanning every epoch, gradient accumulation normalised by the trainable tokens of the whole
optimizer step, clipping, bf16 autocast on CUDA (the frozen modules' weights then held in bf16:
``TrainConfig.frozen_dtype``), optional gradient checkpointing, per-epoch validation loss, and exact
resumption: optimizer, scheduler, RNG and the position in the (seeded) data order are restored, so a resumed
run continues the same LR curve and the same batches.

Progress leaves through two callbacks: ``on_step(StepLog)`` after every optimizer step and
``on_epoch(metrics, checkpoint_dir)`` after every epoch (Ray Train workers forward the latter to
``ray.train.report``).

    vlm-sweep train --preset tiny --train.max-steps 4      # CPU smoke run through this loop
"""

from __future__ import annotations

import json
import logging
import math
import random
import shutil
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from ..base.errors import NonFiniteLoss
from ..config import TrainConfig
from ..data.dataset import Collator, ConversationDataset
from ..model.conversation import IGNORE_INDEX
from ..model.lora import add_adapters, is_lora
from . import sharding
from .batching import epoch_batches, forward, plan_steps, to_device
from .checkpoint import (
    keep_newest_and_best,
    load_lm_weights,
    load_projector,
    load_training_state,
    read_meta,
    save_checkpoint,
)
from .distributed import all_sum, any_rank, current_world, reduce_gradients, shard
from .faults import Faults
from .precision import autocast, cast_frozen_modules, enable_gradient_checkpointing, uses_bf16_autocast
from .schedules import build_scheduler
from .stages import freeze_for_stage
from .validation import evaluate_loss

log = logging.getLogger(__name__)


@dataclass
class StepLog:
    step: int
    epoch: int
    loss: float
    lr: float
    grad_norm: float
    tokens: int
    seconds: float


@dataclass
class TrainResult:
    steps: int
    epochs_completed: int
    total_steps: int
    epoch_metrics: list[dict[str, Any]] = field(default_factory=list)
    checkpoint: Path | None = None


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def prepare_for_stage(model, cfg: TrainConfig, device: torch.device | None = None) -> dict[str, dict[str, int]]:
    """What ``train`` does to the model before building its optimizer: freeze for the stage, hold the frozen
    modules in their dtype (for ``device``, where it will train: default where it is), checkpoint activations if
    asked. Returns ``freeze_for_stage``'s counts."""
    if cfg.stage == 2 and cfg.lm_tuning == "lora" and not is_lora(model.lm):
        add_adapters(model, cfg.lora, cfg.seed)
    counts = freeze_for_stage(model, cfg.stage)
    cast_frozen_modules(model, cfg, device or model.device)
    if cfg.gradient_checkpointing:
        enable_gradient_checkpointing(model.lm)
    return counts


def _prune_checkpoints(newest: Path) -> None:
    """Keep the newest epoch checkpoint and the best one by validation loss; drop the rest and ``latest``."""
    keep_newest_and_best(sorted(newest.parent.glob("epoch-*")), newest)
    shutil.rmtree(newest.parent / "latest", ignore_errors=True)


def fit_feature_norm(model, train_set: ConversationDataset, max_images: int = 128, batch_size: int = 32) -> int:
    """Measure the projector's feature statistics (``projector.feature_norm: standardize``) on the first
    ``max_images`` distinct training images, once: a no-op when they are already set (stage 2 inherits stage 1's,
    a resumed run its checkpoint's) or the projector uses none. Returns how many images were used."""
    norm = model.projector.feature_norm
    if norm.fitted:
        return 0
    first: dict[str, int] = {}
    for i, ex in enumerate(train_set.examples):
        first.setdefault(ex.image, i)
        if len(first) >= max_images:
            break
    idx = list(first.values())
    if len(idx) < 2:
        raise ValueError(f"projector.feature_norm=standardize needs at least 2 training images, got {len(idx)}")
    feats = []
    for k in range(0, len(idx), batch_size):
        items = [train_set[i] for i in idx[k:k + batch_size]]
        if "image_features" in items[0]:  # read from the feature cache
            feats.append(torch.stack([it["image_features"] for it in items]).float())
            continue
        pixels = torch.stack([it["pixel_values"] for it in items]).to(model.device)
        feats.append(model.image_features(pixels).float().cpu())  # bf16 when the encoder is held in bf16
    norm.fit(torch.cat(feats))
    log.info("projector.feature_norm: statistics measured on %d training images", len(idx))
    return len(idx)


@dataclass
class EpochTally:
    """What one epoch (or the part of it this run trains) adds up, for its report."""

    start: float
    loss: float = 0.0  # summed over trainable tokens
    tokens: int = 0  # trainable tokens
    seen_tokens: int = 0  # real (unpadded) tokens through the model
    seen_samples: int = 0
    padded_tokens: int = 0  # positions computed, padding included


class _Loop:
    """The optimizer, the LR schedule and the position (step, epoch, micro-batch) of one training run: restored
    from a checkpoint or seeded (:meth:`restore`), advanced one optimizer step at a time (:meth:`optimizer_step`),
    and closed per epoch with its metrics, validation and checkpoint (:meth:`end_epoch`)."""

    def __init__(self, model, cfg: TrainConfig, train_set: ConversationDataset, out_dir: Path,
                 faults: Faults | None):
        self.model, self.cfg, self.train_set, self.out_dir, self.faults = model, cfg, train_set, out_dir, faults
        self.device = model.device
        self.world = current_world()
        self.sharded = sharding.is_sharded(model)  # FSDP (training.sharding): ranks run every forward in lockstep
        self.params = [p for p in model.parameters() if p.requires_grad]
        # gradients FSDP does not reduce itself (all of them in a data-parallel run, none when sharded)
        self.replicated = [p for p in self.params if not hasattr(p, "full_tensor")]
        self.optimizer = torch.optim.AdamW(self.params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        steps_per_epoch, self.total_steps = plan_steps(len(train_set), cfg)
        self.micro_per_epoch = min(math.ceil(len(train_set) / cfg.batch_size), steps_per_epoch * cfg.grad_accum)
        self.scheduler = build_scheduler(cfg.scheduler, self.optimizer, self.total_steps, cfg.warmup_ratio)
        self.collate = Collator(model.tokenizer.pad_token_id)
        self.lengths = [len(ex.encoded.input_ids) for ex in train_set.examples]
        self.step, self.epoch, self.micro_done = 0, 0, 0  # micro_done: micro-batches of `epoch` consumed

    def restore(self, resume_from: str | Path | None) -> None:
        """Continue exactly where ``resume_from`` stopped (weights, optimizer, schedule, RNG, position), or seed a
        fresh run."""
        if resume_from is None:
            torch.manual_seed(self.cfg.seed)
            random.seed(self.cfg.seed)
            return
        state = load_training_state(resume_from)
        if state["total_steps"] != self.total_steps:
            raise ValueError(f"cannot resume {resume_from}: it planned {state['total_steps']} steps, this config "
                             f"plans {self.total_steps}; resume with the config it was started with")
        sharding.restore_optimizer_state(self.model, self.optimizer, state["optimizer"])  # weights: train() did
        self.scheduler.load_state_dict(state["scheduler"])
        _set_rng_state(state["rng"])
        self.step, self.epoch, self.micro_done = state["step"], state["epoch"], state["micro_done"]
        log.info("resumed from %s at step %d/%d (epoch %d, micro-batch %d)", resume_from, self.step,
                 self.total_steps, self.epoch, self.micro_done)

    def checkpoint(self, name: str, metrics: dict[str, Any]) -> Path | None:
        """Rank 0 writes the checkpoint (every rank holds the same weights and state; a sharded run's are gathered
        to rank 0 first, which every rank joins); other ranks get None."""
        weights = sharding.full_weights(self.model)
        optimizer = sharding.gather_optimizer_state(self.model, self.optimizer)
        if not self.world.is_main:
            return None
        training_state = {"optimizer": optimizer, "scheduler": self.scheduler.state_dict(),
                          "rng": _rng_state(), "step": self.step, "epoch": self.epoch, "micro_done": self.micro_done,
                          "total_steps": self.total_steps}
        return save_checkpoint(self.model, self.out_dir / "checkpoints" / name, stage=self.cfg.stage, step=self.step,
                               epoch=self.epoch + self.micro_done / self.micro_per_epoch,
                               metrics=metrics, training_state=training_state, weights=weights)

    def optimizer_step(self, group: list[list[int]], n_micro: int, tally: EpochTally) -> StepLog:
        """One optimizer step over the micro-batches ``group`` (``grad_accum`` of them, fewer at an epoch's end),
        the loss normalised by the trainable tokens of the whole step. In a data-parallel run each micro-batch is
        split across the ranks (:mod:`vlm_core.training.distributed`), the token count and the gradients are summed over
        them, and every rank makes the same update."""
        cfg, device, world, t0 = self.cfg, self.device, self.world, time.perf_counter()
        work = []  # (this rank's samples of a micro-batch, weight)
        for idx in group:
            part = shard(idx, world)
            if part:
                work.append((part, 1))
            elif self.sharded:  # FSDP: every rank runs every forward; this one (a sample of the micro-batch) counts 0
                work.append((idx[:1], 0))
        batches = [(to_device(self.collate([self.train_set[i] for i in idx]), device), w) for idx, w in work]
        local_tokens = sum(w * int((b["labels"][:, 1:] != IGNORE_INDEX).sum()) for b, w in batches)
        window_tokens = int(all_sum([local_tokens], world)[0])
        step_loss, step_seen, padded, bad = 0.0, 0, 0, None
        for k, (batch, weight) in enumerate(batches):
            if self.sharded:  # reduce-scatter the gradients once, after the step's last backward
                self.model.set_requires_gradient_sync(k == len(batches) - 1)
            with autocast(cfg, device):
                out = forward(self.model, batch)
            if self.faults is not None and self.faults.poison_loss(self.step, world.rank):
                out.loss_sum = out.loss_sum * float("nan")
            finite = bool(torch.isfinite(out.loss_sum))
            if not finite:
                bad = batch["ids"]
            if (any_rank(not finite, world) if self.sharded else not finite):
                break  # sharded: every rank breaks here, before a backward the others would wait in
            (out.loss_sum * weight / max(window_tokens, 1)).backward()
            step_loss += weight * out.loss_sum.item()
            step_seen += weight * int(out.attention_mask.sum())
            padded += weight * out.attention_mask.numel()
        if any_rank(bad is not None, world):  # every rank stops here, at the same step: none waits in a collective
            where = f"check the data of samples {bad}" if bad is not None else "on another rank"
            raise NonFiniteLoss(f"non-finite loss at step {self.step} (epoch {self.epoch}); lower train.lr or "
                                f"{where}", self.step, self.epoch + self.micro_done / n_micro)
        reduce_gradients(self.replicated, world)
        step_loss, step_seen, padded = all_sum([step_loss, step_seen, padded], world)
        step_seen, padded = int(step_seen), int(padded)
        tally.padded_tokens += padded
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, cfg.max_grad_norm or float("inf"))
        lr = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.micro_done += len(group)
        tally.loss += step_loss
        tally.tokens += window_tokens
        tally.seen_tokens += step_seen
        tally.seen_samples += sum(len(idx) for idx in group)
        return StepLog(self.step, self.epoch, step_loss / max(window_tokens, 1), lr,
                       sharding.grad_norm_value(grad_norm), step_seen, time.perf_counter() - t0)

    def end_epoch(self, n_micro: int, tally: EpochTally, val_set: ConversationDataset | None
                  ) -> tuple[dict[str, Any], Path | None]:
        """The epoch's (or the cut-short run's) metrics, validation loss and checkpoint (``epoch-NNN`` when the
        epoch is complete, the older ones pruned; ``latest`` otherwise; rank 0 only, None on the others)."""
        cfg = self.cfg
        epoch_done = self.micro_done >= n_micro
        elapsed = max(time.perf_counter() - tally.start, 1e-9)
        metrics = {"epoch": self.epoch + 1 if epoch_done else self.epoch + self.micro_done / n_micro,
                   "step": self.step, "train_loss": tally.loss / max(tally.tokens, 1),
                   "lr": self.scheduler.get_last_lr()[0],
                   "tokens_per_s": tally.seen_tokens / elapsed, "samples_per_s": tally.seen_samples / elapsed,
                   "pad_fraction": 1 - tally.seen_tokens / max(tally.padded_tokens, 1)}
        if val_set is not None and cfg.val_every_epoch:
            metrics["val_loss"] = evaluate_loss(self.model, val_set, cfg.batch_size, cfg, self.world)
        if epoch_done:
            self.epoch, self.micro_done = self.epoch + 1, 0
        ckpt = self.checkpoint(f"epoch-{self.epoch:03d}" if epoch_done else "latest", metrics)
        if epoch_done and ckpt is not None:
            _prune_checkpoints(ckpt)
        return metrics, ckpt


def train(model, cfg: TrainConfig, train_set: ConversationDataset, val_set: ConversationDataset | None,
          out_dir: str | Path, *, resume_from: str | Path | None = None,
          on_step: Callable[[StepLog], None] | None = None,
          on_epoch: Callable[[dict[str, Any], Path | None], None] | None = None,
          faults: Faults | None = None, device: torch.device | None = None) -> TrainResult:
    """Train ``model`` for one stage. Checkpoints go to ``out_dir/checkpoints/``; step logs to ``metrics.jsonl``.
    In an initialised ``torch.distributed`` group every rank calls this on the same data and they train one model
    together (:mod:`vlm_core.training.distributed`); rank 0 writes the checkpoints and the log (``on_epoch`` gets the
    checkpoint there, None on the other ranks). ``device``: where to train (default: where ``model`` is); a run with
    ``cfg.sharding: fsdp`` shards the model there (:mod:`vlm_core.training.sharding`), so it may be built on the CPU.
    ``faults`` (tests only, ``vlm_core.training.faults``) kills the process or poisons the loss at a given step."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if len(train_set) == 0:
        raise ValueError("the training set is empty (every record was skipped? see the warnings above)")

    device = device or model.device
    prepare_for_stage(model, cfg, device)
    if cfg.stage == 2 and cfg.init_checkpoint and resume_from is None:
        read_meta(cfg.init_checkpoint)
        load_projector(model, cfg.init_checkpoint)
        log.info("stage 2 starts from the projector of %s", cfg.init_checkpoint)
    if resume_from is not None:  # the weights before sharding; the optimizer, schedule and position in restore()
        load_projector(model, resume_from)
        if cfg.stage == 2:
            load_lm_weights(model, resume_from)
    gather_bf16 = device.type == "cuda" and uses_bf16_autocast(cfg, device)
    if not sharding.shard_model(model, cfg, current_world(), device, gather_bf16):
        model.to(device)
    if resume_from is None:
        fit_feature_norm(model, train_set)

    loop = _Loop(model, cfg, train_set, out_dir, faults)
    loop.restore(resume_from)
    result = TrainResult(steps=loop.step, epochs_completed=loop.epoch, total_steps=loop.total_steps)
    model.train()
    with (out_dir / "metrics.jsonl").open("a") if loop.world.is_main else nullcontext() as metrics_log:
        while loop.step < loop.total_steps and loop.epoch < cfg.epochs:
            micro_batches = epoch_batches(loop.lengths, cfg.batch_size, cfg.seed, loop.epoch, cfg.group_by_length)
            micro_batches = micro_batches[:loop.micro_per_epoch]
            tally = EpochTally(time.perf_counter())
            while loop.micro_done < len(micro_batches) and loop.step < loop.total_steps:
                group = micro_batches[loop.micro_done:loop.micro_done + cfg.grad_accum]
                rec = loop.optimizer_step(group, len(micro_batches), tally)
                if metrics_log is not None:
                    metrics_log.write(json.dumps(asdict(rec)) + "\n")
                    metrics_log.flush()
                if cfg.checkpoint_every_steps and loop.step % cfg.checkpoint_every_steps == 0:
                    loop.checkpoint("latest", {"step": loop.step})
                if on_step:
                    on_step(rec)
                if faults is not None:
                    faults.after_step(loop.step)
            metrics, ckpt = loop.end_epoch(len(micro_batches), tally, val_set)
            result.epoch_metrics.append(metrics)
            result.checkpoint, result.steps, result.epochs_completed = ckpt, loop.step, loop.epoch
            log.info("epoch %s: %s", metrics["epoch"], {k: round(v, 5) for k, v in metrics.items()})
            if on_epoch:
                on_epoch(metrics, ckpt)
    return result
