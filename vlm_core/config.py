"""Typed configs for the model and a single training run.

Every field has a docstring-style comment; validation lives in ``__post_init__`` and names the bad field.
Configs travel through Ray as plain dicts (``to_dict``) and are rebuilt on the first line of a worker with
``from_dict``, which rejects unknown keys by name.

    python -c "from vlm_core.config import VLMConfig; print(VLMConfig().to_json())"
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from .errors import ConfigError
from .projectors import FEATURE_NORMS, PROJECTORS, STI_POOLS
from .schedules import SCHEDULES

T = TypeVar("T")

PINNED_DATE = "26 Jul 2024"
IMAGE_MARKER = "<image>"
"""Where a record's image goes in its conversation (ShareGPT4V / LLaVA): the one definition of the marker."""


def check_field(cond: bool, field_name: str, msg: str) -> None:
    """Raise ``ConfigError`` naming ``field_name`` unless ``cond`` holds (used in every ``__post_init__``)."""
    if not cond:
        raise ConfigError(f"{field_name}: {msg}")


@dataclass
class VisionConfig:
    """The frozen vision encoder."""

    encoder: str = "clip"
    """Registered kind (``vlm_core.vision``): ``clip`` (a ``CLIPVisionModel``) or ``efficientnet_lite0`` (the
    ImageNet-trained CNN, ``vlm_core.cnn_vision``)."""
    source: str = "tiny"
    """``clip``: ``tiny`` (random-init CLIP of the sizes below), a hub id, or a local folder with CLIP weights.
    ``efficientnet_lite0``: ``packaged`` (the weights a package ships) or a local folder of the converted form."""
    revision: str | None = None
    """Hub commit (or branch / tag) of ``source``, passed to every ``from_pretrained`` (weights, config, image
    processor); ignored for a local folder. The ``paper`` preset pins a commit that holds safetensors."""
    feature_layer: int = -2
    """Index into ``hidden_states`` of the main feature (LLaVA: -2, the penultimate layer)."""
    drop_cls: bool = True
    """Drop the CLS token (LLaVA's ``default`` select strategy); encoders without one (a CNN) ignore it."""
    pad_to_square: bool = True
    """LLaVA-1.5 style: pad the image to a square with the processor's mean colour before resizing."""
    image_size: int = 64
    """``tiny`` only: input resolution."""
    patch_size: int = 16
    """``tiny`` only: patch size."""
    hidden_size: int = 64
    """``tiny`` only: width."""
    num_layers: int = 4
    """``tiny`` only: depth."""
    num_heads: int = 4
    """``tiny`` only: attention heads."""
    init_seed: int = 0
    """``tiny`` only: seed of the random init, so every process builds the same encoder."""

    def __post_init__(self) -> None:
        from .vision import VISION_ENCODERS  # lazily: vision imports this module

        VISION_ENCODERS.check(self.encoder)
        check_field(bool(self.source), "vision.source", "must be 'tiny', a hub id or a local folder")
        check_field(self.feature_layer != 0, "vision.feature_layer", "0 is the patch embedding, not a layer output")
        for name in ("image_size", "patch_size", "hidden_size", "num_layers", "num_heads"):
            check_field(getattr(self, name) > 0, f"vision.{name}", "must be > 0")
        check_field(self.image_size % self.patch_size == 0, "vision.image_size", "must be a multiple of patch_size")
        check_field(self.hidden_size % self.num_heads == 0, "vision.hidden_size", "must be a multiple of num_heads")


@dataclass
class ProjectorConfig:
    """The trainable connector between vision features and the LLM."""

    name: str = "mlp2x_gelu"
    """Registered projector: ``linear``, ``mlp2x_gelu``, ``dense_connector`` (DCI), ``dense_sti``, ``dense_sci``."""
    dense_groups: int = 4
    """Dense connector: DCI averages G contiguous groups of ``hidden_states[0 .. L-1]``; SCI / STI pick the G - 1
    layers at depth fractions k/G (see vlm_core.projectors)."""
    sti_pool: str = "sequence"
    """Dense connector (STI): ``sequence`` (the reference: 1-D average pooling along the token sequence) or
    ``grid`` (2-D windows of the patch grid)."""
    sti_pool_stride: int = 8
    """Dense connector (STI): pooling kernel and stride (the reference's 8)."""
    init_seed: int = 0
    """Seed of the projector's initialisation, so every trial of a config starts from the same weights."""
    feature_norm: str = "none"
    """``none`` (LLaVA: raw encoder features) or ``standardize`` (per token and channel, with statistics measured on
    training images before stage 1 and saved with the projector; the offline presets use it: their random-init
    encoder's features differ little between images)."""

    def __post_init__(self) -> None:
        PROJECTORS.check(self.name)
        FEATURE_NORMS.check(self.feature_norm)
        STI_POOLS.check(self.sti_pool)
        check_field(self.dense_groups >= 1, "projector.dense_groups", "must be >= 1")
        check_field(self.sti_pool_stride >= 1, "projector.sti_pool_stride", "must be >= 1")


@dataclass
class LMConfig:
    """The causal language model."""

    source: str = "tiny"
    """``tiny`` (random Llama with the real SmolLM2 tokenizer), ``smollm2`` (packaged SmolLM2-135M-Instruct,
    converted once and cached), a hub id (e.g. ``alpindale/Llama-3.2-1B-Instruct``) or a local folder."""
    revision: str | None = None
    """Hub commit (or branch / tag) of ``source``, passed to every ``from_pretrained`` (weights, config,
    tokenizer); ignored for a local folder. The ``paper`` preset pins a commit that holds safetensors."""
    tokenizer: str | None = None
    """Tokenizer folder / hub id when it differs from ``source`` (``tiny`` defaults to SmolLM2's)."""
    tokenizer_revision: str | None = None
    """Hub commit of ``tokenizer`` (when it is a hub id)."""
    hidden_size: int = 64
    """``tiny`` only: width."""
    num_layers: int = 2
    """``tiny`` only: depth."""
    num_heads: int = 4
    """``tiny`` only: attention heads."""
    intermediate_size: int = 128
    """``tiny`` only: MLP width."""
    init_seed: int = 0
    """``tiny`` only: seed of the random init."""
    image_token: str = IMAGE_MARKER
    """Placeholder text in conversations. Mapped to a reserved special token when the tokenizer has one,
    otherwise added to the vocabulary."""
    attn_implementation: str = "sdpa"
    """Passed to transformers (``eager``, ``sdpa``, ``flash_attention_2``)."""
    trust_remote_code: bool = False
    """Allow model code from the hub. Off unless you opt in."""

    def __post_init__(self) -> None:
        check_field(bool(self.source), "lm.source", "must be 'tiny', 'smollm2', a hub id or a local folder")
        for name in ("hidden_size", "num_layers", "num_heads", "intermediate_size"):
            check_field(getattr(self, name) > 0, f"lm.{name}", "must be > 0")
        check_field(self.hidden_size % self.num_heads == 0, "lm.hidden_size", "must be a multiple of num_heads")
        check_field(self.image_token.strip() == self.image_token and bool(self.image_token), "lm.image_token",
               "must be a non-empty string without surrounding spaces")


@dataclass
class FormatConfig:
    """How a conversation becomes tokens and labels."""

    mode: Literal["chat", "raw"] = "chat"
    """``chat``: the tokenizer's chat template; ``raw``: prompt and response joined plainly, with EOS."""
    max_length: int = 512
    """Maximum tokens per sample, image tokens included. Truncation never cuts through the image."""
    date_string: str = PINNED_DATE
    """Pinned date for templates that print one (Llama 3.x), so prompts never depend on the clock."""
    system_prompt: str | None = None
    """Optional system message (chat mode only)."""

    def __post_init__(self) -> None:
        check_field(self.mode in ("chat", "raw"), "format.mode", f"{self.mode!r} is not one of 'chat', 'raw'")
        check_field(self.max_length >= 8, "format.max_length", "must be >= 8")


@dataclass
class VLMConfig:
    """Everything needed to rebuild the model and format its inputs; written into every checkpoint."""

    vision: VisionConfig = field(default_factory=VisionConfig)
    projector: ProjectorConfig = field(default_factory=ProjectorConfig)
    lm: LMConfig = field(default_factory=LMConfig)
    format: FormatConfig = field(default_factory=FormatConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "VLMConfig":
        return from_dict(cls, d)


LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
"""Llama's attention and MLP projections: LoRA on every linear layer of the decoder (QLoRA's finding: adapting
all of them matches full fine-tuning better than attention alone)."""
LM_TUNINGS = ("full", "lora")
SHARDINGS = ("none", "fsdp")


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
    mixed_precision: Literal["auto", "bf16", "no"] = "auto"
    """``auto``: bf16 autocast on CUDA, fp32 on CPU."""
    frozen_dtype: Literal["auto", "bf16", "fp32"] = "auto"
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
    too large for one GPU trains; the same update; see ``vlm_core.sharding``)."""
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
        SCHEDULES.check(self.scheduler)
        check_field(self.lm_tuning in LM_TUNINGS, "train.lm_tuning",
                    f"{self.lm_tuning!r} is not one of {', '.join(LM_TUNINGS)}")
        check_field(self.lm_tuning == "full" or self.stage == 2, "train.lm_tuning",
                    "lora tunes the LLM, which only stage 2 trains; use it with train.stage 2")
        check_field(self.sharding in SHARDINGS, "train.sharding",
                    f"{self.sharding!r} is not one of {', '.join(SHARDINGS)}")
        check_field(self.sharding == "none" or self.stage == 2, "train.sharding",
                    "fsdp shards the LLM that stage 2 trains; stage 1 trains only the projector (use none)")
        check_field(self.sharding == "none" or self.lm_tuning == "full", "train.sharding",
                    "fsdp shards a fully tuned LLM; LoRA's frozen base LLM is not sharded (use train.sharding none)")
        check_field(self.mixed_precision in ("auto", "bf16", "no"), "train.mixed_precision",
               "must be 'auto', 'bf16' or 'no'")
        check_field(self.frozen_dtype in ("auto", "bf16", "fp32"), "train.frozen_dtype",
                    f"{self.frozen_dtype!r} is not one of 'auto', 'bf16', 'fp32'")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        return from_dict(cls, d)


def from_dict(cls: type[T], data: dict[str, Any], prefix: str = "") -> T:
    """Rebuild a (nested) dataclass from a dict, rejecting unknown keys by their dotted name."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or cls.__name__}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(f"unknown config key(s) {', '.join(where + k for k in unknown)}; "
                          f"valid keys: {', '.join(sorted(names))}")
    kwargs = {}
    for name, value in data.items():
        tp = hints[name]
        if dataclasses.is_dataclass(tp) and isinstance(value, dict):
            value = from_dict(tp, value, f"{prefix}.{name}" if prefix else name)
        kwargs[name] = value
    return cls(**kwargs)

