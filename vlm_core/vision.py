"""The frozen CLIP vision encoder and its image preprocessing.

``VisionTower`` exposes ``embed_dim``, ``num_patches`` and ``num_layers`` so that projectors are built from
them (never from hard-coded sizes). It always runs frozen and in eval mode, and returns every hidden state
(index 0 = embeddings after the pre-layernorm, index i = output of layer i).

    python -c "from vlm_core.vision import build_vision_tower; from vlm_core.config import VisionConfig; \
print(build_vision_tower(VisionConfig()).num_patches)"
"""

from __future__ import annotations

import logging

import torch
from PIL import Image
from torch import nn

from .config import VisionConfig
from .errors import ConfigError
from .hub import load_files, load_weights
from .projectors import EncoderGeometry

log = logging.getLogger(__name__)

# CLIP's normalisation constants (OpenAI), used by the tiny random-init encoder's processor.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class VisionTower(nn.Module):
    """A frozen ``CLIPVisionModel`` returning all hidden states."""

    def __init__(self, model: nn.Module, image_processor, cfg: VisionConfig):
        super().__init__()
        self.model = model
        self.image_processor = image_processor
        self.cfg = cfg
        self.model.requires_grad_(False)
        self.model.eval()

    @property
    def geometry(self) -> EncoderGeometry:
        """What a projector is built from (width, depth, patches, main layer): see :func:`encoder_geometry`."""
        return encoder_geometry(self.cfg, self.model.config)

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
        out = self.model(pixel_values=pixel_values.to(dtype), output_hidden_states=True)
        return out.hidden_states

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


def _tiny_config(cfg: VisionConfig):
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(
        hidden_size=cfg.hidden_size, intermediate_size=4 * cfg.hidden_size, num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads, image_size=cfg.image_size, patch_size=cfg.patch_size,
        projection_dim=cfg.hidden_size)


def _tiny_clip(cfg: VisionConfig):
    from transformers import CLIPVisionModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.init_seed)
        return CLIPVisionModel(_tiny_config(cfg))


def encoder_config(cfg: VisionConfig):
    """The encoder's ``CLIPVisionConfig`` without its weights (a hub ``CLIPModel`` config gives its vision part)."""
    if cfg.source == "tiny":
        return _tiny_config(cfg)
    from transformers import CLIPVisionConfig

    return load_files(CLIPVisionConfig, cfg.source, cfg.revision, "vision.source")


def encoder_geometry(cfg: VisionConfig, config=None) -> EncoderGeometry:
    """What the projector is built from: width, depth and patch count of the encoder (``config``: its
    ``CLIPVisionConfig``, read from ``cfg`` when not given) and the configured main layer."""
    c = config if config is not None else encoder_config(cfg)
    return EncoderGeometry(c.hidden_size, c.num_hidden_layers, (c.image_size // c.patch_size) ** 2,
                           cfg.feature_layer, cfg.drop_cls)


def _image_processor(size: int, mean=CLIP_MEAN, std=CLIP_STD):
    # The PIL processor class: the default (fast) one needs torchvision, which the CPU torch wheel lacks.
    from transformers import CLIPImageProcessorPil

    return CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size},
                                 image_mean=list(mean), image_std=list(std))


def build_vision_tower(cfg: VisionConfig) -> VisionTower:
    if cfg.source == "tiny":
        model = _tiny_clip(cfg)
        processor = _image_processor(cfg.image_size)
    else:
        from transformers import CLIPImageProcessorPil, CLIPVisionModel

        model = load_weights(CLIPVisionModel, cfg.source, cfg.revision, "vision.source")
        try:
            processor = load_files(CLIPImageProcessorPil, cfg.source, cfg.revision, "vision.source")
        except OSError:
            log.warning("no preprocessor_config.json in %s; using CLIP defaults", cfg.source)
            processor = _image_processor(model.config.image_size)
    n_layers = model.config.num_hidden_layers
    if not -(n_layers + 1) <= cfg.feature_layer <= n_layers:
        raise ConfigError(f"vision.feature_layer: {cfg.feature_layer} is out of range for an encoder "
                          f"with {n_layers} layers (hidden_states has {n_layers + 1} entries)")
    return VisionTower(model, processor, cfg)
