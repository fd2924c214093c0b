"""`vlm-sweep assets convert` (pickle → safetensors), `assets download` offline, and loading from an assets folder.

    HF_HUB_OFFLINE=1 python -m pytest -q tests/test_assets_convert.py
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from data_pipeline.translate import TranslatorConfig, build_translator
from sweeps.cli import main
from tests.test_translate import EN_SENTENCES, ID_SENTENCES
from vlm_core.assets import hub
from vlm_core.assets.convert import convert_to_safetensors
from vlm_core.assets.download import model_assets
from vlm_core.assets.hub import ModelSourceError
from vlm_core.base.errors import AssetError
from vlm_core.presets import get_preset

TOKENIZER_FILES = ["source.spm", "target.spm", "tokenizer_config.json", "vocab.json"]


def assert_same_model(translator, reference, sentences=EN_SENTENCES[:4]) -> None:
    """The loaded translator's model computes exactly what ``reference`` (the in-memory model) computes."""
    tok = translator.tokenizer
    enc = tok(sentences, return_tensors="pt", padding=True)
    labels = tok(text_target=ID_SENTENCES[:len(sentences)], return_tensors="pt", padding=True)["input_ids"]
    with torch.no_grad():
        assert torch.equal(translator.model(**enc, labels=labels).logits, reference(**enc, labels=labels).logits)
        kwargs = dict(max_new_tokens=6, num_beams=1, do_sample=False)
        assert torch.equal(translator.model.generate(**enc, **kwargs), reference.generate(**enc, **kwargs))
    for name, tensor in reference.state_dict().items():  # every weight and buffer, the tied ones included
        assert torch.equal(translator.model.state_dict()[name], tensor), name


def test_a_pickled_folder_is_refused_then_converted_by_the_cli_and_translates_the_same(spm_marian, tmp_path,
                                                                                       capsys):
    src = spm_marian.save_pickled(tmp_path / "pickled")
    with pytest.raises(ModelSourceError, match=r"has only pytorch_model\.bin.*`vlm-sweep assets convert "):
        build_translator(TranslatorConfig(name="seq2seq", model=str(src)))

    dst = tmp_path / "converted"
    assert main(["assets", "convert", str(src), str(dst)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["converted"] == ["pytorch_model.bin"] and report["written"] == ["model.safetensors"]
    assert report["tensors"] == len(spm_marian.model.state_dict()) and report["cloned_aliases"] == 3
    files = sorted(p.name for p in dst.iterdir())
    assert files == sorted(["config.json", "generation_config.json", "model.safetensors", *TOKENIZER_FILES])
    assert not list(dst.rglob("*.bin")) and not list(tmp_path.glob(".converted.convert-*"))  # no temp left
    from safetensors import safe_open

    with safe_open(dst / "model.safetensors", "pt") as f:
        assert f.metadata() == {"format": "pt"}

    translator = build_translator(TranslatorConfig(name="seq2seq", model=str(dst)))
    assert_same_model(translator, spm_marian.model)
    word = spm_marian.target_piece.lstrip("▁")
    assert [t.text for t in translator.translate(["A red cat sits on the mat.", "What is in the image?"])] == [
        word, word]  # the generation config (forced first token) came along


def test_a_sharded_pickle_becomes_safetensors_shards_with_a_rewritten_index(spm_marian, tmp_path):
    src = spm_marian.save_pickled(tmp_path / "sharded", shards=2)
    dst = tmp_path / "out"
    result = convert_to_safetensors(src, dst)
    shards = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    assert result["written"] == [*shards, "model.safetensors.index.json"]
    index = json.loads((dst / "model.safetensors.index.json").read_text())
    pickled = json.loads((src / "pytorch_model.bin.index.json").read_text())["weight_map"]
    assert index["weight_map"] == {k: v.replace("pytorch_model", "model").replace(".bin", ".safetensors")
                                   for k, v in pickled.items()}
    assert index["metadata"]["total_size"] == result["bytes"] > 0
    assert not (dst / "pytorch_model.bin.index.json").exists() and not list(dst.glob("*.bin"))
    assert_same_model(build_translator(TranslatorConfig(name="seq2seq", model=str(dst))), spm_marian.model)


class RunsCode:
    """What a malicious pickle holds: unpickling it calls ``os.system``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_a_pickle_that_would_run_code_is_refused_without_running(tmp_path, capsys, writer):
    src, marker = tmp_path / "forged", tmp_path / "marker"
    src.mkdir()
    (src / "config.json").write_text("{}")
    payload = {"weight": torch.zeros(3), "bias": RunsCode(marker)}
    with (src / "pytorch_model.bin").open("wb") as f:
        torch.save(payload, f) if writer == "torch.save" else pickle.dump(payload, f)
    assert not marker.exists()
    assert main(["assets", "convert", str(src), str(tmp_path / "dst")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "refused by torch.load(weights_only=True), not converted" in err[0], err
    assert str(src / "pytorch_model.bin") in err[0]
    assert not marker.exists(), "the pickle ran code"
    assert not (tmp_path / "dst").exists() and not list(tmp_path.glob(".dst.convert-*"))
    try:  # control: the file is a real threat, loading it the unsafe way runs its code
        torch.load(src / "pytorch_model.bin", weights_only=False)
    except RuntimeError:  # pickle.dump's file is no torch file, but unpickling its header already ran the code
        pass
    assert marker.exists()


def test_assets_is_a_command_group(capsys):
    with pytest.raises(SystemExit) as e:
        main(["assets"])
    assert e.value.code == 2 and "one of {prepare,convert,download,paper-shaped}" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["assets", "convert", "only-src"])
    assert "assets.convert.dst" in capsys.readouterr().err


def test_convert_refuses_what_it_cannot_convert(spm_marian, tmp_path):
    pickled = spm_marian.save_pickled(tmp_path / "pickled")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(AssetError, match=r"DST .*full already exists and is not an empty folder"):
        convert_to_safetensors(pickled, tmp_path / "full")
    with pytest.raises(AssetError, match="already has safetensors weights; load it as it is"):
        convert_to_safetensors(spm_marian.folder, tmp_path / "a")
    (tmp_path / "nothing").mkdir()
    (tmp_path / "nothing" / "config.json").write_text("{}")
    with pytest.raises(AssetError, match=r"no pickled PyTorch weights to convert \(pytorch_model\.bin"):
        convert_to_safetensors(tmp_path / "nothing", tmp_path / "b")
    with pytest.raises(AssetError, match="is not a folder"):
        convert_to_safetensors(tmp_path / "missing", tmp_path / "c")
    with pytest.raises(AssetError, match="is inside SRC"):
        convert_to_safetensors(pickled, pickled / "sub")
    (tmp_path / "empty").mkdir()  # an empty DST is fine
    assert convert_to_safetensors(pickled, tmp_path / "empty")["tensors"] > 0
    assert (tmp_path / "empty" / "model.safetensors").is_file()


# ------------------------------------------------------------------------------------------- assets folder


def test_a_hub_id_loads_from_the_assets_folder_at_its_revision(spm_marian, tmp_path, monkeypatch):
    repo, revision = hub.OPUS_MT_EN_ID, "0123abcd"
    folder = hub.asset_folder(tmp_path, repo, revision)
    assert folder == tmp_path / "Helsinki-NLP--opus-mt-en-id" / "0123abcd"
    shutil.copytree(spm_marian.folder, folder)
    monkeypatch.setenv(hub.ASSETS_ENV, str(tmp_path))
    resolved = hub.resolve(repo, revision, "translate.model")
    assert resolved.path == str(folder) and resolved.kwargs == {}
    other = hub.resolve(repo, "fedcba98", "translate.model")  # another revision is not taken from there
    assert other.path == repo and other.kwargs == {"revision": "fedcba98"}

    from transformers import MarianMTModel

    model = hub.load_weights(MarianMTModel, repo, revision, "translate.model")  # HF_HUB_OFFLINE=1: no hub
    assert model.name_or_path == str(folder)
    translator = build_translator(TranslatorConfig(name="seq2seq", model=repo, revision=revision))
    assert translator.id == f"seq2seq/v1:{repo}@{revision}:>:max_new_tokens=256"
    assert_same_model(translator, spm_marian.model)


def test_the_paper_preset_lists_each_hub_model_once_at_its_pin():
    assets = {a.repo_id: a for a in model_assets(get_preset("paper"))}
    assert list(assets) == [hub.TINYCLIP, hub.LLAMA32_1B, hub.MINILM, hub.OPUS_MT_EN_ID]
    assert {k: a.revision for k, a in assets.items()} == {k: hub.PINNED_REVISIONS[k] for k in assets}
    assert assets[hub.TINYCLIP].roles == ["vision.source"] and assets[hub.OPUS_MT_EN_ID].roles == ["translate.model"]
    assert [a.repo_id for a in model_assets(get_preset("paper"), translator=False)] == [hub.TINYCLIP, hub.LLAMA32_1B,
                                                                               hub.MINILM]
    assert [a.repo_id for a in model_assets(get_preset("tiny"), translator=False)] == [hub.MINILM]  # tiny: nothing else


def test_download_without_a_reachable_hub_fails_in_one_line_naming_the_model(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_"))}
    env.update(HF_ENDPOINT="http://127.0.0.1:9", HF_HOME=str(tmp_path / "hf-home"))  # port 9: refused at once
    r = subprocess.run([sys.executable, "-m", "sweeps.cli", "assets", "download", "--preset", "paper", "--to",
                        str(tmp_path / "assets")], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 2, r.stderr[-3000:]
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr[-3000:]
    assert f"cannot fetch {hub.TINYCLIP}@{hub.PINNED_REVISIONS[hub.TINYCLIP]} (vision.source)" in lines[0]
    assert "from http://127.0.0.1:9" in lines[0] and "Connection refused" in lines[0]
    assert not (tmp_path / "assets" / "assets.json").exists()
    assert not (tmp_path / "assets" / hub.TINYCLIP.replace("/", "--")).exists()
