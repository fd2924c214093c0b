"""The real packaged assets load offline: SmolLM2-135M-Instruct (from GGUF) and all-MiniLM-L6-v2.

    HF_HUB_OFFLINE=1 python -m pytest -q tests/test_assets.py
"""

from __future__ import annotations

import json

import torch

from vlm_core.assets.packaged import minilm_path, smollm2_folder, smollm2_gguf_path
from vlm_core.model.vision.efficientnet import packaged_folder as efficientnet_lite0_folder


def test_smollm2_converts_once_and_answers_offline():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert smollm2_gguf_path().is_file()
    folder = smollm2_folder()
    assert smollm2_folder() == folder and (folder / "model.safetensors").is_file()  # cached, not reconverted
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    assert model.config.model_type == "llama" and model.config.hidden_size == 576 and len(tok) == 49152
    inputs = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                     add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    assert "Paris" in tok.decode(out[0, inputs["input_ids"].shape[1]:])


def test_assets_prepare_command_prints_the_packaged_assets(capsys):
    from sweeps.cli import main

    assert main(["assets", "prepare"]) == 0  # formerly plain `vlm-sweep assets`
    assert json.loads(capsys.readouterr().out) == {"smollm2": str(smollm2_folder()), "minilm": str(minilm_path()),
                                                   "efficientnet-lite0": str(efficientnet_lite0_folder())}


def test_local_preset_builds_a_vlm_on_real_smollm2():
    from vlm_core.model.vlm import VisionLanguageModel
    from vlm_core.presets import get_preset

    model = VisionLanguageModel.build(get_preset("local"))
    assert model.lm.config.hidden_size == 576 and model.num_image_tokens == 49
    enc = model.formatter.encode([{"from": "human", "value": "<image>\nHi"}, {"from": "gpt", "value": "Hello!"}])
    ids = torch.tensor([enc.input_ids])
    out = model(ids, torch.ones_like(ids), torch.tensor([enc.labels]), pixel_values=torch.zeros(1, 3, 112, 112))
    assert torch.isfinite(out.loss) and out.logits.shape[1] == len(enc.input_ids) + 48


def test_minilm_embeds_384d_with_meaningful_similarity():
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(minilm_path()), device="cpu")
    emb = model.encode(["A cat sits on the mat.", "A kitten is sitting on a rug.", "Stock prices fell sharply."],
                       normalize_embeddings=True, convert_to_tensor=True)
    assert emb.shape == (3, 384)
    sim = emb @ emb.T
    assert sim[0, 1] > 0.5 > sim[0, 2]
