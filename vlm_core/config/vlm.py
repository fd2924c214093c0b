"""The model's config: which vision encoder, projector and language model, and how a conversation becomes tokens.

Every field has an attribute docstring (the ``--help`` text); ``__post_init__`` validates and names the bad field; a
field that names a choice is checked against ``vlm_core.config.choices``. The config travels through Ray as a plain
dict (``to_dict``), is rebuilt with ``from_dict`` on a worker's first line, and is written into every checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from . import choices
from .parse import check_field, from_dict

PINNED_DATE = "26 Jul 2024"
IMAGE_MARKER = "<image>"
"""Where a record's image goes in its conversation (ShareGPT4V / LLaVA): the one definition of the marker."""


@dataclass
class VisionConfig:
    """The frozen vision encoder."""

    encoder: str = "clip"
    """Which encoder (``choices.VISION_ENCODER``): ``clip`` (a ``CLIPVisionModel``) or ``efficientnet_lite0`` (the
    ImageNet-trained CNN)."""
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
        choices.VISION_ENCODER.check(self.encoder)
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
    layers at depth fractions k/G (see vlm_core.model.projectors)."""
    sti_pool: str = "sequence"
    """Dense connector (STI): ``sequence`` (the reference: 1-D average pooling along the token sequence) or
    ``grid`` (2-D windows of the patch grid)."""
    sti_pool_stride: int = 8
    """Dense connector (STI): pooling kernel and stride (the reference's 8)."""
    init_seed: int = 0
    """Seed of the projector's initialisation, so every trial of a config starts from the same weights."""
    feature_norm: str = "none"
    """``none`` (LLaVA: raw encoder features) or ``standardize`` (per token and channel, with statistics measured on
    training images before stage 1 and saved with the projector): puts what differs between images on the scale the
    projector's initialisation expects, whatever the encoder's offsets and scales (a CNN's stage outputs, a
    random-init encoder). The ``local`` presets use it; README "Presets" has the runs that chose it."""

    def __post_init__(self) -> None:
        choices.PROJECTOR.check(self.name)
        choices.FEATURE_NORM.check(self.feature_norm)
        choices.STI_POOL.check(self.sti_pool)
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

    mode: str = "chat"
    """``chat``: the tokenizer's chat template; ``raw``: prompt and response joined plainly, with EOS."""
    max_length: int = 512
    """Maximum tokens per sample, image tokens included. Truncation never cuts through the image."""
    date_string: str = PINNED_DATE
    """Pinned date for templates that print one (Llama 3.x), so prompts never depend on the clock."""
    system_prompt: str | None = None
    """Optional system message (chat mode only)."""

    def __post_init__(self) -> None:
        choices.FORMAT_MODE.check(self.mode)
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
