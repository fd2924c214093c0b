"""Projectors: registry, widths from the encoder, and the dense connector against a hand computation."""

from __future__ import annotations

import pytest
import torch

from vlm_core.base.errors import ConfigError
from vlm_core.config import ProjectorConfig, VisionConfig
from vlm_core.model.projectors import available_projectors, build_projector, dense_groups, picked_layers
from vlm_core.model.vision.encoder import EncoderGeometry, build_vision_tower


@pytest.fixture(scope="module")
def tower():
    return build_vision_tower(VisionConfig(image_size=32, patch_size=8, hidden_size=16, num_layers=8, num_heads=2))


def _geom(tower):
    return EncoderGeometry(tower.embed_dim, tower.num_layers, tower.num_patches)


def test_registry_lists_and_refuses_unknown_names(tower):
    assert {"linear", "mlp2x_gelu", "dense_connector", "dense_sti", "dense_sci"} <= set(available_projectors())
    with pytest.raises(ConfigError, match="unknown projector 'qformer'"):
        build_projector(ProjectorConfig(name="qformer"), _geom(tower), 32)


def test_layer_groups_follow_the_reference_code():
    # HJYao00/DenseConnector dense_connector_dci, CLIP-L (24 layers, hidden_states[0..24]): hidden_states[0:12]
    # and [12:24]; index 0 is the embedding output, 24 (the final layer's output) is in no group
    assert dense_groups(24, 2) == [list(range(0, 12)), list(range(12, 24))]
    # TinyCLIP-ViT-40M (12 layers), the study's G = 4: [0:3], [3:6], [6:9], [9:12]
    assert dense_groups(12, 4) == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9, 10, 11]]
    groups = dense_groups(10, 4)
    assert sum(groups, []) == list(range(0, 10)) and max(map(len, groups)) - min(map(len, groups)) <= 1
    # dense_connector_sti / _sci pick hidden_states[7] and [15] of CLIP-L's 24 (with the main feature [-2] = 23):
    # depth fractions 1/3, 2/3, 3/3, one before each boundary
    assert picked_layers(24, 3) == [7, 15]
    assert picked_layers(12, 4) == [2, 5, 8]  # TinyCLIP, G = 4 (main 11)
    with pytest.raises(ConfigError, match="dense_groups"):
        dense_groups(4, 5)


def _encoder(num_layers):
    return build_vision_tower(VisionConfig(image_size=32, patch_size=8, hidden_size=16, num_layers=num_layers,
                                           num_heads=2))


@pytest.mark.parametrize("num_layers, groups, written_out", [
    (12, 4, [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9, 10, 11]]),
    (24, 2, [[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11], [12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23]]),
])
def test_dense_connector_matches_hand_computation(num_layers, groups, written_out):
    tower = _encoder(num_layers)
    torch.manual_seed(0)
    hs = tower(torch.randn(2, 3, 32, 32))
    assert len(hs) == num_layers + 1  # embeddings + every layer
    proj = build_projector(ProjectorConfig(name="dense_connector", dense_groups=groups), _geom(tower), 32)
    feats = proj.select(hs)
    d = tower.embed_dim
    # by hand: each group's sum over its written-out indices / its size, patches only (CLS dropped)
    means = []
    for idx in written_out:
        total = torch.zeros_like(hs[0][:, 1:])
        for i in idx:
            total = total + hs[i][:, 1:]
        means.append(total / len(idx))
    expected = torch.cat([hs[num_layers - 1][:, 1:], *means], dim=-1)  # main feature first: hidden_states[-2]
    assert proj.in_dim == (groups + 1) * d and feats.shape == (2, tower.num_patches, (groups + 1) * d)
    torch.testing.assert_close(feats, expected)
    # the final layer's output takes no part: changing it leaves the features as they were
    changed = (*hs[:-1], hs[-1] + 100.0)
    torch.testing.assert_close(proj.select(changed), feats)
    assert proj.selection()["groups"] == written_out and proj.selection()["main"] == num_layers - 1
    assert proj(feats).shape == (2, tower.num_patches, 32)
    assert isinstance(proj.proj[1], torch.nn.GELU) and proj.proj[0].in_features == (groups + 1) * d


@pytest.mark.parametrize("num_layers, groups, picks", [(24, 3, [7, 15]), (12, 4, [2, 5, 8])])
def test_sci_matches_hand_computation(num_layers, groups, picks):
    tower = _encoder(num_layers)
    torch.manual_seed(0)
    hs = tower(torch.randn(2, 3, 32, 32))
    sci = build_projector(ProjectorConfig(name="dense_sci", dense_groups=groups), _geom(tower), 32)
    # the reference: cat(main, cat(hidden_states[7][:, 1:], hidden_states[15][:, 1:])) on channels
    expected = torch.cat([hs[num_layers - 1][:, 1:], *[hs[i][:, 1:] for i in picks]], dim=-1)
    torch.testing.assert_close(sci.select(hs), expected)
    assert sci.selection()["layers"] == picks


def test_sti_pools_along_the_token_sequence_like_the_reference():
    tower = _encoder(24)  # 16 patches (4 x 4 grid)
    torch.manual_seed(0)
    hs = tower(torch.randn(1, 3, 32, 32))
    d, p = tower.embed_dim, tower.num_patches
    sti = build_projector(ProjectorConfig(name="dense_sti", dense_groups=3, sti_pool_stride=8), _geom(tower), 32)
    feats = sti.select(hs)
    assert sti.num_tokens == p + 2 * 2 and feats.shape == (1, sti.num_tokens, d)  # 16 patches / 8 = 2 per layer
    torch.testing.assert_close(feats[:, :p], hs[23][:, 1:])  # main tokens first
    # AvgPool1d(8, 8) over the row-major patch sequence: patches 0..7, then 8..15, of layers 7 and 15
    for k, layer in enumerate([7, 15]):
        for j in range(2):
            torch.testing.assert_close(feats[0, p + 2 * k + j], hs[layer][0, 1 + 8 * j: 1 + 8 * (j + 1)].mean(0))
    # our 2-D option: 2 x 2 windows of the grid
    grid = build_projector(ProjectorConfig(name="dense_sti", dense_groups=3, sti_pool="grid", sti_pool_stride=2),
                           _geom(tower), 32)
    g = grid.select(hs)
    assert grid.num_tokens == p + 2 * 4
    torch.testing.assert_close(g[0, p], hs[7][0, 1:].reshape(4, 4, d)[:2, :2].reshape(-1, d).mean(0))
    assert sti.selection()["pool"] == "sequence" and grid.selection()["pool"] == "grid"
    assert sti(feats).shape == (1, sti.num_tokens, 32)


def test_sti_pools_every_token_of_a_grid_without_cls():
    # a CNN's 7 x 7 grid (EfficientNet-Lite0): 49 tokens, no CLS to drop before pooling
    geom = EncoderGeometry(embed_dim=4, num_layers=8, num_patches=49, drop_cls=False, cls_token=False)
    torch.manual_seed(0)
    hs = tuple(torch.randn(1, 49, 4) for _ in range(9))
    seq = build_projector(ProjectorConfig(name="dense_sti", dense_groups=2, sti_pool_stride=8), geom, 16)
    assert seq.layers == [3] and seq.num_tokens == 49 + 6  # 49 // 8 windows, the tail of 1 dropped as AvgPool1d does
    feats = seq.select(hs)
    torch.testing.assert_close(feats[0, :49], hs[-2][0])  # the main feature: all 49 tokens
    for j in range(6):  # windows start at the grid's first token, not its second
        torch.testing.assert_close(feats[0, 49 + j], hs[3][0, 8 * j: 8 * (j + 1)].mean(0))
    grid = build_projector(ProjectorConfig(name="dense_sti", dense_groups=2, sti_pool="grid", sti_pool_stride=4),
                           geom, 16)
    g = grid.select(hs)  # 4 x 4 windows of the 7 x 7 grid, ceil mode: 2 x 2 of them
    assert grid.num_tokens == 49 + 4 and g.shape == (1, 53, 4)
    cells = hs[3][0].reshape(7, 7, 4)
    torch.testing.assert_close(g[0, 49], cells[:4, :4].reshape(-1, 4).mean(0))
    torch.testing.assert_close(g[0, 52], cells[4:, 4:].reshape(-1, 4).mean(0))
    # what the checkpoint records says so: a CLS-free STI checkpoint written before (it lost a token) is refused
    assert seq.selection()["cls_token"] is False and "cls_token" not in _sti_on_a_vit().selection()


def _sti_on_a_vit():
    return build_projector(ProjectorConfig(name="dense_sti", dense_groups=2), EncoderGeometry(4, 8, 16), 16)


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
