"""LoRA in stage 2 (``train.lm_tuning: lora``, peft): only the projector and the adapters train, the base LLM stays
as built; checkpoints hold the adapters and the projector only and load back to the same logits; a resumed run
continues exactly; chat answers from such a checkpoint; LLaVA export merges the adapters (the same logits).

    pytest -q tests/test_lora.py
"""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from tests.greedy import greedy_answer
from tests.run_state import assert_identical, checkpoint_weights, optimizer_moments, same_steps, step_log
from vlm_core.base.errors import ConfigError
from vlm_core.config import LoraSpec, TrainConfig
from vlm_core.data.dataset import ConversationDataset, read_records
from vlm_core.model.lora import is_lora
from vlm_core.model.vlm import VisionLanguageModel
from vlm_core.training.checkpoint import load_vlm
from vlm_core.training.loop import train

CONV = [{"from": "human", "value": "<image>\nWhat shape is it?"}, {"from": "gpt", "value": "A circle."}]
LORA = dict(stage=2, lm_tuning="lora", lora=LoraSpec(rank=4, alpha=8, dropout=0.0), lr=5e-3, seed=7)


def _dataset(model, corpus, n=12):
    records = read_records(corpus / "sharegpt4v_sample.jsonl")[:n]
    return ConversationDataset(records, model.formatter, model.vision.preprocess, corpus / "images")


def _logits(model):
    enc = model.formatter.encode(CONV)
    ids = torch.tensor([enc.input_ids])
    g = torch.Generator().manual_seed(3)
    pixels = torch.randn(1, 3, model.vision.image_size, model.vision.image_size, generator=g)
    with torch.no_grad():
        return model.eval()(ids, torch.ones_like(ids), pixel_values=pixels).logits


@pytest.fixture(scope="module")
def lora_run(tiny_cfg, corpus, tmp_path_factory):
    """A stage-2 LoRA run of 2 epochs × 3 steps on the tiny model (its checkpoints and the trained model)."""
    out = tmp_path_factory.mktemp("lora")
    model = VisionLanguageModel.build(tiny_cfg)
    base = {k: v.clone() for k, v in model.lm.state_dict().items()}
    result = train(model, TrainConfig(epochs=2, batch_size=4, **LORA), _dataset(model, corpus), None, out / "run")
    return model, base, result, out


def test_only_the_projector_and_the_adapters_train(lora_run, tiny_cfg):
    model, base, result, _ = lora_run
    assert is_lora(model.lm) and result.steps == 6
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(n.startswith("projector.") or "lora_" in n for n in trainable)
    assert any("lora_B" in n for n in trainable) and not any(n.startswith("vision.") for n in trainable)
    adapters = {n: p for n, p in model.lm.named_parameters() if "lora_B" in n}
    assert {n.split(".")[-4] for n in adapters} == set(LoraSpec().target_modules)  # every linear layer of Llama
    assert any(p.abs().sum() > 0 for p in adapters.values())  # B starts at 0: the adapters did train
    merged_away = {k.replace("base_model.model.", "").replace(".base_layer", ""): v
                   for k, v in model.lm.state_dict().items() if "lora_" not in k}
    assert merged_away.keys() == base.keys()
    for k, v in base.items():  # the base LLM is exactly as built
        assert torch.equal(merged_away[k], v), k


def test_a_lora_checkpoint_holds_the_adapters_and_loads_to_the_same_logits(lora_run):
    model, _, result, _ = lora_run
    ckpt = result.checkpoint
    files = json.loads((ckpt / "checkpoint.json").read_text())
    assert files["lm_tuning"] == "lora"
    assert sorted(files["files"]) == ["lm_adapter/adapter_model.safetensors", "projector.safetensors"]
    assert not (ckpt / "lm").exists()  # no copy of the base LLM
    config = json.loads((ckpt / "lm_adapter" / "adapter_config.json").read_text())
    assert config["r"] == 4 and config["lora_alpha"] == 8
    loaded = load_vlm(ckpt)
    assert is_lora(loaded.lm)
    assert torch.equal(_logits(loaded), _logits(model))  # the same weights, the same computation: bit for bit


def test_a_resumed_lora_run_continues_exactly(tiny_cfg, corpus, tmp_path, lora_run):
    """Crash after step 2 of 6, resume in a new model from the step-2 checkpoint: the same run bit for bit as the
    uninterrupted ``lora_run`` (deterministic on CPU) — every step's loss, LR and gradient norm, the trained
    projector and adapters in the final checkpoint, and the AdamW moments of both."""
    _, _, full, _ = lora_run
    cfg = TrainConfig(epochs=2, batch_size=4, checkpoint_every_steps=2, **LORA)

    class Interrupted(RuntimeError):
        pass

    def crash(rec):
        if rec.step == 2:
            raise Interrupted

    model = VisionLanguageModel.build(tiny_cfg)
    with pytest.raises(Interrupted):
        train(model, cfg, _dataset(model, corpus), None, tmp_path / "run", on_step=crash)
    model = VisionLanguageModel.build(tiny_cfg)  # a new process
    resumed = train(model, cfg, _dataset(model, corpus), None, tmp_path / "run",
                    resume_from=tmp_path / "run" / "checkpoints" / "latest")
    assert resumed.steps == full.steps == 6
    got, want = step_log(tmp_path / "run"), step_log(full.checkpoint.parent.parent)
    assert [r["step"] for r in got] == [1, 2, 3, 4, 5, 6]
    same_steps(got, want)
    weights = checkpoint_weights(resumed.checkpoint)
    assert {k.split(":")[0] for k in weights} == {"projector.safetensors", "lm_adapter/adapter_model.safetensors"}
    assert_identical(weights, checkpoint_weights(full.checkpoint), "projector and adapters")
    assert_identical(optimizer_moments(resumed.checkpoint), optimizer_moments(full.checkpoint), "AdamW state")


def test_chat_answers_from_a_lora_checkpoint(lora_run, capsys):
    """``vlm-sweep chat`` on the checkpoint prints the greedy answer of the model that was trained (computed here by
    hand from the in-memory model: a forward pass per token, no ``generate``, no checkpoint); its adapters are part
    of that answer (the base LLM alone gives other tokens)."""
    from sweeps.cli import main
    from vlm_core.data.images import open_rgb

    model, _, result, out = lora_run
    image = out / "red.png"
    Image.new("RGB", (40, 40), (220, 20, 20)).save(image)
    question = "What colour is it?"
    code = main(["chat", "--checkpoint", str(result.checkpoint), "--image", str(image), "--max_new_tokens", "4",
                 question])
    said = capsys.readouterr().out.strip()
    pixels = model.vision.preprocess([open_rgb(image)])
    want, tokens = greedy_answer(model, pixels, question, 4)
    assert code == 0 and said == want, (said, want, tokens)
    assert said  # the tiny LLM's words, not only special tokens
    with model.lm.disable_adapter():
        _, base_tokens = greedy_answer(model, pixels, question, 4)
    assert base_tokens != tokens


def test_llava_export_merges_the_adapters(lora_run, tmp_path):
    from transformers import LlavaForConditionalGeneration

    from vlm_core.evaluation.export import export_llava

    model = lora_run[0]
    assert model.cfg.projector.feature_norm == "none"  # tiny: exportable
    out = export_llava(model, tmp_path / "llava")
    llava = LlavaForConditionalGeneration.from_pretrained(out).eval()
    assert is_lora(model.lm)  # the model itself keeps its adapters
    enc = model.formatter.encode_prompt(CONV)
    ids = torch.tensor([enc.input_ids])
    n = model.num_image_tokens
    expanded = torch.cat([ids[:, :enc.image_index], torch.full((1, n), model.image_token.id),
                          ids[:, enc.image_index + 1:]], 1)
    pixels = torch.randn(1, 3, model.vision.image_size, model.vision.image_size,
                         generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = model.eval()(ids, torch.ones_like(ids), pixel_values=pixels).logits
        theirs = llava(input_ids=expanded, attention_mask=torch.ones_like(expanded), pixel_values=pixels).logits
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


def test_lora_is_refused_outside_stage_2():
    with pytest.raises(ConfigError, match="train.lm_tuning: lora tunes the LLM, which only stage 2 trains"):
        TrainConfig(stage=1, lm_tuning="lora")
    with pytest.raises(ConfigError, match=r"train.lm_tuning: unknown LLM tuning 'qlora'; choose one of \['full'"):
        TrainConfig(stage=2, lm_tuning="qlora")
    with pytest.raises(ConfigError, match="train.lora.rank: must be >= 1"):
        LoraSpec(rank=0)
