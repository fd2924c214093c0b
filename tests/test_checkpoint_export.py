"""Checkpoints round-trip through safetensors + JSON; corruption is detected; LLaVA export is exact."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from vlm_core.base.errors import ConfigError
from vlm_core.config import VLMConfig
from vlm_core.model.vlm import VisionLanguageModel
from vlm_core.training.checkpoint import CheckpointError, export_weights, load_vlm, save_checkpoint

CONV = [{"from": "human", "value": "<image>\nWhat shape is it?"}, {"from": "gpt", "value": "A circle."}]


def _inputs(model):
    enc = model.formatter.encode(CONV)
    ids = torch.tensor([enc.input_ids])
    torch.manual_seed(3)
    return ids, torch.ones_like(ids), torch.randn(1, 3, model.vision.image_size, model.vision.image_size)


def _perturbed(cfg: VLMConfig) -> VisionLanguageModel:
    """A model whose projector and LLM differ from a freshly built one (as after training)."""
    model = VisionLanguageModel.build(cfg).eval()
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in [*model.projector.parameters(), *model.lm.parameters()]:
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model


@pytest.mark.parametrize("stage", [1, 2])
def test_checkpoint_round_trip_gives_identical_logits(stage, tiny_cfg, tmp_path):
    model = _perturbed(tiny_cfg)
    ids, mask, pixels = _inputs(model)
    path = save_checkpoint(model, tmp_path / "ckpt", stage=stage, step=1, epoch=1)
    assert (path / "lm").is_dir() == (stage == 2)
    assert not list(path.rglob("*.bin")) and not list(path.rglob("*.pkl"))
    loaded = load_vlm(path).eval()
    with torch.no_grad():
        a, b = model(ids, mask, pixel_values=pixels).logits, loaded(ids, mask, pixel_values=pixels).logits
    if stage == 2:
        assert torch.equal(a, b)  # the same weights, the same computation: bit for bit
    else:  # stage 1 saves only the projector: the LLM comes back as it was built, projector as trained
        for pa, pb in zip(model.projector.parameters(), loaded.projector.parameters()):
            assert torch.equal(pa, pb)
        assert not torch.allclose(a, b)


def test_corrupt_checkpoint_is_detected(tiny_cfg, tmp_path):
    model = VisionLanguageModel.build(tiny_cfg)
    path = save_checkpoint(model, tmp_path / "ckpt", stage=1, step=1, epoch=1, training_state={"step": 1})
    f = path / "projector.safetensors"
    data = bytearray(f.read_bytes())
    data[-1] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256"):
        load_vlm(path)
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        load_vlm(tmp_path)


def test_a_checkpoint_cannot_opt_itself_into_remote_code(tiny_cfg, tmp_path, caplog):
    import json

    from vlm_core.training.checkpoint import load_vlm_config

    path = save_checkpoint(VisionLanguageModel.build(tiny_cfg), tmp_path / "ckpt", stage=1, step=1, epoch=1)
    cfg_file = path / "vlm_config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg["lm"]["trust_remote_code"] = True  # e.g. a checkpoint downloaded from someone else
    cfg_file.write_text(json.dumps(cfg))
    assert load_vlm_config(path).lm.trust_remote_code is False
    assert "trust_remote_code" in caplog.text
    assert load_vlm_config(path, trust_remote_code=True).lm.trust_remote_code is True  # the caller opts in


def test_training_state_refuses_pickled_code(tiny_cfg, tmp_path, monkeypatch):
    """training_state.pt is the one torch.save'd file; loading it never unpickles objects, even when the hash
    in checkpoint.json was forged to match."""
    import hashlib
    import json
    import pickle

    from vlm_core.training.checkpoint import load_training_state

    path = save_checkpoint(VisionLanguageModel.build(tiny_cfg), tmp_path / "ckpt", stage=1, step=1, epoch=1,
                           training_state={"step": 1})
    state = path / "training_state.pt"
    monkeypatch.setenv("PYTEST_TMP_PWNED", str(tmp_path / "pwned"))
    torch.save({"step": 1, "payload": Exploit()}, state)
    meta = json.loads((path / "checkpoint.json").read_text())
    meta["training_state_sha256"] = hashlib.sha256(state.read_bytes()).hexdigest()
    (path / "checkpoint.json").write_text(json.dumps(meta))
    with pytest.raises(pickle.UnpicklingError):
        load_training_state(path)
    assert not (tmp_path / "pwned").exists()


class Exploit:
    def __reduce__(self):
        import os

        return os.system, (f"touch {os.environ.get('PYTEST_TMP_PWNED', '/nonexistent/pwned')}",)


def test_final_weights_share_files_and_drop_training_state(tiny_cfg, tmp_path):
    """``final/`` (``export_weights``) publishes the checkpoint's weights hard-linked, not copied: every file but
    the optimizer state and ``checkpoint.json`` is the checkpoint's own inode. ``checkpoint.json`` is a new file
    without the training state's hash; the checkpoint's own stays as it was (a rewrite in place through the link
    would change both)."""
    import os

    model = VisionLanguageModel.build(tiny_cfg)
    src = save_checkpoint(model, tmp_path / "ckpt", stage=2, step=1, epoch=1, training_state={"step": 1})
    src_meta = (src / "checkpoint.json").read_text()
    final = export_weights(src, tmp_path / "final")
    assert not (final / "training_state.pt").exists() and (src / "training_state.pt").exists()
    shared = sorted(str(p.relative_to(src)) for p in src.rglob("*")
                    if p.is_file() and p.name not in ("training_state.pt", "checkpoint.json"))
    assert {"projector.safetensors", "lm/model.safetensors", "lm/config.json", "vlm_config.json"} <= set(shared)
    assert sorted(str(p.relative_to(final)) for p in final.rglob("*") if p.is_file()) == sorted(
        shared + ["checkpoint.json"])
    for rel in shared:
        a, b = os.stat(src / rel), os.stat(final / rel)
        assert (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino) and a.st_nlink == b.st_nlink == 2, rel
    assert os.stat(src / "checkpoint.json").st_ino != os.stat(final / "checkpoint.json").st_ino
    assert os.stat(src / "checkpoint.json").st_nlink == 1
    assert (src / "checkpoint.json").read_text() == src_meta
    assert "training_state_sha256" in json.loads(src_meta)
    assert "training_state_sha256" not in json.loads((final / "checkpoint.json").read_text())
    load_vlm(final)  # hashes verify


@pytest.mark.parametrize("projector", ["mlp2x_gelu", "linear"])
def test_llava_export_has_identical_logits(projector, tiny_cfg, tmp_path):
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from vlm_core.evaluation.export import export_llava

    cfg = VLMConfig.from_dict(tiny_cfg.to_dict())
    cfg.projector.name = projector
    model = _perturbed(cfg)
    out = export_llava(model, tmp_path / "llava")
    llava = LlavaForConditionalGeneration.from_pretrained(out).eval()
    processor = AutoProcessor.from_pretrained(out)

    image = Image.fromarray((torch.rand(50, 70, 3, generator=torch.Generator().manual_seed(0)) * 255).byte().numpy())
    enc = model.formatter.encode_prompt(CONV)
    ids = torch.tensor([enc.input_ids])
    pixels = model.vision.preprocess([image])
    n = model.num_image_tokens
    expanded = torch.cat([ids[:, :enc.image_index], torch.full((1, n), model.image_token.id),
                          ids[:, enc.image_index + 1:]], 1)
    # the exported processor produces exactly these inputs from text + image
    proc = processor(images=[image], text=[model.tokenizer.decode(enc.input_ids)], return_tensors="pt")
    assert torch.equal(proc["input_ids"], expanded)
    torch.testing.assert_close(proc["pixel_values"], pixels)
    with torch.no_grad():
        ours = model(ids, torch.ones_like(ids), pixel_values=pixels).logits
        theirs = llava(input_ids=expanded, attention_mask=torch.ones_like(expanded), pixel_values=pixels).logits
    assert torch.equal(ours, theirs)  # the same weights through the same layers: bit for bit


def test_dense_connector_export_is_refused_by_name(tiny_cfg, tmp_path):
    from vlm_core.evaluation.export import export_llava

    cfg = VLMConfig.from_dict(tiny_cfg.to_dict())
    cfg.projector.name = "dense_connector"
    with pytest.raises(ConfigError, match="dense_connector"):
        export_llava(VisionLanguageModel.build(cfg), tmp_path / "x")


def _dense_cfg(tiny_cfg):
    cfg = VLMConfig.from_dict(tiny_cfg.to_dict())
    cfg.projector.name, cfg.projector.dense_groups = "dense_connector", 2
    return cfg


def _forget_selection(path):
    """What a checkpoint written before layer selections were recorded looks like (checkpoint.json is not
    hash-checked: only weight files are)."""
    meta = json.loads((path / "checkpoint.json").read_text())
    del meta["projector_selection"]
    (path / "checkpoint.json").write_text(json.dumps(meta))


def test_checkpoints_record_the_layer_selection(tiny_cfg, tmp_path):
    path = save_checkpoint(VisionLanguageModel.build(_dense_cfg(tiny_cfg)), tmp_path / "ckpt", stage=1, step=1,
                           epoch=1)
    recorded = json.loads((path / "checkpoint.json").read_text())["projector_selection"]
    # tiny's encoder has 4 layers: G = 2 groups of hidden_states[0..3], main hidden_states[-2] = 3
    assert recorded == {"scheme": 2, "main": 3, "drop_cls": True, "groups": [[0, 1], [2, 3]]}
    load_vlm(path)  # the same selection loads


def test_a_dense_checkpoint_from_before_the_reference_grouping_is_refused(tiny_cfg, tmp_path):
    from vlm_core.training.checkpoint import check_projector_selection

    path = save_checkpoint(_perturbed(_dense_cfg(tiny_cfg)), tmp_path / "old", stage=1, step=1, epoch=1)
    _forget_selection(path)
    with pytest.raises(CheckpointError, match=r"old: a dense_connector checkpoint written before layer selections "
                                              r"were recorded .*hidden_states\[1\.\.L\].*\[\[0, 1\], \[2, 3\]\].*"
                                              r"train stage 1 of this config again"):
        load_vlm(path)
    with pytest.raises(CheckpointError, match="before layer selections were recorded"):
        check_projector_selection(path)  # what the sweep asks before any stage-2 trial
    # an MLP checkpoint of that time read the same main feature: it still loads
    mlp = save_checkpoint(VisionLanguageModel.build(tiny_cfg), tmp_path / "old-mlp", stage=1, step=1, epoch=1)
    _forget_selection(mlp)
    check_projector_selection(mlp)
    load_vlm(mlp)


def test_a_checkpoint_trained_on_another_selection_is_refused(tiny_cfg, tmp_path):
    path = save_checkpoint(VisionLanguageModel.build(_dense_cfg(tiny_cfg)), tmp_path / "ckpt", stage=1, step=1,
                           epoch=1)
    meta = json.loads((path / "checkpoint.json").read_text())
    meta["projector_selection"]["groups"] = [[1, 2], [3, 4]]  # the scheme-1 grouping, recorded
    (path / "checkpoint.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"trained on the layer selection .*\[\[1, 2\], \[3, 4\]\].*this model's "
                                              r"is .*\[\[0, 1\], \[2, 3\]\]"):
        load_vlm(path)
