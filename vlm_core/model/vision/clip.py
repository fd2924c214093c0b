"""The ``clip`` vision encoder: a ``CLIPVisionModel`` through transformers (TinyCLIP-ViT-40M in production; a
random-init one of the ``tiny`` sizes offline). ``hidden_states``: index 0 = the embeddings after the pre-layernorm,
index i = the output of layer i; each starts with a CLS token followed by the patch tokens.
"""

from __future__ import annotations

import logging

from ...config import VisionConfig
from .encoder import VISION_ENCODERS, EncoderGeometry, vision_source
from .processors import image_processor

log = logging.getLogger(__name__)


class ClipEncoder:
    """``CLIPVisionModel``: ``tiny`` (random init of the config's sizes), a hub id or a local folder."""

    packaged: dict = {}

    @staticmethod
    def _tiny_config(cfg: VisionConfig):
        from transformers import CLIPVisionConfig

        return CLIPVisionConfig(
            hidden_size=cfg.hidden_size, intermediate_size=4 * cfg.hidden_size, num_hidden_layers=cfg.num_layers,
            num_attention_heads=cfg.num_heads, image_size=cfg.image_size, patch_size=cfg.patch_size,
            projection_dim=cfg.hidden_size)

    def architecture(self, cfg: VisionConfig):
        """The ``CLIPVisionConfig`` (a hub ``CLIPModel`` config gives its vision part)."""
        source = vision_source(cfg)
        if source.is_random:
            return self._tiny_config(cfg)
        from transformers import CLIPVisionConfig

        return source.load_files(CLIPVisionConfig)

    def geometry(self, cfg: VisionConfig, arch) -> EncoderGeometry:
        return EncoderGeometry(arch.hidden_size, arch.num_hidden_layers, (arch.image_size // arch.patch_size) ** 2,
                               cfg.feature_layer, cfg.drop_cls)

    def load(self, cfg: VisionConfig):
        from transformers import CLIPImageProcessorPil, CLIPVisionModel

        source = vision_source(cfg)
        model = source.load(CLIPVisionModel, random=lambda: CLIPVisionModel(self._tiny_config(cfg)), seed=cfg.init_seed)
        if source.is_random:
            return model, image_processor(cfg.image_size)
        try:
            processor = source.load_files(CLIPImageProcessorPil)
        except OSError:
            log.warning("no preprocessor_config.json in %s; using CLIP defaults", cfg.source)
            processor = image_processor(model.config.image_size)
        return model, processor

    def hidden_states(self, model, pixel_values):
        return model(pixel_values=pixel_values, output_hidden_states=True).hidden_states


VISION_ENCODERS.add("clip", ClipEncoder())
