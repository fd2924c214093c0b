"""Export a trained ``linear`` / ``mlp2x_gelu`` model to transformers' LLaVA format.

The result loads with ``LlavaForConditionalGeneration.from_pretrained`` and ``AutoProcessor.from_pretrained``
(vLLM, TGI, lmms-eval and friends read the same layout). ``mlp2x_gelu`` maps onto LLaVA's projector as is;
``linear`` becomes ``linear_1`` followed by an identity ``linear_2`` with the ``linear`` activation, which is
exact. Dense connectors have no LLaVA equivalent and are refused by name.

A prompt rendered with the chat template already starts with BOS: tokenize it with ``add_special_tokens=False``
(``processor(text=rendered, images=..., add_special_tokens=False)``), or a Llama 3 tokenizer adds a second BOS and
the inputs differ from what the model was trained on (``tests/test_paper_shaped.py`` checks parity that way).

    vlm-sweep export --checkpoint runs/main/stage2/final --out exported/
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..base.errors import ConfigError
from ..base.outputs import atomic_dir
from ..model.lora import merged_lm

EXPORTABLE = {"mlp2x_gelu": "gelu", "linear": "linear"}


def to_llava(model):
    """Build an in-memory ``LlavaForConditionalGeneration`` with this model's weights."""
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    name = model.cfg.projector.name
    if model.cfg.vision.encoder != "clip":
        raise ConfigError(f"vision.encoder: {model.cfg.vision.encoder!r} has no LLaVA equivalent (LLaVA's vision "
                          f"tower is a CLIPVisionModel); export supports encoder 'clip'")
    if name not in EXPORTABLE:
        raise ConfigError(f"projector.name: {name!r} has no LLaVA equivalent; export supports {sorted(EXPORTABLE)}")
    if model.cfg.projector.feature_norm != "none":
        raise ConfigError(f"projector.feature_norm: {model.cfg.projector.feature_norm!r} (per-token statistics) has "
                          f"no LLaVA equivalent; export supports feature_norm 'none'")
    lm = merged_lm(model)  # LoRA: the adapters merged into the LLM's weights
    text_config = lm.config
    config = LlavaConfig(
        vision_config=model.vision.model.config.to_dict(), text_config=text_config.to_dict(),
        image_token_index=model.image_token.id, image_seq_length=model.num_image_tokens,
        projector_hidden_act=EXPORTABLE[name], vision_feature_layer=model.cfg.vision.feature_layer,
        vision_feature_select_strategy="default" if model.cfg.vision.drop_cls else "full",
        multimodal_projector_bias=True, tie_word_embeddings=bool(text_config.tie_word_embeddings))
    llava = LlavaForConditionalGeneration(config).to(torch.float32).eval()
    llava.model.vision_tower.load_state_dict(model.vision.model.state_dict())
    llava.model.language_model.load_state_dict(lm.model.state_dict())
    llava.lm_head.load_state_dict(lm.lm_head.state_dict())
    proj = llava.model.multi_modal_projector
    with torch.no_grad():
        if name == "mlp2x_gelu":
            proj.linear_1.load_state_dict(model.projector.proj[0].state_dict())
            proj.linear_2.load_state_dict(model.projector.proj[2].state_dict())
        else:
            proj.linear_1.load_state_dict(model.projector.proj.state_dict())
            proj.linear_2.weight.copy_(torch.eye(proj.linear_2.weight.shape[0]))
            proj.linear_2.bias.zero_()
    return llava


def llava_processor(model):
    from transformers import LlavaImageProcessorPil, LlavaProcessor

    ip = model.vision.image_processor
    image_processor = LlavaImageProcessorPil(
        do_pad=model.cfg.vision.pad_to_square, size=dict(ip.size), crop_size=dict(ip.crop_size),
        image_mean=list(ip.image_mean), image_std=list(ip.image_std))
    return LlavaProcessor(
        image_processor=image_processor, tokenizer=model.tokenizer,
        patch_size=model.vision.model.config.patch_size,
        vision_feature_select_strategy="default" if model.cfg.vision.drop_cls else "full",
        chat_template=getattr(model.tokenizer, "chat_template", None), image_token=model.image_token.token,
        num_additional_image_tokens=1)


def export_llava(model, out: str | Path) -> Path:
    """Write the LLaVA model + processor to ``out`` (atomically)."""
    out = Path(out)
    llava = to_llava(model)
    with atomic_dir(out) as tmp:
        llava.save_pretrained(tmp, safe_serialization=True)
        llava_processor(model).save_pretrained(tmp)
    return out
