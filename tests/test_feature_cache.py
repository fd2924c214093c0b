"""The frozen encoder's feature cache: built on Ray Data, exactly the projector's input, refused when stale or
built for another encoder / selection, and training from it matches encoding on the fly.

    pytest -q tests/test_feature_cache.py
"""

from __future__ import annotations

import logging
import shutil

import pyarrow.parquet as pq
import pytest
import torch

from tests.run_state import (
    assert_identical,
    checkpoint_weights,
    max_difference,
    optimizer_moments,
    same_epochs,
    same_steps,
    step_log,
)
from vlm_core.config import VLMConfig
from vlm_core.data.feature_cache import FeatureCache, FeatureCacheError, FeatureEncoder, model_cache_key
from vlm_core.data.images import open_rgb
from vlm_core.model.vlm import VisionLanguageModel


def _images(variants) -> list[str]:
    return [img for f in ("train", "val") for img in
            pq.read_table(variants / "20kUmap" / f"{f}-00000.parquet", columns=["image"]).column("image").to_pylist()]


@pytest.fixture(scope="module")
def image_root(corpus, variants, tmp_path_factory):
    """A private copy of the images the 20kUmap variant uses (tests here change files in it)."""
    root = tmp_path_factory.mktemp("images")
    for img in set(_images(variants)):
        (root / img).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(corpus / "images" / img, root / img)
    return root


@pytest.fixture(scope="module")
def built(ray_local, tiny_cfg, variants, image_root, tmp_path_factory):
    from data_pipeline.features import build_feature_cache

    root = tmp_path_factory.mktemp("features")
    return build_feature_cache(tiny_cfg, _images(variants), image_root, root), root


def test_the_cache_holds_exactly_the_projector_input_of_every_image(built, tiny_cfg, variants, image_root):
    folder, _ = built
    model = VisionLanguageModel.build(tiny_cfg)
    cache = FeatureCache.open(folder, model_cache_key(model))
    images = _images(variants)
    assert cache.verify(images, image_root) == len(set(images)) == cache.meta["images"]
    assert cache.shape == (model.projector.num_tokens, model.projector.in_dim)  # one layer's tokens, not all 5
    for img in images[:4]:
        want = model.image_features(model.vision.preprocess([open_rgb(image_root / img)]))[0]
        got = cache.get(img)
        assert got.dtype == torch.float16
        torch.testing.assert_close(got.float(), want, atol=5e-3, rtol=5e-3)


def test_dense_connector_gets_its_own_cache_with_the_group_means(tiny_cfg):
    dense = VLMConfig.from_dict(tiny_cfg.to_dict())
    dense.projector.name = "dense_connector"
    plain, dci = FeatureEncoder(tiny_cfg), FeatureEncoder(dense)
    assert plain.key() != dci.key()
    linear = VLMConfig.from_dict(tiny_cfg.to_dict())
    linear.projector.name = "linear"
    assert FeatureEncoder(linear).key() == plain.key()  # same selection (the main layer): one cache for both
    feats = dci.encode([open_rgb_blank()])
    assert feats.shape[-1] == (tiny_cfg.projector.dense_groups + 1) * tiny_cfg.vision.hidden_size


def test_the_cache_key_names_the_hidden_state_indices(tiny_cfg):
    from vlm_core.data.feature_cache import selection_spec

    dense = VLMConfig.from_dict(tiny_cfg.to_dict())
    dense.projector.name, dense.projector.dense_groups = "dense_connector", 2
    spec = selection_spec(FeatureEncoder(dense).projector)
    assert spec["scheme"] == 2 and spec["groups"] == [[0, 1], [2, 3]] and spec["main"] == 3  # tiny: 4 layers
    regrouped = VLMConfig.from_dict(dense.to_dict())
    regrouped.projector.dense_groups = 4
    assert FeatureEncoder(regrouped).key() != FeatureEncoder(dense).key()


def test_one_encoder_pass_writes_every_selection_as_its_own_build_would(built, tiny_cfg, variants, image_root,
                                                                        tmp_path, caplog):
    """The MLP's and the dense connector's caches of one dataset from one pass over its images: the MLP's holds the
    bytes a build of its own wrote, the dense connector's the group means its encoder computes."""
    from data_pipeline.features import build_feature_caches

    dense = VLMConfig.from_dict(tiny_cfg.to_dict())
    dense.projector.name = "dense_connector"
    images = _images(variants)
    with caplog.at_level(logging.INFO, logger="data_pipeline.features"):
        plain_dir, dense_dir = build_feature_caches([tiny_cfg, dense], images, image_root, tmp_path)
    assert [r.getMessage() for r in caplog.records if "encoded once into 2 selection(s)" in r.getMessage()]
    alone, _ = built
    assert plain_dir.name == alone.name and dense_dir.name == FeatureEncoder(dense).key()
    mine, theirs = FeatureCache.open(plain_dir), FeatureCache.open(alone)
    assert mine.table.column("features").equals(theirs.table.column("features"))
    dci = FeatureEncoder(dense)
    cache = FeatureCache.open(dense_dir, dci.key())
    assert cache.verify(images, image_root) == len(set(images))
    for img in images[:3]:
        torch.testing.assert_close(cache.get(img).float(), dci.encode([open_rgb(image_root / img)])[0],
                                   atol=5e-3, rtol=5e-3)
    assert build_feature_caches([tiny_cfg, dense], images, image_root, tmp_path) == [plain_dir, dense_dir]  # reused


def open_rgb_blank():
    from PIL import Image

    return Image.new("RGB", (40, 30), "gray")


def test_a_cache_for_another_encoder_or_with_changed_images_is_refused(built, tiny_cfg, variants, image_root, caplog):
    from data_pipeline.features import build_feature_cache

    folder, root = built
    other = VLMConfig.from_dict(tiny_cfg.to_dict())
    other.vision.feature_layer = -1
    with pytest.raises(FeatureCacheError, match="built for another encoder, layer selection or preprocessing"):
        FeatureCache.open(folder, FeatureEncoder(other).key())
    key = FeatureEncoder(tiny_cfg).key()
    images = _images(variants)
    with pytest.raises(FeatureCacheError, match=r"1 images are not in it \(first: coco/new.jpg\)"):
        FeatureCache.open(folder, key).verify(images + ["coco/new.jpg"], image_root)
    changed = image_root / images[0]
    open_rgb(changed).rotate(90).save(changed, format="JPEG")  # same path, new picture
    with pytest.raises(FeatureCacheError, match=f"1 images changed since they were encoded \\(first: {images[0]}\\)"):
        FeatureCache.open(folder, key).verify(images, image_root)
    with caplog.at_level(logging.INFO, logger="data_pipeline.features"):
        rebuilt = build_feature_cache(tiny_cfg, images, image_root, root)  # the sweep rebuilds it, and says so
    assert rebuilt == folder and "rebuilding" in caplog.text and "stale" in caplog.text
    assert FeatureCache.open(folder, key).verify(images, image_root) == len(set(images))
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="data_pipeline.features"):
        build_feature_cache(tiny_cfg, images, image_root, root)
    assert "reusing" in caplog.text


def test_training_from_the_cache_matches_encoding_on_the_fly(built, tiny_cfg, variants, image_root, tmp_path,
                                                             caplog, monkeypatch):
    """A run that reads the cache is exactly a run that encodes on the fly and rounds the encoder's output to
    fp16 (what the cache stores): bit for bit the same steps, projector and AdamW state. And the fp16 rounding
    is all that separates it from plain on-the-fly training: per-step losses and weights within tolerances the
    wrong image's features break."""
    from vlm_core.config import TrainConfig
    from vlm_core.training.one_stage import DataSpec, run_stage

    folder, _ = built
    train = TrainConfig(stage=1, epochs=2, batch_size=4, lr=1e-3, max_steps_per_epoch=3)
    spec = dict(train=str(variants / "20kUmap" / "train-00000.parquet"), images=str(image_root),
                val=str(variants / "20kUmap" / "val-00000.parquet"))
    on_the_fly, _ = run_stage(tiny_cfg, train, DataSpec(**spec), tmp_path / "fly", write_final=False)
    with caplog.at_level(logging.INFO, logger="vlm_core.training.one_stage"):
        cached, _ = run_stage(tiny_cfg, train, DataSpec(**spec, features=str(folder)), tmp_path / "cached",
                              write_final=False)
    assert f"16 images read from the cache {folder} (the encoder does not run)" in caplog.text
    encode = VisionLanguageModel.image_features
    monkeypatch.setattr(VisionLanguageModel, "image_features", lambda self, px: encode(self, px).half().float())
    rounded, _ = run_stage(tiny_cfg, train, DataSpec(**spec), tmp_path / "fly-fp16", write_final=False)
    monkeypatch.undo()
    assert cached.steps == on_the_fly.steps == rounded.steps == 6

    same_steps(step_log(tmp_path / "cached"), step_log(tmp_path / "fly-fp16"))
    same_epochs(cached.epoch_metrics, rounded.epoch_metrics)
    assert_identical(checkpoint_weights(cached.checkpoint), checkpoint_weights(rounded.checkpoint), "projector")
    assert_identical(optimizer_moments(cached.checkpoint), optimizer_moments(rounded.checkpoint), "AdamW state")

    # against fp32 features: absolute tolerances, as training moves the loss (near 10.8) and the projector only a
    # little. 1e-4 on the losses and on the weights fails a run fed another image's features (tried: FeatureCache.get
    # answering with the next image's), from its first step on; fp16 rounding stays far inside it
    for a, b in zip(step_log(tmp_path / "cached"), step_log(tmp_path / "fly")):
        assert a["lr"] == b["lr"] and a["tokens"] == b["tokens"]
        assert a["loss"] == pytest.approx(b["loss"], rel=0, abs=1e-4)
    for a, b in zip(cached.epoch_metrics, on_the_fly.epoch_metrics):
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=0, abs=1e-4)
    assert max_difference(checkpoint_weights(cached.checkpoint), checkpoint_weights(on_the_fly.checkpoint)) < 1e-4
