"""The config of one training run (one stage of one config): epochs, batch, optimizer, schedule, precision, how the
LLM trains in stage 2 (fully, or LoRA adapters) and whether it is sharded. Validated in ``__post_init__`` like the
model's config (``vlm_core.config.vlm``)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from . import choices
from .parse import check_field, from_dict

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
"""Llama's attention and MLP projections: LoRA on every linear layer of the decoder (QLoRA's finding: adapting
all of them matches full fine-tuning better than attention alone)."""


@dataclass
class LoraSpec:
    """Low-rank adapters on the LLM (stage 2 with ``train.lm_tuning: lora``), through peft."""

    rank: int = 16
    """Rank r of each adapter (A: r × in, B: out × r)."""
    alpha: int = 32
    """Scale: the adapter's output is multiplied by alpha / r."""
    dropout: float = 0.05
    """Dropout on the adapter's input."""
    target_modules: list[str] = field(default_factory=lambda: list(LORA_TARGETS))
    """Names of the LLM's linear layers that get an adapter."""

    def __post_init__(self) -> None:
        check_field(self.rank >= 1, "train.lora.rank", "must be >= 1")
        check_field(self.alpha > 0, "train.lora.alpha", "must be > 0")
        check_field(0 <= self.dropout < 1, "train.lora.dropout", "must be in [0, 1)")
        check_field(bool(self.target_modules) and all(isinstance(m, str) and m for m in self.target_modules),
                    "train.lora.target_modules", "must name at least one module, e.g. q_proj")


@dataclass
class TrainConfig:
    """One training run (one stage of one config)."""

    stage: int = 1
    """1 = projector only; 2 = projector + LLM, started from a stage-1 projector checkpoint."""
    epochs: int = 1
    """Passes over the training set. The LR schedule spans all of them."""
    max_steps: int | None = None
    """Stop after this many optimizer steps (smoke runs). The schedule is sized to it when set."""
    max_steps_per_epoch: int | None = None
    """Cap on optimizer steps per epoch: scaled-down runs keep every epoch (and ASHA's rungs) but see fewer
    batches of each."""
    batch_size: int = 8
    """Samples per micro-batch."""
    grad_accum: int = 1
    """Micro-batches per optimizer step. The loss is normalised by the trainable tokens of the whole step."""
    lr: float = 2e-5
    """Peak learning rate (AdamW)."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    scheduler: str = "linear"
    """Registered LR schedule: ``linear`` or ``cosine``, both with warmup."""
    warmup_ratio: float = 0.03
    """Fraction of the total steps spent warming up linearly from 0."""
    max_grad_norm: float = 1.0
    """Gradient clipping (0 disables)."""
    seed: int = 0
    """Seeds data order, dropout and init of new parameters."""
    gradient_checkpointing: bool = False
    """Trade compute for memory in the LLM (the 10 GB profile needs it)."""
    mixed_precision: str = "auto"
    """``auto``: bf16 autocast on CUDA, fp32 on CPU."""
    frozen_dtype: str = "auto"
    """Dtype of the frozen modules' weights (the vision encoder; the LLM in stage 1): frozen weights need no fp32
    master copy. ``auto``: bf16 on CUDA when bf16 autocast is on, fp32 otherwise (so CPU runs stay fp32 and exact);
    trainable modules (the projector; the LLM in stage 2) always stay fp32."""
    init_checkpoint: str | None = None
    """Stage 2: the stage-1 checkpoint whose projector starts this run."""
    lm_tuning: str = "full"
    """Stage 2: how the LLM trains: ``full`` (every weight) or ``lora`` (low-rank adapters, ``train.lora``; the base
    LLM stays frozen, and checkpoints hold only the adapters and the projector)."""
    lora: LoraSpec = field(default_factory=LoraSpec)
    """``lm_tuning: lora``: the adapters."""
    sharding: str = "none"
    """Stage 2 with several workers: ``none`` (every worker holds the whole model: data parallel) or ``fsdp`` (the
    LLM's weights, gradients and AdamW state split over the workers, one decoder layer gathered at a time: an LLM
    too large for one GPU trains; the same update; see ``vlm_core.training.sharding``)."""
    val_every_epoch: bool = True
    """Compute validation loss after every epoch."""
    max_val_samples: int | None = None
    """Validate on the first N validation samples only (None: all of them; small runs cap it)."""
    checkpoint_every_steps: int | None = None
    """Also checkpoint every N optimizer steps (resumable mid-epoch)."""
    group_by_length: bool = False
    """Batch samples of similar length together (LLaVA's ``group_by_modality_length``, transformers'
    ``LengthGroupedSampler``): each epoch's shuffled order is cut into mega-batches of 50 batches, each sorted by
    length; the batch holding the longest sample goes first (out-of-memory shows at once), the rest in a seeded
    shuffle. Less padding, the same samples per epoch. Batches are always padded to their own longest sample."""

    def __post_init__(self) -> None:
        check_field(self.stage in (1, 2), "train.stage", f"{self.stage} is not 1 or 2")
        check_field(self.max_val_samples is None or self.max_val_samples >= 1, "train.max_val_samples",
                    f"{self.max_val_samples} must be >= 1 (or unset for all)")
        check_field(self.epochs >= 1, "train.epochs", "must be >= 1")
        check_field(self.max_steps is None or self.max_steps >= 1, "train.max_steps", "must be >= 1 or None")
        check_field(self.max_steps_per_epoch is None or self.max_steps_per_epoch >= 1, "train.max_steps_per_epoch",
                    "must be >= 1 or None")
        check_field(self.batch_size >= 1, "train.batch_size", "must be >= 1")
        check_field(self.grad_accum >= 1, "train.grad_accum", "must be >= 1")
        check_field(0 < self.lr < 1, "train.lr", f"{self.lr} is out of range (0, 1)")
        check_field(0 <= self.warmup_ratio < 1, "train.warmup_ratio", "must be in [0, 1)")
        check_field(self.max_grad_norm >= 0, "train.max_grad_norm", "must be >= 0")
        choices.SCHEDULER.check(self.scheduler)
        choices.LM_TUNING.check(self.lm_tuning)
        check_field(self.lm_tuning == "full" or self.stage == 2, "train.lm_tuning",
                    "lora tunes the LLM, which only stage 2 trains; use it with train.stage 2")
        choices.SHARDING.check(self.sharding)
        check_field(self.sharding == "none" or self.stage == 2, "train.sharding",
                    "fsdp shards the LLM that stage 2 trains; stage 1 trains only the projector (use none)")
        check_field(self.sharding == "none" or self.lm_tuning == "full", "train.sharding",
                    "fsdp shards a fully tuned LLM; LoRA's frozen base LLM is not sharded (use train.sharding none)")
        choices.MIXED_PRECISION.check(self.mixed_precision)
        choices.FROZEN_DTYPE.check(self.frozen_dtype)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        return from_dict(cls, d)
