"""What every vision encoder is to the rest of the model: its geometry, the protocol a registered kind implements, and
the frozen ``VisionTower`` around it.

``EncoderGeometry`` (width, depth, patch count, main layer, whether hidden states start with a CLS token) is what
projectors are built from, never hard-coded sizes. ``VisionTower`` runs an encoder of any registered kind
(``vision.encoder``: ``clip`` in ``clip.py``, ``efficientnet_lite0`` in ``efficientnet.py``) frozen and in eval mode,
preprocesses PIL images (LLaVA's pad-to-square) and returns every hidden state.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from PIL import Image
from torch import nn

from ...assets.sources import ModelSource, model_source
from ...base.errors import ConfigError
from ...base.registry import Registry
from ...config import VisionConfig, choices

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EncoderGeometry:
    """What a projector needs to know about the vision encoder (and where the main feature comes from)."""

    embed_dim: int
    num_layers: int
    num_patches: int
    feature_layer: int = -2
    drop_cls: bool = True
    cls_token: bool = True
    """Whether each hidden state starts with a CLS token (a ViT's does; a CNN's grid has none)."""

    def __post_init__(self) -> None:
        if self.drop_cls and not self.cls_token:
            raise ValueError("EncoderGeometry: drop_cls needs an encoder with a CLS token")

    @property
    def num_tokens(self) -> int:
        return self.num_patches + (1 if self.cls_token and not self.drop_cls else 0)

    def layer_index(self, i: int) -> int:
        """Normalise a (possibly negative) index into ``hidden_states`` (length ``num_layers + 1``)."""
        return i % (self.num_layers + 1)

    def patches(self, h):
        """The patch tokens of a hidden state ``[B, tokens, D]``: without its CLS token when it has one."""
        return h[:, 1:] if self.cls_token else h


class VisionEncoder(Protocol):
    """One registered kind of encoder: how to read its architecture, load it, and run it."""

    packaged: Mapping[str, Callable[[], Path]]
    """The packaged weights ``vision.source`` may name for this kind (``vlm_core.assets.sources``), by name."""

    def architecture(self, cfg: VisionConfig) -> Any:
        """The encoder's architecture config, without weights."""

    def geometry(self, cfg: VisionConfig, arch: Any) -> EncoderGeometry:
        """Width, depth and patch count of ``arch`` with the configured main layer."""

    def load(self, cfg: VisionConfig) -> tuple[nn.Module, Any]:
        """The model with its weights, and its image processor (a transformers one: ``images=`` → pixel values)."""

    def hidden_states(self, model: nn.Module, pixel_values: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Every hidden state as ``[B, tokens, width]``, index 0 first."""

VISION_ENCODERS: Registry[VisionEncoder] = Registry.implementing(choices.VISION_ENCODER)
"""Filled by ``clip.py`` and ``efficientnet.py`` (the package imports both)."""


class VisionTower(nn.Module):
    """A frozen encoder of any registered kind, returning all hidden states."""

    def __init__(self, model: nn.Module, image_processor, cfg: VisionConfig):
        super().__init__()
        self.model = model
        self.image_processor = image_processor
        self.cfg = cfg
        self.encoder = VISION_ENCODERS[cfg.encoder]
        self.model.requires_grad_(False)
        self.model.eval()

    @property
    def geometry(self) -> EncoderGeometry:
        """What a projector is built from (width, depth, patches, main layer): see :func:`encoder_geometry`."""
        return self.encoder.geometry(self.cfg, self.model.config)

    @property
    def embed_dim(self) -> int:
        return self.geometry.embed_dim

    @property
    def num_layers(self) -> int:
        return self.geometry.num_layers

    @property
    def num_patches(self) -> int:
        return self.geometry.num_patches

    @property
    def image_size(self) -> int:
        return self.model.config.image_size

    def train(self, mode: bool = True) -> "VisionTower":  # frozen: never leaves eval mode
        return super().train(False)

    @torch.no_grad()
    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, ...]:
        dtype = next(self.model.parameters()).dtype
        return self.encoder.hidden_states(self.model, pixel_values.to(dtype))

    def preprocess(self, images: list[Image.Image]) -> torch.Tensor:
        """PIL images → ``[B, 3, H, W]`` pixel values (RGB, optional pad-to-square)."""
        prepared = []
        for img in images:
            img = img.convert("RGB")
            if self.cfg.pad_to_square:
                img = expand_to_square(img, tuple(int(m * 255) for m in self.image_processor.image_mean))
            prepared.append(img)
        return self.image_processor(images=prepared, return_tensors="pt")["pixel_values"]


def expand_to_square(img: Image.Image, fill: tuple[int, ...]) -> Image.Image:
    """LLaVA's ``expand2square``: pad the short side symmetrically with ``fill``."""
    w, h = img.size
    if w == h:
        return img
    side = max(w, h)
    out = Image.new(img.mode, (side, side), fill)
    out.paste(img, ((side - w) // 2, (side - h) // 2))
    return out




def vision_source(cfg: VisionConfig) -> ModelSource:
    """``vision.source`` classified for the configured kind of encoder."""
    return model_source(cfg.source, cfg.revision, "vision.source", VISION_ENCODERS[cfg.encoder].packaged)


def encoder_geometry(cfg: VisionConfig, config=None) -> EncoderGeometry:
    """What the projector is built from: width, depth and patch count of the encoder (``config``: its
    architecture config, read from ``cfg`` when not given) and the configured main layer."""
    encoder = VISION_ENCODERS[cfg.encoder]
    return encoder.geometry(cfg, config if config is not None else encoder.architecture(cfg))


def build_vision_tower(cfg: VisionConfig) -> VisionTower:
    model, processor = VISION_ENCODERS[cfg.encoder].load(cfg)
    n_layers = encoder_geometry(cfg, model.config).num_layers
    if not -(n_layers + 1) <= cfg.feature_layer <= n_layers:
        raise ConfigError(f"vision.feature_layer: {cfg.feature_layer} is out of range for an encoder "
                          f"with {n_layers} layers (hidden_states has {n_layers + 1} entries)")
    return VisionTower(model, processor, cfg)
