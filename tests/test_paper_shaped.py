"""The paper-shaped VLM: TinyCLIP-ViT-40M-32 + Llama-3.2-1B-Instruct built from their published configs with
random weights (the LLM cut to 2 layers; widths, vocabulary, special ids and chat template kept), through the same
path as the real models: folders in the asset cache → ``VisionLanguageModel.build`` → feature cache (Ray Data) →
one stage-1 and one stage-2 optimizer step → LLaVA export parity → ``vlm-sweep chat``.

    pytest -q tests/test_paper_shaped.py   # CPU, ~1.5 min, 9 GB peak (the first run also materializes ~1 GB, ~40 s)
"""

from __future__ import annotations

import json

import pytest
import torch

from vlm_core.assets.paper_shaped import LLAMA32_1B, TINYCLIP, published

CONV = [{"from": "human", "value": "<image>\nWhat shape is it?"}, {"from": "gpt", "value": "A circle."}]
SPECIAL_IDS = {"<|begin_of_text|>": 128000, "<|end_of_text|>": 128001, "<|reserved_special_token_0|>": 128002,
               "<|finetune_right_pad_id|>": 128004, "<|start_header_id|>": 128006, "<|end_header_id|>": 128007,
               "<|eom_id|>": 128008, "<|eot_id|>": 128009, "<|python_tag|>": 128010,
               "<|reserved_special_token_247|>": 128255}


def test_the_stored_configs_are_the_published_ones():
    llama = published(LLAMA32_1B)
    assert {k: llama[k] for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                                  "head_dim", "intermediate_size", "vocab_size", "rms_norm_eps", "rope_theta",
                                  "max_position_embeddings", "tie_word_embeddings", "bos_token_id", "eos_token_id",
                                  "torch_dtype", "hidden_act")} == {
        "hidden_size": 2048, "num_hidden_layers": 16, "num_attention_heads": 32, "num_key_value_heads": 8,
        "head_dim": 64, "intermediate_size": 8192, "vocab_size": 128256, "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
        "max_position_embeddings": 131072, "tie_word_embeddings": True, "bos_token_id": 128000,
        "eos_token_id": [128001, 128008, 128009], "torch_dtype": "bfloat16", "hidden_act": "silu"}
    assert llama["rope_scaling"] == {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                                     "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    assert published(LLAMA32_1B, "generation_config.json")["eos_token_id"] == [128001, 128008, 128009]
    clip = published(TINYCLIP)
    assert clip["model_type"] == "clip" and clip["architectures"] == ["CLIPModel"]
    v = clip["vision_config"]
    assert (v["image_size"], v["patch_size"], v["hidden_size"], v["intermediate_size"], v["num_attention_heads"],
            v["num_hidden_layers"]) == (224, 32, 512, 2048, 8, 12)
    pre = published(TINYCLIP, "preprocessor_config.json")
    assert (pre["size"], pre["crop_size"], pre["resample"], pre["do_center_crop"]) == (224, 224, 3, True)
    assert pre["image_mean"] == [0.48145466, 0.4578275, 0.40821073]
    assert pre["image_std"] == [0.26862954, 0.26130258, 0.27577711]
    # transformers reads them as the architectures they describe
    from vlm_core.assets.paper_shaped import clip_config, llama_config

    lc = llama_config(num_layers=2)
    assert (lc.num_hidden_layers, lc.hidden_size, lc.vocab_size, lc.head_dim) == (2, 2048, 128256, 64)
    assert clip_config().vision_config.num_hidden_layers == 12


def test_the_tokenizer_has_llama3s_layout_over_a_real_bpe():
    from transformers import AutoTokenizer

    from vlm_core.assets.paper_shaped import tokenizer_folder

    tok = AutoTokenizer.from_pretrained(tokenizer_folder())
    assert len(tok) == 128256
    assert {t: tok.convert_tokens_to_ids(t) for t in SPECIAL_IDS} == SPECIAL_IDS
    assert (tok.bos_token_id, tok.eos_token_id) == (128000, 128009)
    specials = {i for i in range(128000, 128256)}
    assert set(tok.all_special_ids) <= specials
    text = "The quick brown fox jumps over the lazy dog. A red circle on a white background, 2024."
    ids = tok(text).input_ids
    assert ids[0] == 128000 and ids.count(128000) == 1  # BOS prepended, as Llama 3's post-processor does
    assert 15 <= len(ids) <= 30  # a real BPE: about one token per word, not one per character
    assert max(ids[1:]) < 49152  # never a placeholder or a special token from plain text
    assert tok.decode(ids[1:]) == text
    assert tok("<|eot_id|>", add_special_tokens=False).input_ids == [128009]


@pytest.fixture(scope="module")
def shaped_cfg():
    from vlm_core.assets.paper_shaped import paper_shaped_config
    from vlm_core.presets import get_preset

    cfg = paper_shaped_config(get_preset("paper"), lm_layers=2)
    cfg.format.max_length = 192  # short samples: the step's cost is the 128256-wide LM head
    return cfg


@pytest.fixture(scope="module")
def records(corpus, tmp_path_factory):
    from vlm_core.data.dataset import read_records

    rows = [r for r in read_records(corpus / "sharegpt4v_sample.jsonl") if r["image"].startswith("coco/")][:2]
    path = tmp_path_factory.mktemp("shaped_data") / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path, [r["image"] for r in rows]


def _fingerprint(module: torch.nn.Module) -> dict[str, tuple[float, float]]:
    with torch.no_grad():
        return {n: (p.double().sum().item(), p.double().square().sum().item()) for n, p in module.named_parameters()}


def _changed(before: dict, after: dict) -> set[str]:
    return {n for n in before if before[n] != after[n]}


@pytest.fixture(scope="module")
def trained(shaped_cfg, records, corpus, ray_local, tmp_path_factory):
    """Build the model from the folders, cache its features (Ray Data), take one stage-1 step from the cache and
    one stage-2 step encoding on the fly; record what each step changed."""
    from data_pipeline.features import build_feature_cache
    from vlm_core.config import TrainConfig
    from vlm_core.model.vlm import VisionLanguageModel
    from vlm_core.training.loop import train
    from vlm_core.training.one_stage import DataSpec, load_datasets

    path, images = records
    out = tmp_path_factory.mktemp("shaped_runs")
    cache = build_feature_cache(shaped_cfg, images, corpus / "images", out / "features")
    model = VisionLanguageModel.build(shaped_cfg)
    before = {m: _fingerprint(getattr(model, m)) for m in ("vision", "projector", "lm")}
    spec = dict(train=str(path), images=str(corpus / "images"), val=str(path))
    s1_train, s1_val = load_datasets(model, DataSpec(**spec, features=str(cache)))
    s1 = train(model, TrainConfig(stage=1, max_steps=1, batch_size=2, lr=1e-3, warmup_ratio=0.0, max_val_samples=1),
               s1_train, s1_val, out / "stage1")
    after1 = {m: _fingerprint(getattr(model, m)) for m in ("vision", "projector", "lm")}
    s2_train, s2_val = load_datasets(model, DataSpec(**spec))
    s2 = train(model, TrainConfig(stage=2, max_steps=1, batch_size=1, lr=1e-4, warmup_ratio=0.0, max_val_samples=1,
                                  init_checkpoint=str(s1.checkpoint)), s2_train, s2_val, out / "stage2")
    after2 = {m: _fingerprint(getattr(model, m)) for m in ("vision", "projector", "lm")}
    model.eval()
    return {"model": model, "cache": cache, "images": images, "stage1": s1, "stage2": s2, "out": out,
            "changed1": {m: _changed(before[m], after1[m]) for m in before},
            "changed2": {m: _changed(after1[m], after2[m]) for m in before}}


def test_shapes_special_ids_and_image_token(trained):
    model = trained["model"]
    assert model.num_image_tokens == 49 and model.vision.num_patches == 49
    assert model.vision.embed_dim == 512 and model.vision.num_layers == 12 and model.projector.in_dim == 512
    c = model.lm.config
    assert (c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.num_key_value_heads, c.vocab_size) == (
        2048, 2, 32, 8, 128256)
    assert model.lm.get_input_embeddings().weight.shape == (128256, 2048)
    assert model.lm.get_output_embeddings().weight.data_ptr() == model.lm.get_input_embeddings().weight.data_ptr()
    assert len(model.tokenizer) == 128256
    assert {t: model.tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_IDS} == SPECIAL_IDS
    assert (model.image_token.id, model.image_token.token) == (128002, "<|reserved_special_token_0|>")
    assert model.tokenizer.pad_token_id == 128004 and model.tokenizer.bos_token_id == 128000
    assert model.formatter.stop_token_ids == [128009]
    ip = model.vision.image_processor
    assert ip.size == {"shortest_edge": 224} and ip.crop_size == {"height": 224, "width": 224}
    assert int(ip.resample) == 3  # bicubic
    from vlm_core.assets.paper_shaped import build_clip_vision

    ref = build_clip_vision(seed=0)  # the folder holds exactly what the builder makes
    for k, v in model.vision.model.state_dict().items():
        assert torch.equal(v, ref.state_dict()[k]), k


def test_chat_template_renders_one_bos_and_the_pinned_date(trained):
    from vlm_core.config import PINNED_DATE

    model = trained["model"]
    enc = model.formatter.encode(CONV)
    assert enc.input_ids[0] == 128000 and enc.input_ids.count(128000) == 1
    assert enc.input_ids.count(128002) == 1 and enc.input_ids[enc.image_index] == 128002
    text = model.tokenizer.decode(enc.input_ids)
    assert f"Today Date: {PINNED_DATE}\n" in text and "Cutting Knowledge Date: December 2023" in text
    trained_ids = [t for t, lab in zip(enc.input_ids, enc.labels) if lab != -100]
    assert trained_ids[-1] == 128009 and model.tokenizer.decode(trained_ids[:-1]).strip() == "A circle."


def test_stage1_trains_only_the_projector_and_stage2_the_llm_too(trained):
    for key in ("stage1", "stage2"):
        metrics = trained[key].epoch_metrics[-1]
        assert trained[key].steps == 1
        assert torch.isfinite(torch.tensor([metrics["train_loss"], metrics["val_loss"]])).all(), metrics
    c1, c2 = trained["changed1"], trained["changed2"]
    assert c1["vision"] == set() and c1["lm"] == set()
    assert c1["projector"] == {n for n, _ in trained["model"].projector.named_parameters()}
    assert c2["vision"] == set() and c2["projector"]
    assert {"model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight",
            "model.layers.1.mlp.down_proj.weight", "model.norm.weight"} <= c2["lm"]
    s1, s2 = trained["stage1"].checkpoint, trained["stage2"].checkpoint
    assert not (s1 / "lm").exists() and (s2 / "lm" / "config.json").is_file()


def test_the_feature_cache_holds_the_encoders_features(trained, corpus):
    from vlm_core.data.feature_cache import FeatureCache, model_cache_key
    from vlm_core.data.images import open_rgb

    model = trained["model"]
    cache = FeatureCache.open(trained["cache"], model_cache_key(model))
    assert cache.shape == (49, 512)
    assert cache.verify(trained["images"], corpus / "images") == len(trained["images"])
    for img in trained["images"]:
        want = model.image_features(model.vision.preprocess([open_rgb(corpus / "images" / img)]))[0]
        torch.testing.assert_close(cache.get(img).float(), want, atol=5e-3, rtol=5e-3)


def test_llava_export_gives_our_logits(trained, tmp_path):
    from PIL import Image
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from vlm_core.evaluation.export import export_llava

    model = trained["model"]
    out = export_llava(model, tmp_path / "llava")
    llava = LlavaForConditionalGeneration.from_pretrained(out).eval()
    processor = AutoProcessor.from_pretrained(out)
    assert llava.config.image_token_index == 128002 and llava.config.image_seq_length == 49
    image = Image.fromarray((torch.rand(50, 70, 3, generator=torch.Generator().manual_seed(0)) * 255).byte().numpy())
    enc = model.formatter.encode_prompt(CONV)
    ids = torch.tensor([enc.input_ids])
    pixels = model.vision.preprocess([image])
    expanded = torch.cat([ids[:, :enc.image_index], torch.full((1, 49), 128002), ids[:, enc.image_index + 1:]], 1)
    # a rendered Llama-3 template already starts with BOS; the exported tokenizer adds none of its own, so the text
    # gets exactly one BOS with the processor's default add_special_tokens=True (lmms-eval) and with False (as
    # apply_chat_template tokenizes); its image token 128002 reads "<image>", the literal LLaVA harnesses write
    text = processor.tokenizer.decode(enc.input_ids)
    assert text.startswith("<|begin_of_text|>") and text.count("<image>") == 1
    for special in (True, False):
        proc = processor(images=[image], text=[text], return_tensors="pt", add_special_tokens=special)
        assert torch.equal(proc["input_ids"], expanded), special
    torch.testing.assert_close(proc["pixel_values"], pixels)
    with torch.no_grad():
        ours = model(ids, torch.ones_like(ids), pixel_values=pixels).logits
        theirs = llava(input_ids=expanded, attention_mask=torch.ones_like(expanded), pixel_values=pixels).logits
    assert ours.shape == (1, expanded.shape[1], 128256)
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)


def test_chat_answers_from_the_stage2_checkpoint(trained, corpus, capsys):
    """``vlm-sweep chat`` on the stage-2 checkpoint prints the greedy answer of the model that was trained, computed
    here by hand from the in-memory model (a full forward pass per token: no ``generate``, no KV cache, no
    checkpoint), cut at Llama 3's end of turn. Random weights, but one stage-2 step on short easy-vqa answers: the
    model answers in a word and ends its turn (``<|eot_id|>``, 128009), which the reply must not run past."""
    from sweeps.cli import main
    from tests.greedy import greedy_answer
    from vlm_core.data.images import open_rgb

    model = trained["model"]
    image = corpus / "images" / trained["images"][0]
    question = "What shape is it?"
    rc = main(["chat", "--checkpoint", str(trained["stage2"].checkpoint), "--image", str(image),
               "--max_new_tokens", "4", question])
    said = capsys.readouterr().out.strip()
    want, tokens = greedy_answer(model, model.vision.preprocess([open_rgb(image)]), question, 4)
    assert rc == 0 and said == want, (said, want, tokens)
    assert said and len(tokens) < 4 and tokens[-1] == 128009, tokens  # stopped at the end of turn, within budget
