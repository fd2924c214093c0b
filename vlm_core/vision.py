"""The frozen vision encoder and its image preprocessing, by registered kind (``vision.encoder``).

* ``clip`` — a ``CLIPVisionModel`` through transformers (TinyCLIP-ViT-40M in production; a random-init one of the
  ``tiny`` sizes offline). ``hidden_states``: index 0 = the embeddings after the pre-layernorm, index i = the
  output of layer i; each has a CLS token followed by the patch tokens.
* ``efficientnet_lite0`` — the ImageNet-trained EfficientNet-Lite0 CNN (``vlm_core.cnn_vision``): its stage
  outputs pooled to the final 7 × 7 grid at 224 px, i.e. 49 tokens as TinyCLIP-ViT-40M-32 gives (see there for
  its layer definition).

``VisionTower`` exposes ``geometry`` (width, depth, patch count, main layer: what projectors are built from, never
hard-coded sizes), runs frozen and in eval mode, and returns every hidden state.

    python -c "from vlm_core.vision import build_vision_tower; from vlm_core.config import VisionConfig; \
print(build_vision_tower(VisionConfig()).geometry)"
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Protocol

import torch
from PIL import Image
from torch import nn

from .cnn_vision import EfficientNetLite0Encoder
from .errors import ConfigError
from .hub import load_files, load_weights
from .image_processors import image_processor
from .projectors import EncoderGeometry
from .registry import Registry

if TYPE_CHECKING:  # config validates vision.encoder against the registry here, so it imports this module lazily
    from .config import VisionConfig

log = logging.getLogger(__name__)

class VisionEncoder(Protocol):
    """One registered kind of encoder: how to read its architecture, load it, and run it."""

    def architecture(self, cfg: VisionConfig) -> Any:
        """The encoder's architecture config, without weights."""

    def geometry(self, cfg: VisionConfig, arch: Any) -> EncoderGeometry:
        """Width, depth and patch count of ``arch`` with the configured main layer."""

    def load(self, cfg: VisionConfig) -> tuple[nn.Module, Any]:
        """The model with its weights, and its image processor (a transformers one: ``images=`` → pixel values)."""

    def hidden_states(self, model: nn.Module, pixel_values: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Every hidden state as ``[B, tokens, width]``, index 0 first."""


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


class ClipEncoder:
    """``CLIPVisionModel``: ``tiny`` (random init of the config's sizes), a hub id or a local folder."""

    @staticmethod
    def _tiny_config(cfg: VisionConfig):
        from transformers import CLIPVisionConfig

        return CLIPVisionConfig(
            hidden_size=cfg.hidden_size, intermediate_size=4 * cfg.hidden_size, num_hidden_layers=cfg.num_layers,
            num_attention_heads=cfg.num_heads, image_size=cfg.image_size, patch_size=cfg.patch_size,
            projection_dim=cfg.hidden_size)

    def architecture(self, cfg: VisionConfig):
        """The ``CLIPVisionConfig`` (a hub ``CLIPModel`` config gives its vision part)."""
        if cfg.source == "tiny":
            return self._tiny_config(cfg)
        from transformers import CLIPVisionConfig

        return load_files(CLIPVisionConfig, cfg.source, cfg.revision, "vision.source")

    def geometry(self, cfg: VisionConfig, arch) -> EncoderGeometry:
        return EncoderGeometry(arch.hidden_size, arch.num_hidden_layers, (arch.image_size // arch.patch_size) ** 2,
                               cfg.feature_layer, cfg.drop_cls)

    def load(self, cfg: VisionConfig):
        from transformers import CLIPImageProcessorPil, CLIPVisionModel

        if cfg.source == "tiny":
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(cfg.init_seed)
                return CLIPVisionModel(self._tiny_config(cfg)), image_processor(cfg.image_size)
        model = load_weights(CLIPVisionModel, cfg.source, cfg.revision, "vision.source")
        try:
            processor = load_files(CLIPImageProcessorPil, cfg.source, cfg.revision, "vision.source")
        except OSError:
            log.warning("no preprocessor_config.json in %s; using CLIP defaults", cfg.source)
            processor = image_processor(model.config.image_size)
        return model, processor

    def hidden_states(self, model, pixel_values):
        return model(pixel_values=pixel_values, output_hidden_states=True).hidden_states


VISION_ENCODERS: Registry[VisionEncoder] = Registry(
    "vision.encoder", "vision encoder", {"clip": ClipEncoder(), "efficientnet_lite0": EfficientNetLite0Encoder()})


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
