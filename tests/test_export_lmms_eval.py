"""The LLaVA export (``vlm_core.evaluation.export``) as lmms-eval 0.7.3's ``llava_hf`` reads it, both ways:

* the default chat path (``lmms_eval/models/chat/llava_hf.py``): structured content through the *processor's* chat
  template, then the processor with the tokenizer's default special tokens, then ``generate``;
* the simple path (``--force_simple``, ``lmms_eval/models/simple/llava_hf.py``): ``"<image>\\n" + prompt`` as a
  plain string through the *tokenizer's* chat template, then the same processor call and ``generate``.

The helpers below redo what those files do, call for call (lmms-eval is not a dependency: its source was read
from the 0.7.3 wheel; the line numbers are that version's). Each path must give the model exactly the ids it was
trained on (``model.formatter``, the image token expanded to ``image_seq_length``, one BOS) and the greedy answer of
our own generation (``vlm_core.evaluation.inference``), stopping at the model's end-of-turn token, which lmms-eval
passes as ``eos_token_id = pad_token_id = tokenizer.eos_token_id``.

Random weights never end a turn on their own, so each model is first taught one answer: a few AdamW steps on the
one conversation (the question → "Yes, a red circle." and its end-of-turn token, the trained labels), after which
greedy decoding says a few tokens and then ends its turn. No weight is set by hand; the stop is the model's own.
The paper-shaped model (Llama-3.2-1B's widths, vocabulary, special ids and template; 2 layers) is ``slow``.

    pytest -q tests/test_export_lmms_eval.py              # ~1 min on 2 CPU cores (the paper-shaped part ~40 s)
    pytest -q tests/test_export_lmms_eval.py -m "not slow"   # the tiny preset, linear and mlp2x_gelu
"""

from __future__ import annotations

import pytest
import torch
from PIL import Image, ImageDraw

from vlm_core.config import VLMConfig
from vlm_core.evaluation.inference import answer, build_prompt_batch
from vlm_core.model.vlm import VisionLanguageModel

QUESTION = "Is there a red circle in the image?"
PROMPT = QUESTION + "\nAnswer the question using a single word or phrase."
"""lmms-eval's POPE prompt (``tasks/pope/utils.py`` ``pope_doc_to_text`` with ``pope.yaml``'s ``post_prompt``)."""
TAUGHT = "Yes, a red circle."
POPE_GEN_KWARGS = {"max_new_tokens": 128, "temperature": 0, "top_p": 1.0, "num_beams": 1, "do_sample": False}
"""``tasks/pope/pope.yaml``'s ``generation_kwargs``."""
DEFAULT_IMAGE_TOKEN = "<image>"
"""``lmms_eval/models/simple/llava_hf.py`` line 26."""


def red_circle() -> Image.Image:
    image = Image.new("RGB", (80, 60), "white")  # not square: the processor's resize and crop are exercised
    ImageDraw.Draw(image).ellipse((20, 10, 60, 50), fill=(220, 20, 20))
    return image


def teach(model: VisionLanguageModel, image: Image.Image, steps: int, lr: float, embeddings: bool) -> None:
    """AdamW on the one conversation PROMPT → TAUGHT (the projector and the LLM; the embedding matrix too when
    ``embeddings``), so that the model answers and ends its turn."""
    enc = model.formatter.encode([{"from": "human", "value": f"{model.image_token.text}\n{PROMPT}"},
                                  {"from": "gpt", "value": TAUGHT}])
    ids, labels = torch.tensor([enc.input_ids]), torch.tensor([enc.labels])
    features = model.image_features(model.vision.preprocess([image]))
    model.requires_grad_(False)
    params = [*model.projector.parameters(),
              *(p for n, p in model.lm.named_parameters() if embeddings or "embed_tokens" not in n)]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    model.train()
    for _ in range(steps):
        model(ids, torch.ones_like(ids), labels, image_features=features).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    model.eval().requires_grad_(False)


# --- lmms-eval 0.7.3's llava_hf, redone call for call -------------------------------------------------------------


def lmms_load(pretrained, device_map: str = "cpu"):
    """``LlavaHf.__init__`` (simple/llava_hf.py 93-103; the chat class inherits it): config → model class by
    ``model_type``, the model with ``dtype="auto"``, ``AutoProcessor``, left padding. Returns (model, processor).

    ``device_map``: lmms-eval's default, ``""``, is refused by transformers 5.24's ``from_pretrained`` (``ValueError:
    When passing device_map as a string, the value needs to be a device name``), so on this stack it has to come in
    ``--model_args`` (``device_map=cuda:0``; here ``cpu``)."""
    from transformers import AutoConfig, AutoProcessor, LlavaForConditionalGeneration

    config = AutoConfig.from_pretrained(pretrained)
    assert config.model_type == "llava"  # model_map["llava"] = LlavaForConditionalGeneration
    model = LlavaForConditionalGeneration.from_pretrained(pretrained, revision="main", torch_dtype="auto",
                                                          device_map=device_map, trust_remote_code=False,
                                                          attn_implementation=None)
    processor = AutoProcessor.from_pretrained(pretrained, revision="main", trust_remote_code=False)
    processor.tokenizer.padding_side = "left"
    return model.to("cpu").eval(), processor


def _lmms_generate(model, processor, inputs, gen_kwargs: dict) -> torch.Tensor:
    """The ``self.model.generate`` call both paths make (chat 75-98, simple 352-373), greedy unless temperature > 0;
    ``eot_token_id`` is ``tokenizer.eos_token_id`` (simple 158-160)."""
    gen_kwargs = dict(gen_kwargs)
    gen_kwargs.setdefault("max_new_tokens", 1024)
    gen_kwargs.setdefault("temperature", 0)
    gen_kwargs.setdefault("top_p", None)
    gen_kwargs.setdefault("num_beams", 1)
    do_sample = gen_kwargs["temperature"] > 0
    eot = processor.tokenizer.eos_token_id
    with torch.no_grad():
        return model.generate(**inputs, do_sample=do_sample,
                              temperature=gen_kwargs["temperature"] if do_sample else None,
                              top_p=gen_kwargs["top_p"], num_beams=gen_kwargs["num_beams"],
                              max_new_tokens=gen_kwargs["max_new_tokens"], use_cache=True, pad_token_id=eot,
                              eos_token_id=eot)


def lmms_chat(model, processor, image, prompt: str, gen_kwargs: dict = POPE_GEN_KWARGS):
    """chat/llava_hf.py ``generate_until`` (56-101): the task's messages (``api/task.py`` ``_build_user_turn``, after
    ``ChatMessages.model_dump``) through the processor's chat template, the processor, generate, the new tokens
    decoded. Returns (inputs, new token ids, text)."""
    messages = [{"role": "user", "content": [{"type": "image", "url": image}, {"type": "text", "text": prompt}]}]
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    inputs = processor(images=[image], videos=None, text=text, return_tensors="pt").to("cpu", model.dtype)
    cont = _lmms_generate(model, processor, inputs, gen_kwargs)
    trimmed = [out_ids[len(in_ids):] for in_ids, out_ids in zip(inputs.input_ids, cont)]
    return inputs, trimmed[0].tolist(), processor.tokenizer.batch_decode(trimmed, skip_special_tokens=True)[0]


def lmms_simple(model, processor, image, prompt: str, gen_kwargs: dict = POPE_GEN_KWARGS):
    """simple/llava_hf.py ``generate_until`` (281-381), an image task: ``"<image>\\n"`` prepended when the context
    has no ``<image>``, the tokenizer's chat template (it has one), the processor, generate, the new tokens
    decoded. Returns (inputs, new token ids, text)."""
    visuals = [image]
    context = prompt
    if DEFAULT_IMAGE_TOKEN not in context:
        context = f"{' '.join([DEFAULT_IMAGE_TOKEN] * len(visuals))}\n{context}"
    messages = [{"role": "user", "content": context}]
    assert processor.tokenizer.chat_template is not None  # else lmms-eval falls back to its Vicuna template
    text = processor.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    inputs = processor(images=visuals, text=text, return_tensors="pt").to("cpu", model.dtype)
    cont = _lmms_generate(model, processor, inputs, gen_kwargs)
    cont = cont[:, inputs["input_ids"].shape[-1]:]
    return inputs, cont[0].tolist(), processor.tokenizer.batch_decode(cont, skip_special_tokens=True)[0]


# --- what our own code says -------------------------------------------------------------------------------------


def trained_ids(model, prompt: str) -> list[int]:
    """The prompt ids of our generation (``build_prompt_batch``: the training formatter with the generation header),
    the image token expanded to the projector's token count as the processor does."""
    ids = build_prompt_batch(model, [prompt])["input_ids"][0].tolist()
    at = ids.index(model.image_token.id)
    return ids[:at] + [model.image_token.id] * model.num_image_tokens + ids[at + 1:]


def our_tokens(model, image, prompt: str, max_new_tokens: int) -> list[int]:
    """``inference.answer``'s tokens (the same calls, before decoding): one prompt, so no padding."""
    batch = build_prompt_batch(model, [prompt])
    out = model.generate(batch["input_ids"], batch["attention_mask"], pixel_values=model.vision.preprocess([image]),
                         max_new_tokens=max_new_tokens)
    return out[0].tolist()


def check_both_paths(model, folder, image) -> dict:
    """Everything this module asserts, for one exported model; returns what the paths produced."""
    llava, processor = lmms_load(folder)
    budget = POPE_GEN_KWARGS["max_new_tokens"]
    eot = model.formatter.stop_token_ids[0]
    want_ids = trained_ids(model, PROMPT)
    ours = our_tokens(model, image, PROMPT, budget)
    said = answer(model, [image], [PROMPT], max_new_tokens=budget)[0]
    # the taught answer, then the end of turn, well within the budget: there is a stop to check
    assert said == TAUGHT and ours[-1] == eot and len(ours) < budget, (said, ours)
    assert processor.tokenizer.eos_token_id == eot  # what lmms-eval passes as eos_token_id and pad_token_id
    got = {}
    for path, run in (("chat", lmms_chat), ("simple", lmms_simple)):
        inputs, tokens, text = run(llava, processor, image, PROMPT)
        assert inputs["input_ids"][0].tolist() == want_ids, path
        assert inputs["input_ids"][0].tolist().count(model.image_token.id) == model.num_image_tokens, path
        torch.testing.assert_close(inputs["pixel_values"], model.vision.preprocess([image]))
        assert tokens == ours, (path, tokens, ours)  # token for token, the end of turn last
        assert text.strip() == said, path  # lmms-eval decodes without stripping; POPE's scorer strips
        got[path] = (inputs, tokens, text)
    # the exported generation config alone (no eos argument) stops at the same token
    with torch.no_grad():
        plain = llava.generate(**got["chat"][0], max_new_tokens=budget)[0, got["chat"][0]["input_ids"].shape[1]:]
    assert plain.tolist() == ours
    return got


# --- the tiny preset --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=["linear", "mlp2x_gelu"])
def tiny_export(request, tiny_cfg, tmp_path_factory):
    from vlm_core.evaluation.export import export_llava

    cfg = VLMConfig.from_dict(tiny_cfg.to_dict())
    cfg.projector.name = request.param
    torch.manual_seed(0)
    model = VisionLanguageModel.build(cfg).eval()
    image = red_circle()
    teach(model, image, steps=60, lr=1e-2, embeddings=True)
    return model, export_llava(model, tmp_path_factory.mktemp(f"llava-{request.param}") / "export"), image


def test_tiny_export_gives_lmms_eval_the_trained_ids_and_our_answers(tiny_export):
    model, folder, image = tiny_export
    assert model.image_token.token == DEFAULT_IMAGE_TOKEN  # SmolLM2 has no reserved tokens: <image> was added
    got = check_both_paths(model, folder, image)
    assert got["chat"][2] == got["simple"][2] == TAUGHT


def test_the_exported_template_renders_both_content_forms_as_training_does(tiny_export):
    """Today's failure on the chat path was a template that could not take structured content; and a system
    prompt or date that training passed to the template must be the export's default too."""
    from jinja2 import TemplateError
    from transformers import AutoTokenizer

    model, folder, _ = tiny_export
    tok = AutoTokenizer.from_pretrained(folder)
    training = model.tokenizer.apply_chat_template(
        [{"role": "user", "content": f"<image>\n{PROMPT}"}], tokenize=False, add_generation_prompt=True,
        date_string=model.cfg.format.date_string)
    structured = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": PROMPT}]}]
    plain = [{"role": "user", "content": f"<image>\n{PROMPT}"}]
    for messages in (structured, plain):
        assert tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == training
    # a multi-turn history renders as the training formatter renders it (answers as strings or text items)
    turns = [{"from": "human", "value": f"<image>\n{QUESTION}"}, {"from": "gpt", "value": "Yes."},
             {"from": "human", "value": "What colour is it?"}]
    want = model.formatter.encode_prompt(turns).input_ids
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]},
                {"role": "assistant", "content": [{"type": "text", "text": "Yes."}]},
                {"role": "user", "content": "What colour is it?"}]
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert tok(text)["input_ids"] == want
    with pytest.raises(TemplateError, match="images and text only, not video"):
        tok.apply_chat_template([{"role": "user", "content": [{"type": "video"}]}], tokenize=False)


def test_raw_format_and_a_system_prompt_are_exported(tiny_cfg, tmp_path):
    """``format.mode: raw`` has no tokenizer template: the export writes raw's (BOS, user, newline); a configured
    system prompt is added by the exported template as the formatter adds it. Both paths give the trained ids."""
    from vlm_core.evaluation.export import export_llava

    image = red_circle()
    for mode, system in (("raw", None), ("chat", "You answer in a few words.")):
        cfg = VLMConfig.from_dict(tiny_cfg.to_dict())
        cfg.format.mode, cfg.format.system_prompt = mode, system
        model = VisionLanguageModel.build(cfg).eval()
        llava, processor = lmms_load(export_llava(model, tmp_path / mode))
        assert processor.tokenizer.eos_token_id == model.formatter.stop_token_ids[0]
        for run in (lmms_chat, lmms_simple):
            inputs, _, _ = run(llava, processor, image, PROMPT, {**POPE_GEN_KWARGS, "max_new_tokens": 1})
            assert inputs["input_ids"][0].tolist() == trained_ids(model, PROMPT), (mode, run.__name__)
        if system:
            assert system in processor.apply_chat_template(
                [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": PROMPT}]}],
                tokenize=False, add_generation_prompt=True)


# --- the paper-shaped Llama-3 model -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shaped_export(tmp_path_factory):
    """TinyCLIP + Llama-3.2-1B-Instruct from their published configs, random weights, 2 LLM layers, taught the
    answer with the embedding matrix frozen (its 262M-parameter gradient is what would cost memory)."""
    from vlm_core.assets.paper_shaped import paper_shaped_config
    from vlm_core.evaluation.export import export_llava
    from vlm_core.presets import get_preset

    cfg = paper_shaped_config(get_preset("paper"), lm_layers=2)
    model = VisionLanguageModel.build(cfg).eval()
    image = red_circle()
    teach(model, image, steps=5, lr=1e-3, embeddings=False)
    return model, export_llava(model, tmp_path_factory.mktemp("llava-shaped") / "export"), image


@pytest.mark.slow
def test_paper_shaped_export_gives_lmms_eval_the_trained_ids_and_our_answers(shaped_export):
    """Today's failures on Llama 3: ``<image>`` was no token (the model's image token is the reserved 128002), and
    the template's BOS plus the tokenizer's made two. The export names 128002 ``<image>`` and adds no BOS itself."""
    model, folder, image = shaped_export
    assert (model.image_token.id, model.image_token.token) == (128002, "<|reserved_special_token_0|>")
    got = check_both_paths(model, folder, image)
    for path, (inputs, tokens, _) in got.items():
        ids = inputs["input_ids"][0].tolist()
        assert ids[0] == 128000 and ids.count(128000) == 1, path  # one BOS
        assert ids.count(128002) == 49, path
        assert tokens[-1] == 128009, path  # <|eot_id|>


@pytest.mark.slow
def test_paper_shaped_export_files_agree_on_the_end_of_turn(shaped_export):
    import json

    from transformers import AutoTokenizer

    from vlm_core.config import PINNED_DATE

    model, folder, _ = shaped_export
    tok = AutoTokenizer.from_pretrained(folder)
    assert (tok.eos_token, tok.eos_token_id, tok.bos_token_id, tok.pad_token_id) == ("<|eot_id|>", 128009, 128000,
                                                                                     128004)
    assert tok.convert_tokens_to_ids("<image>") == 128002 and len(tok) == 128256  # renamed, not added
    assert tok("<image>", add_special_tokens=False)["input_ids"] == [128002]
    assert tok.decode([128002]) == "<image>"
    generation = json.loads((folder / "generation_config.json").read_text())
    assert (generation["eos_token_id"], generation["pad_token_id"], generation["bos_token_id"]) == (128009, 128004,
                                                                                                    128000)
    config = json.loads((folder / "config.json").read_text())
    assert (config["image_token_index"], config["image_seq_length"]) == (128002, 49)
    # text tokenized with or without the tokenizer's special tokens: the template's BOS only
    rendered = tok.apply_chat_template([{"role": "user", "content": "<image>\nHi"}], tokenize=False,
                                       add_generation_prompt=True)
    assert rendered.startswith("<|begin_of_text|>") and f"Today Date: {PINNED_DATE}\n" in rendered
    assert tok(rendered)["input_ids"] == tok(rendered, add_special_tokens=False)["input_ids"]
    assert tok(rendered)["input_ids"].count(128000) == 1
