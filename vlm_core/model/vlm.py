"""The LLaVA-style VLM: frozen vision encoder → projector → image tokens spliced into a causal LM.

Each sample carries exactly one image-token id at its own position; ``splice`` replaces it with the
projector's ``num_image_tokens`` embeddings, per sample, and extends the attention mask, labels and position
ids to match. Left and right padding both work because every row grows by the same amount and position ids
are recomputed from the attention mask.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..config import VLMConfig
from .conversation import IGNORE_INDEX, ConversationFormatter
from .language_model import ImageToken, build_language_model
from .projectors import Projector, build_projector
from .vision.encoder import VisionTower, build_vision_tower

log = logging.getLogger(__name__)


@dataclass
class Spliced:
    inputs_embeds: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    labels: torch.Tensor | None


@dataclass
class VLMOutput:
    logits: torch.Tensor
    loss: torch.Tensor | None  # mean over trainable tokens of the batch
    loss_sum: torch.Tensor | None  # sum over trainable tokens (for exact gradient accumulation)
    num_tokens: int  # trainable tokens in the batch
    labels: torch.Tensor | None  # labels aligned with logits (image positions included)
    attention_mask: torch.Tensor


class VisionLanguageModel(nn.Module):
    def __init__(self, cfg: VLMConfig, vision: VisionTower, projector: Projector, lm: nn.Module, tokenizer,
                 image_token: ImageToken):
        super().__init__()
        self.cfg, self.vision, self.projector, self.lm = cfg, vision, projector, lm
        self.tokenizer, self.image_token = tokenizer, image_token
        self.formatter = ConversationFormatter(tokenizer, image_token, cfg.format, projector.num_tokens)

    @classmethod
    def build(cls, cfg: VLMConfig, dtype: torch.dtype = torch.float32) -> "VisionLanguageModel":
        """Narrated construction: encoder → LM → projector built from their declared widths."""
        vision = build_vision_tower(cfg.vision)
        lm, tokenizer, image_token = build_language_model(cfg.lm, dtype=dtype)
        projector = build_projector(cfg.projector, vision.geometry, lm.config.hidden_size)
        log.info("built VLM: vision %s (%d layers, %d patches, dim %d) → %s (%d → %d, %d tokens) → LM %s",
                 cfg.vision.source, vision.num_layers, vision.num_patches, vision.embed_dim, cfg.projector.name,
                 projector.in_dim, lm.config.hidden_size, projector.num_tokens, cfg.lm.source)
        return cls(cfg, vision, projector, lm, tokenizer, image_token)

    @property
    def num_image_tokens(self) -> int:
        return self.projector.num_tokens

    @property
    def device(self) -> torch.device:
        return next(self.projector.parameters()).device

    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Frozen encoder + parameter-free selection: what the projector (and a feature cache) consumes."""
        with torch.no_grad():
            return self.projector.select(self.vision(pixel_values))

    def splice(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, image_embeds: torch.Tensor,
               labels: torch.Tensor | None = None) -> Spliced:
        """Replace each row's single image-token id by that row's ``N`` image embeddings."""
        b, length = input_ids.shape
        n = image_embeds.shape[1]
        is_img = input_ids == self.image_token.id
        counts = is_img.sum(1)
        if not torch.all(counts == 1):
            bad = (counts != 1).nonzero().flatten().tolist()
            raise ValueError(f"rows {bad} have {counts[bad].tolist()} image tokens; each row needs exactly one")
        pos = is_img.int().argmax(1)  # [B]
        embed = self.lm.get_input_embeddings()
        text = embed(input_ids.masked_fill(is_img, 0))
        new_len = length + n - 1
        idx = torch.arange(length, device=input_ids.device)[None]
        new_idx = idx + (n - 1) * (idx > pos[:, None]).long()  # text tokens after the image shift right
        img_idx = pos[:, None] + torch.arange(n, device=input_ids.device)[None]
        h = text.shape[-1]
        embeds = text.new_zeros(b, new_len, h).scatter(1, new_idx[..., None].expand(-1, -1, h), text)
        embeds = embeds.scatter(1, img_idx[..., None].expand(-1, -1, h), image_embeds.to(text.dtype))
        mask = attention_mask.new_zeros(b, new_len).scatter(1, new_idx, attention_mask)
        mask = mask.scatter(1, img_idx, torch.ones_like(img_idx, dtype=mask.dtype))
        new_labels = None
        if labels is not None:
            new_labels = labels.new_full((b, new_len), IGNORE_INDEX).scatter(1, new_idx, labels)
            new_labels = new_labels.scatter(1, img_idx, torch.full_like(img_idx, IGNORE_INDEX))
        position_ids = (mask.long().cumsum(-1) - 1).clamp(min=0)
        return Spliced(embeds, mask, position_ids, new_labels)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor | None = None,
                pixel_values: torch.Tensor | None = None, image_features: torch.Tensor | None = None) -> VLMOutput:
        if image_features is None:
            if pixel_values is None:
                raise ValueError("pass pixel_values or precomputed image_features")
            image_features = self.image_features(pixel_values)
        image_embeds = self.projector(image_features.to(next(self.projector.parameters()).dtype))
        s = self.splice(input_ids, attention_mask, image_embeds, labels)
        out = self.lm(inputs_embeds=s.inputs_embeds, attention_mask=s.attention_mask, position_ids=s.position_ids,
                      use_cache=False)
        logits = out.logits
        loss = loss_sum = None
        num_tokens = 0
        if s.labels is not None:
            shift_labels = s.labels[:, 1:]
            num_tokens = int((shift_labels != IGNORE_INDEX).sum())
            loss_sum = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), shift_labels.flatten(),
                                       ignore_index=IGNORE_INDEX, reduction="sum")
            loss = loss_sum / max(num_tokens, 1)
        return VLMOutput(logits, loss, loss_sum, num_tokens, s.labels, s.attention_mask)

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 pixel_values: torch.Tensor | None = None, image_features: torch.Tensor | None = None,
                 max_new_tokens: int = 64, **gen_kwargs) -> torch.Tensor:
        """Left-padded prompts → generated token ids (new tokens only, EOS-terminated rows padded)."""
        if image_features is None:
            image_features = self.image_features(pixel_values)
        image_embeds = self.projector(image_features.to(next(self.projector.parameters()).dtype))
        s = self.splice(input_ids, attention_mask, image_embeds)
        gen_kwargs.setdefault("do_sample", False)
        eos = sorted({self.tokenizer.eos_token_id, *self.formatter.stop_token_ids})
        return self.lm.generate(inputs_embeds=s.inputs_embeds, attention_mask=s.attention_mask,
                                max_new_tokens=max_new_tokens, eos_token_id=eos,
                                pad_token_id=self.tokenizer.pad_token_id, **gen_kwargs)
