"""The vision-encoder registry and the EfficientNet-Lite0 encoder: real packaged ImageNet weights (converted once to
safetensors), the token definition of ``vlm_core.model.vision.efficientnet``, and what projectors and export make of it.

    pytest -q tests/test_cnn_vision.py
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from vlm_core.base.errors import ConfigError
from vlm_core.config import LMConfig, ProjectorConfig, VisionConfig, VLMConfig
from vlm_core.model.projectors import build_projector, dense_groups
from vlm_core.model.vision.encoder import VISION_ENCODERS, build_vision_tower, encoder_geometry

CNN = VisionConfig(encoder="efficientnet_lite0", source="packaged", feature_layer=-1)
CAT_CLASSES = range(281, 286)  # ImageNet's tabby, tiger cat, Persian, Siamese, Egyptian cat


@pytest.fixture(scope="module")
def tower():
    return build_vision_tower(CNN)


def test_the_registry_names_its_encoders_and_rejects_others_by_field():
    assert VISION_ENCODERS.names() == ["clip", "efficientnet_lite0"]
    with pytest.raises(ConfigError, match=r"vision.encoder: unknown vision encoder 'resnet'; choose one of"):
        VisionConfig(encoder="resnet")
    with pytest.raises(ConfigError, match=r"vision.source: .*'packaged' or a local folder holding model.safetensors"):
        build_vision_tower(VisionConfig(encoder="efficientnet_lite0", source="owner/some-cnn"))


def test_the_packaged_weights_are_imagenet_trained_and_cached_as_safetensors(tower):
    from skimage import data

    from vlm_core.model.vision.efficientnet import packaged_folder

    folder = packaged_folder()
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]  # no pickle kept
    cat = Image.fromarray(data.chelsea())  # 451 x 300: padded to a square, resized to 224
    with torch.no_grad():
        probs = tower.model.net(tower.preprocess([cat])).softmax(-1)[0]
    assert int(probs.argmax()) in CAT_CLASSES and float(probs[list(CAT_CLASSES)].sum()) > 0.8


def test_hidden_states_are_stage_outputs_pooled_to_the_final_grid_and_padded(tower):
    geom = tower.geometry
    assert (geom.embed_dim, geom.num_layers, geom.num_patches, geom.num_tokens) == (1280, 8, 49, 49)
    assert encoder_geometry(CNN) == geom  # from the config alone, no weights
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)) for _ in range(2)]
    pixels = tower.preprocess(images)
    assert pixels.shape == (2, 3, 224, 224)
    states = tower(pixels)
    assert len(states) == 9 and all(s.shape == (2, 49, 1280) for s in states)
    net = tower.model.net
    with torch.no_grad():
        head = net.extract_features(pixels)  # the library's own path to the last feature map: [2, 1280, 7, 7]
        stem = net._swish(net._bn0(net._conv_stem(pixels)))  # [2, 32, 112, 112]
    assert torch.allclose(states[-1], head.flatten(2).transpose(1, 2), atol=1e-5)  # row-major tokens
    assert torch.allclose(states[0][..., :32], F.avg_pool2d(stem, 16).flatten(2).transpose(1, 2), atol=1e-5)
    for state, width in zip(states, tower.model.config.widths):
        assert state[..., width:].abs().sum() == 0 and state[..., :width].abs().sum() > 0


def test_the_dense_connector_groups_the_cnns_stages(tower):
    geom = tower.geometry
    dci = build_projector(ProjectorConfig(name="dense_connector", dense_groups=4), geom, 64)
    assert dci.groups == dense_groups(8, 4) == [[0, 1], [2, 3], [4, 5], [6, 7]]  # stem..stage 7; the head is main
    pixels = tower.preprocess([Image.new("RGB", (32, 32), (200, 30, 30))])
    selected = dci.select(tower(pixels))
    assert selected.shape == (1, 49, 1280 * 5) and dci(selected).shape == (1, 49, 64)


def test_a_model_with_the_cnn_trains_its_projector_and_refuses_llava_export():
    from vlm_core.data.dataset import Collator
    from vlm_core.evaluation.export import to_llava
    from vlm_core.model.vlm import VisionLanguageModel

    cfg = VLMConfig(vision=CNN, projector=ProjectorConfig(name="mlp2x_gelu"),
                    lm=LMConfig(source="tiny", hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128))
    model = VisionLanguageModel.build(cfg)
    selected = model.image_features(model.vision.preprocess([Image.new("RGB", (64, 64), (0, 90, 200))]))
    features = model.projector(selected)
    assert selected.shape == (1, 49, 1280) and features.shape == (1, 49, 64)
    assert model.formatter.num_image_tokens == 49  # no CLS: the 49 grid tokens, each at its own <image> slot
    enc = model.formatter.encode([{"from": "human", "value": "<image>\nWhat colour?"},
                                  {"from": "gpt", "value": "Blue."}])
    batch = Collator(model.tokenizer.pad_token_id)([{"id": "0", "input_ids": enc.input_ids, "labels": enc.labels}])
    pixels = model.vision.preprocess([Image.new("RGB", (64, 64), (0, 90, 200))])
    out = model(batch["input_ids"], batch["attention_mask"], batch["labels"], pixel_values=pixels)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert all(p.grad is not None for p in model.projector.parameters() if p.requires_grad)
    assert all(p.grad is None for p in model.vision.parameters())  # frozen
    with pytest.raises(ConfigError, match=r"vision.encoder: 'efficientnet_lite0' has no LLaVA equivalent"):
        to_llava(model)
