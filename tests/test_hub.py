"""Hub models pinned: the paper preset's revisions, and the revision reaching the encoder, the LLM and its tokenizer.

    pytest -q tests/test_hub.py
"""

from __future__ import annotations

import re

import pytest

from vlm_core.assets.hub import (
    LLAMA32_1B,
    OPUS_MT_EN_ID,
    PINNED_REVISIONS,
    TINYCLIP,
    ModelSourceError,
    asset_folder,
    resolve,
)
from vlm_core.presets import get_preset

COMMIT = re.compile(r"^[0-9a-f]{40}$")


def test_the_paper_preset_pins_commits_that_hold_safetensors():
    cfg = get_preset("paper")
    assert (cfg.vision.source, cfg.lm.source) == (TINYCLIP, LLAMA32_1B)
    assert COMMIT.match(cfg.vision.revision) and COMMIT.match(cfg.lm.revision)
    assert cfg.vision.revision == PINNED_REVISIONS[TINYCLIP] and cfg.lm.revision == PINNED_REVISIONS[LLAMA32_1B]
    # TinyCLIP's main gained model.safetensors in PR #2 (95ec819); the pickle-only commits before it are not pinned
    assert cfg.vision.revision.startswith("95ec819")
    # the translator's main is pickle-only: the pin is the conversion bot's pull request
    assert PINNED_REVISIONS[OPUS_MT_EN_ID].startswith("refs/pr/")


def test_the_readme_documents_the_pinned_translator_command():
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert f"--translate.model {OPUS_MT_EN_ID} --translate.revision {PINNED_REVISIONS[OPUS_MT_EN_ID]}" in readme
    for repo, rev in PINNED_REVISIONS.items():
        assert f"`{repo}`" in readme and f"`{rev}`" in readme, repo


def _hub_layout(tmp_path, repo: str, revision: str, save):
    folder = asset_folder(tmp_path / "assets", repo, revision)
    folder.mkdir(parents=True)
    save(folder)
    return tmp_path / "assets"


def test_the_encoder_and_llm_load_their_pinned_revision_from_an_assets_folder(tmp_path, monkeypatch, tiny_cfg):
    """The revision reaches every from_pretrained: weights, image processor, tokenizer. A folder holding another
    revision is not used for it (the hub would be asked, which offline fails naming the model)."""
    from transformers import CLIPVisionConfig, CLIPVisionModel

    from vlm_core.config import LMConfig, VisionConfig
    from vlm_core.model.language_model import build_language_model, load_tokenizer
    from vlm_core.model.vision.encoder import build_vision_tower
    from vlm_core.model.vision.processors import image_processor

    def save_clip(folder):
        CLIPVisionModel(CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=2, image_size=32, patch_size=16)).save_pretrained(folder)
        image_processor(32).save_pretrained(folder)

    root = _hub_layout(tmp_path, "owner/clip", "c" * 40, save_clip)
    llm_folder = tmp_path / "llm"
    lm, tok, _ = build_language_model(tiny_cfg.lm)
    lm.save_pretrained(llm_folder)
    tok.save_pretrained(llm_folder)
    import shutil

    shutil.copytree(llm_folder, asset_folder(root, "owner/llm", "l" * 40))
    monkeypatch.setenv("VLM_SWEEP_ASSETS", str(root))
    tower = build_vision_tower(VisionConfig(source="owner/clip", revision="c" * 40))
    assert tower.num_layers == 2 and tower.image_size == 32
    assert resolve("owner/clip", "c" * 40, "vision.source").path == str(asset_folder(root, "owner/clip", "c" * 40))
    model, tokenizer, _ = build_language_model(LMConfig(source="owner/llm", revision="l" * 40))
    assert model.config.num_hidden_layers == tiny_cfg.lm.num_layers and len(tokenizer) == len(tok)
    # another revision is not in the folder: offline, loading it fails naming the model instead of using the copy
    with pytest.raises(ModelSourceError, match=r"lm.source owner/llm@0{40} cannot be loaded .*assets download"):
        load_tokenizer(LMConfig(source="owner/llm", revision="0" * 40))
    with pytest.raises(ModelSourceError, match=r"vision.source owner/clip@0{40} cannot be loaded"):
        build_vision_tower(VisionConfig(source="owner/clip", revision="0" * 40))


def test_a_local_path_without_a_model_and_a_malformed_id_are_named():
    with pytest.raises(ModelSourceError, match="no config.json there"):
        resolve("/nonexistent/model", None, "vision.source")
    with pytest.raises(ModelSourceError, match="neither a local folder nor a hub id"):
        resolve("not a hub id", None, "lm.source")


def test_relative_assets_folders_become_absolute_and_known_ids_get_their_pin(tmp_path, monkeypatch, caplog):
    from data_pipeline.config import EmbedConfig
    from data_pipeline.translate import TranslatorConfig
    from sweeps.driver import SweepConfig
    from vlm_core.assets.hub import MINILM, localize

    (tmp_path / "assets").mkdir()
    monkeypatch.chdir(tmp_path)
    cfg = SweepConfig(data="d", images="i", preset="paper", assets="assets")
    assert cfg.assets == str(tmp_path / "assets")  # trial workers run in other directories
    assert localize(TINYCLIP, PINNED_REVISIONS[TINYCLIP], "assets") == TINYCLIP
    assert "is not in the assets folder" in caplog.text  # and it loads from the hub: said, not silent
    assert EmbedConfig(model=MINILM).revision == PINNED_REVISIONS[MINILM]
    assert EmbedConfig(model=MINILM, revision="abc").revision == "abc" and EmbedConfig().revision is None
    assert TranslatorConfig(name="seq2seq", model=OPUS_MT_EN_ID).revision == PINNED_REVISIONS[OPUS_MT_EN_ID]
