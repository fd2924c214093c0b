"""The causal LM and its tokenizer, with an ``<image>`` token.

Sources (``lm.source``, resolved by ``vlm_core.assets.sources``): ``tiny`` (a random Llama of the config's sizes
sharing the real SmolLM2 tokenizer, for tests), ``smollm2`` (the packaged SmolLM2-135M-Instruct, converted once), or
any hub id / local folder (Llama-3.2-1B-Instruct in production).

The ``<image>`` token: a tokenizer that already has it uses it; one with reserved special tokens
(Llama 3's ``<|reserved_special_token_N|>``) maps ``<image>`` to the first of them, so embeddings need no
resize; otherwise ``<image>`` is added and the embeddings are resized, the new row set deterministically
to the mean of the old ones (so that a model rebuilt from a stage-1 checkpoint is bit-identical).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

import torch
from torch import nn

from ..assets.packaged import smollm2_folder
from ..assets.sources import ModelSource, model_source
from ..config import LMConfig

log = logging.getLogger(__name__)

RESERVED_TOKEN = re.compile(r"^<\|reserved_special_token_(\d+)\|>$")
# Preferred pad tokens, in order, when the tokenizer has them (Llama 3: pad with the fine-tune pad id).
PAD_CANDIDATES = ("<|finetune_right_pad_id|>", "<|pad|>", "<pad>")


@dataclass
class ImageToken:
    """The token id standing for ``<image>`` and the literal text that marks it in conversations."""

    id: int
    text: str
    token: str  # the vocabulary entry (``<image>`` or a reserved special token)


PACKAGED = {"smollm2": smollm2_folder}
"""The packaged LLMs ``lm.source`` accepts by name."""
TINY_TOKENIZER = "smollm2"
"""Whose tokenizer the random ``tiny`` LLM uses."""


def lm_source(cfg: LMConfig) -> ModelSource:
    return model_source(cfg.source, cfg.revision, "lm.source", PACKAGED)


def tokenizer_source(cfg: LMConfig) -> ModelSource:
    """``lm.tokenizer`` when set, else the LLM's own (SmolLM2's for the random ``tiny`` one)."""
    if cfg.tokenizer:
        return model_source(cfg.tokenizer, cfg.tokenizer_revision, "lm.tokenizer", PACKAGED)
    source = lm_source(cfg)
    return model_source(TINY_TOKENIZER, None, "lm.source", PACKAGED) if source.is_random else source


def load_tokenizer(cfg: LMConfig):
    from transformers import AutoTokenizer

    tok = tokenizer_source(cfg).load_files(AutoTokenizer, marker=("tokenizer_config.json", "tokenizer.json"),
                                           trust_remote_code=cfg.trust_remote_code)
    for cand in PAD_CANDIDATES:
        if cand in tok.get_vocab():
            tok.pad_token = cand
            break
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def resolve_image_token(tokenizer, text: str) -> tuple[ImageToken, bool]:
    """Find or create the image token. Returns it and whether the vocabulary grew."""
    vocab = tokenizer.get_vocab()
    if text in vocab:
        return ImageToken(vocab[text], text, text), False
    reserved = sorted((int(m.group(1)), tok) for tok in vocab if (m := RESERVED_TOKEN.match(tok)))
    if reserved:
        tok = reserved[0][1]
        return ImageToken(vocab[tok], text, tok), False
    tokenizer.add_special_tokens({"additional_special_tokens": [text]}, replace_extra_special_tokens=False)
    return ImageToken(tokenizer.convert_tokens_to_ids(text), text, text), True


def _tiny_llama(cfg: LMConfig, tokenizer) -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_heads,
        max_position_embeddings=2048, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True, attn_implementation=cfg.attn_implementation)
    return LlamaForCausalLM(config)


def build_language_model(cfg: LMConfig, dtype: torch.dtype = torch.float32):
    """Returns ``(model, tokenizer, image_token)``."""
    tokenizer = load_tokenizer(cfg)
    image_token, grew = resolve_image_token(tokenizer, cfg.image_token)
    from transformers import AutoModelForCausalLM

    model = lm_source(cfg).load(AutoModelForCausalLM, random=lambda: _tiny_llama(cfg, tokenizer), seed=cfg.init_seed,
                                dtype=dtype, attn_implementation=cfg.attn_implementation,
                                trust_remote_code=cfg.trust_remote_code)
    emb = model.get_input_embeddings()
    if len(tokenizer) > emb.num_embeddings:
        old = emb.num_embeddings
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        with torch.no_grad():  # deterministic init of the new rows: the mean of the old ones
            model.get_input_embeddings().weight[old:] = model.get_input_embeddings().weight[:old].mean(0)
            out = model.get_output_embeddings()
            if out is not None and out.weight.data_ptr() != model.get_input_embeddings().weight.data_ptr():
                out.weight[old:] = out.weight[:old].mean(0)
        log.info("added %r to the vocabulary (%d -> %d)", image_token.token, old, len(tokenizer))
    elif grew:
        log.info("added %r within the existing embedding matrix", image_token.token)
    model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer, image_token
