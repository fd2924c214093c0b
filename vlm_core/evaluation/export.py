"""Export a trained ``linear`` / ``mlp2x_gelu`` model to transformers' LLaVA format.

The result loads with ``LlavaForConditionalGeneration.from_pretrained`` and ``AutoProcessor.from_pretrained``
(vLLM, TGI, lmms-eval and friends read the same layout). ``mlp2x_gelu`` maps onto LLaVA's projector as is;
``linear`` becomes ``linear_1`` followed by an identity ``linear_2`` with the ``linear`` activation, which is
exact. Dense connectors, ``feature_norm: standardize`` and the CNN encoder have no LLaVA equivalent and are refused
by name (evaluate those checkpoints with ``vlm-sweep eval``).

    vlm-sweep export --checkpoint runs/main/stage2/final --out exported/

The folder gives the model the token ids it was trained on, whichever way a harness builds the prompt (lmms-eval
0.7.3's ``llava_hf``, both paths, is the reference; ``tests/test_export_lmms_eval.py`` runs both):

* **Image token.** Its text is ``<image>``, the literal LLaVA and lmms-eval write (``DEFAULT_IMAGE_TOKEN``), at the
  trained id. A model that reused a reserved token (Llama 3: ``<|reserved_special_token_0|>``, id 128002) gets
  that vocabulary entry renamed to ``<image>`` in the exported tokenizer: the same id, the same embedding, only
  its text changes. The processor expands it to ``image_seq_length`` copies.
* **Chat template.** The exported template is the training format (``model.formatter``): the tokenizer's own
  template in ``chat`` mode, ``raw``'s ``BOS user "\\n" assistant EOS`` otherwise, with what training passed pinned
  in (``date_string``, the system prompt, the BOS/EOS text). A message's content may be a string
  (``"<image>\\nWhat is it?"``, lmms-eval's ``--force_simple``) or a list of ``{"type": "image"}`` /
  ``{"type": "text", "text": ...}`` items (the processor's chat path); a list renders as ``"<image>\\n"`` per
  image item followed by its text items, which is where training puts the marker.
* **One BOS.** Training renders the template, BOS included, and tokenizes with ``add_special_tokens=False``. The
  exported tokenizer adds no special tokens of its own (``add_bos_token`` / ``add_eos_token`` false, written into
  its post-processor) and the template keeps writing BOS. So ``processor(text=rendered)`` with the default
  ``add_special_tokens=True`` (lmms-eval) and ``apply_chat_template(..., tokenize=True)`` / vLLM (which pass
  ``False``) give the same ids, the trained ones. The other fix, a template without BOS and a tokenizer that adds
  it, would leave every caller that tokenizes a rendered template with ``add_special_tokens=False`` without BOS.
  The cost: text tokenized without the template gets no BOS (the model never saw text without its template).
* **End of turn.** The tokenizer's ``eos_token`` is the token the model ends its answers with
  (``formatter.stop_token_ids``: ``<|eot_id|>`` for Llama-3.2-Instruct, ``<|im_end|>`` for SmolLM2), because
  lmms-eval passes ``eos_token_id = pad_token_id = tokenizer.eos_token_id`` to ``generate``; the generation config
  stops on the same tokens as ``VisionLanguageModel.generate`` (end of turn first) and is greedy.

Exporting checks the result: the exported tokenizer and template must turn a probe question, in both content
forms and with or without ``add_special_tokens``, into exactly the formatter's ids, or nothing is written.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch

from ..base.errors import ConfigError
from ..base.outputs import atomic_dir
from ..model.lora import merged_lm

EXPORTABLE = {"mlp2x_gelu": "gelu", "linear": "linear"}
IMAGE_TOKEN = "<image>"
"""The image token's text in an export: LLaVA's, and the literal lmms-eval writes (``DEFAULT_IMAGE_TOKEN``)."""


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
    llava.generation_config = generation_config(model)
    return llava


def stop_token_ids(model) -> list[int]:
    """What ``VisionLanguageModel.generate`` stops on, the format's end-of-turn token first."""
    eot = model.formatter.stop_token_ids[0]
    return [eot, *sorted({model.tokenizer.eos_token_id, *model.formatter.stop_token_ids} - {eot})]


def generation_config(model):
    """Greedy, stopping where our own generation stops."""
    from transformers import GenerationConfig

    stops = stop_token_ids(model)
    return GenerationConfig(bos_token_id=model.tokenizer.bos_token_id, pad_token_id=model.tokenizer.pad_token_id,
                            eos_token_id=stops if len(stops) > 1 else stops[0], do_sample=False)


def _literal(text: str) -> str:
    """``text`` as a Jinja string literal (Jinja reads JSON's escapes; non-ASCII characters stay as they are)."""
    return json.dumps(text, ensure_ascii=False)


def chat_template(model) -> str:
    """The training format as a chat template taking string or ``[{"type": "image"}, {"type": "text"}]`` content."""
    tok, fmt = model.tokenizer, model.formatter
    bos, eos, nl = tok.bos_token or "", tok.eos_token or "", "\n"
    # Everything training passed to (or assumed of) the template, pinned: the exported tokenizer's own BOS / EOS
    # may differ (eos becomes the end-of-turn token) and callers pass no date_string (Llama 3 would print today).
    preamble = [
        "{#- vlm-sweep export: content lists flattened as training wrote the image marker, then the training "
        "format. #}",
        f"{{%- set bos_token = {_literal(bos)} %}}",
        f"{{%- set eos_token = {_literal(eos)} %}}",
        f"{{%- if date_string is not defined %}}{{%- set date_string = {_literal(fmt.cfg.date_string)} %}}"
        "{%- endif %}",
        "{%- set ns = namespace(messages=[]) %}",
        "{%- for message in messages %}",
        "{%- if message['content'] is string %}{%- set ns.messages = ns.messages + [message] %}",
        "{%- else %}",
        "{%- set parts = namespace(images='', text='') %}",
        "{%- for item in message['content'] %}",
        f"{{%- if item['type'] == 'image' %}}{{%- set parts.images = parts.images + {_literal(IMAGE_TOKEN + nl)} %}}",
        "{%- elif item['type'] == 'text' %}{%- set parts.text = parts.text + item['text'] %}",
        "{%- else %}{{- raise_exception('this model reads images and text only, not ' + item['type']) }}",
        "{%- endif %}",
        "{%- endfor %}",
        "{%- set ns.messages = ns.messages + [{'role': message['role'], 'content': parts.images + parts.text}] %}",
        "{%- endif %}",
        "{%- endfor %}",
    ]
    if fmt.cfg.system_prompt:  # ConversationFormatter._messages: a system turn first unless there is one
        preamble.append("{%- if ns.messages and ns.messages[0]['role'] != 'system' %}"
                        f"{{%- set ns.messages = [{{'role': 'system', 'content': {_literal(fmt.cfg.system_prompt)}}}]"
                        " + ns.messages %}{%- endif %}")
    preamble.append("{%- set messages = ns.messages %}")
    if fmt.cfg.mode == "chat":
        body = getattr(tok, "chat_template", None)
        if not body or not isinstance(body, str):
            raise ConfigError("format.mode='chat' but the tokenizer has no (single) chat template to export")
    elif fmt.cfg.mode == "raw":  # conversation.render_raw: BOS, then user "\n" / assistant EOS, system turns skipped
        body = ("{{- bos_token }}{%- for message in messages %}"
                "{%- if message['role'] == 'user' %}{{- message['content'] + '\\n' }}"
                "{%- elif message['role'] == 'assistant' %}{{- message['content'] + eos_token }}{%- endif %}"
                "{%- endfor %}")
    else:
        raise ConfigError(f"format.mode: {fmt.cfg.mode!r} has no exported chat template")
    return "".join(preamble) + body


def _rename_token(folder: Path, old: str, new: str) -> None:
    """Rename vocabulary entry ``old`` to ``new`` in a saved tokenizer (its id and flags unchanged)."""
    def rename(node):
        if isinstance(node, dict):
            return {rename(k): rename(v) for k, v in node.items()}
        if isinstance(node, list):
            return [rename(v) for v in node]
        return new if node == old else node

    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json"):
        f = folder / name
        if f.is_file():
            f.write_text(json.dumps(rename(json.loads(f.read_text())), ensure_ascii=False, indent=2))


def export_tokenizer(model, folder: Path):
    """The exported tokenizer, written to and loaded from ``folder`` (see the module doc: image token, no special
    tokens of its own, end-of-turn EOS, the exported template)."""
    from transformers import AutoTokenizer

    tok, image = model.tokenizer, model.image_token
    template = chat_template(model)  # from the training tokenizer, before anything changes
    if image.token != IMAGE_TOKEN:
        if IMAGE_TOKEN in tok.get_vocab():
            raise ConfigError(f"the tokenizer has {IMAGE_TOKEN!r} as token {tok.convert_tokens_to_ids(IMAGE_TOKEN)}, "
                              f"not the image token {image.id} ({image.token!r}): the export cannot give "
                              f"{IMAGE_TOKEN!r} (what LLaVA harnesses write) the image token's id")
        tok.save_pretrained(folder)
        _rename_token(folder, image.token, IMAGE_TOKEN)
    else:
        tok.save_pretrained(folder)
    out = AutoTokenizer.from_pretrained(folder)
    out.eos_token = out.convert_ids_to_tokens(model.formatter.stop_token_ids[0])
    out.add_bos_token = False
    out.add_eos_token = False
    out.chat_template = template
    return out


def check_prompt_ids(model, tokenizer) -> None:
    """The exported tokenizer + template give a probe question exactly the formatter's ids, in every form a harness
    may use; else ``ConfigError`` (an export that would feed the model other tokens than training is worthless)."""
    question = "Is there a red circle?"
    marked = f"{model.image_token.text}\n{question}"
    want = model.formatter.encode_prompt([{"from": "human", "value": marked}]).input_ids
    forms = {"string": f"{IMAGE_TOKEN}\n{question}",
             "list": [{"type": "image"}, {"type": "text", "text": question}]}
    for form, content in forms.items():
        text = tokenizer.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                             add_generation_prompt=True)
        for special in (True, False):
            got = tokenizer(text, add_special_tokens=special)["input_ids"]
            if got != want:
                raise ConfigError(f"the exported tokenizer gives {form} content (add_special_tokens={special}) "
                                  f"other ids than training: {got} != {want}; the export is refused")


def llava_processor(model, folder: Path):
    """The ``LlavaProcessor``: the model's image preprocessing and :func:`export_tokenizer` (built in ``folder``)."""
    from transformers import LlavaImageProcessorPil, LlavaProcessor

    tokenizer = export_tokenizer(model, folder)
    check_prompt_ids(model, tokenizer)
    ip = model.vision.image_processor
    image_processor = LlavaImageProcessorPil(
        do_pad=model.cfg.vision.pad_to_square, size=dict(ip.size), crop_size=dict(ip.crop_size),
        image_mean=list(ip.image_mean), image_std=list(ip.image_std))
    return LlavaProcessor(
        image_processor=image_processor, tokenizer=tokenizer,
        patch_size=model.vision.model.config.patch_size,
        vision_feature_select_strategy="default" if model.cfg.vision.drop_cls else "full",
        chat_template=tokenizer.chat_template, image_token=IMAGE_TOKEN, num_additional_image_tokens=1)


def export_llava(model, out: str | Path) -> Path:
    """Write the LLaVA model + processor to ``out`` (atomically)."""
    out = Path(out)
    llava = to_llava(model)
    with atomic_dir(out) as tmp, tempfile.TemporaryDirectory(prefix="vlm-export-tokenizer-") as scratch:
        processor = llava_processor(model, Path(scratch))
        llava.save_pretrained(tmp, safe_serialization=True)
        processor.save_pretrained(tmp)
    return out
