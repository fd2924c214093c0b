"""Projectors: registry, widths from the encoder, and the dense connector against a hand computation."""

from __future__ import annotations

import pytest
import torch

from vlm_core.config import ConfigError, ProjectorConfig, VisionConfig
from vlm_core.projectors import EncoderGeometry, available_projectors, build_projector, dense_groups, picked_layers
from vlm_core.vision import build_vision_tower


@pytest.fixture(scope="module")
def tower():
    return build_vision_tower(VisionConfig(image_size=32, patch_size=8, hidden_size=16, num_layers=8, num_heads=2))


def _geom(tower):
    return EncoderGeometry(tower.embed_dim, tower.num_layers, tower.num_patches)


def test_registry_lists_and_refuses_unknown_names(tower):
    assert {"linear", "mlp2x_gelu", "dense_connector", "dense_sti", "dense_sci"} <= set(available_projectors())
    with pytest.raises(ConfigError, match="unknown projector 'qformer'"):
        build_projector(ProjectorConfig(name="qformer"), _geom(tower), 32)


def test_layer_groups_derive_from_encoder_depth():
    assert dense_groups(12, 4) == [[1, 2, 3], [4, 5, 6], [7, 8, 9], [10, 11, 12]]  # TinyCLIP-ViT-40M
    assert [len(g) for g in dense_groups(24, 2)] == [12, 12]  # CLIP-L, the paper's G=2
    groups = dense_groups(10, 4)
    assert sum(groups, []) == list(range(1, 11)) and max(map(len, groups)) - min(map(len, groups)) <= 1
    assert picked_layers(12, 4) == [3, 6, 9]
    with pytest.raises(ConfigError, match="dense_groups"):
        dense_groups(4, 5)


def test_dense_connector_matches_hand_computation(tower):
    torch.manual_seed(0)
    pixels = torch.randn(2, 3, 32, 32)
    hs = tower(pixels)
    assert len(hs) == 9  # embeddings + 8 layers
    proj = build_projector(ProjectorConfig(name="dense_connector", dense_groups=4), _geom(tower), 32)
    feats = proj.select(hs)
    d = tower.embed_dim
    assert proj.in_dim == 5 * d and feats.shape == (2, tower.num_patches, 5 * d)
    expected = torch.cat([hs[-2][:, 1:],
                          (hs[1][:, 1:] + hs[2][:, 1:]) / 2, (hs[3][:, 1:] + hs[4][:, 1:]) / 2,
                          (hs[5][:, 1:] + hs[6][:, 1:]) / 2, (hs[7][:, 1:] + hs[8][:, 1:]) / 2], dim=-1)
    torch.testing.assert_close(feats, expected)
    out = proj(feats)
    assert out.shape == (2, tower.num_patches, 32)
    assert isinstance(proj.proj[1], torch.nn.GELU) and proj.proj[0].in_features == 5 * d


def test_sci_and_sti_shapes(tower):
    torch.manual_seed(0)
    hs = tower(torch.randn(1, 3, 32, 32))
    d, p = tower.embed_dim, tower.num_patches  # 16 patches on a 4x4 grid
    sci = build_projector(ProjectorConfig(name="dense_sci", dense_groups=4), _geom(tower), 32)
    assert sci.select(hs).shape == (1, p, 4 * d)  # layers 2, 4, 6 + main
    torch.testing.assert_close(sci.select(hs)[..., :d], hs[2][:, 1:])
    sti = build_projector(ProjectorConfig(name="dense_sti", dense_groups=4, sti_pool_stride=2), _geom(tower), 32)
    feats = sti.select(hs)
    assert sti.num_tokens == p + 3 * 4 and feats.shape == (1, sti.num_tokens, d)
    grid = hs[2][:, 1:].reshape(1, 4, 4, d)
    torch.testing.assert_close(feats[0, p], grid[0, :2, :2].reshape(-1, d).mean(0))  # first pooled token
    assert sti(feats).shape == (1, sti.num_tokens, 32)


@pytest.mark.parametrize("name, in_mult", [("linear", 1), ("mlp2x_gelu", 1)])
def test_plain_projectors_use_the_main_layer_without_cls(tower, name, in_mult):
    torch.manual_seed(0)
    hs = tower(torch.randn(1, 3, 32, 32))
    proj = build_projector(ProjectorConfig(name=name), _geom(tower), 32)
    torch.testing.assert_close(proj.select(hs), hs[-2][:, 1:])
    assert proj.in_dim == in_mult * tower.embed_dim and proj(proj.select(hs)).shape == (1, tower.num_patches, 32)


@pytest.mark.parametrize("name", ["mlp2x_gelu", "dense_sti"])
def test_standardized_features_are_centred_and_scaled_per_token_and_channel(tower, name):
    proj = build_projector(ProjectorConfig(name=name, feature_norm="standardize"), _geom(tower), 32)
    torch.manual_seed(0)
    feats = proj.select(tower(torch.randn(6, 3, 32, 32)))
    norm = proj.feature_norm
    assert not norm.fitted and torch.equal(norm(feats), feats)  # identity until fitted
    norm.fit(feats)
    z = norm(feats)
    assert norm.fitted and int(norm.fitted_on) == 6
    torch.testing.assert_close(z.mean(0), torch.zeros_like(z[0]), atol=1e-5, rtol=0)
    torch.testing.assert_close(z.std(0), torch.ones_like(z[0]), atol=1e-4, rtol=0)
    # the statistics are buffers (saved with the weights), never trained
    state = proj.state_dict()
    assert {"feature_norm.mean", "feature_norm.std", "feature_norm.fitted_on"} <= set(state)
    assert not any("feature_norm" in n for n, _ in proj.named_parameters())
    fresh = build_projector(ProjectorConfig(name=name, feature_norm="standardize"), _geom(tower), 32)
    fresh.load_state_dict(state)
    torch.testing.assert_close(fresh(feats), proj(feats))


def test_unknown_feature_norm_is_named(tower):
    with pytest.raises(ConfigError, match="projector.feature_norm"):
        ProjectorConfig(feature_norm="whiten")
    assert "feature_norm" not in "".join(build_projector(ProjectorConfig(), _geom(tower), 32).state_dict())
