"""Projectors (connectors) from vision features to the LLM's embedding space, by registered name.

Each projector has two halves:

* ``select(hidden_states)``: parameter-free, turns the encoder's hidden states into the projector input
  ``[B, T, in_dim]`` (this is what a feature cache stores: exactly what the projector needs);
* ``forward(features)``: the trainable part, ``[B, T, in_dim] -> [B, T, llm_dim]``: the feature norm
  (``projector.feature_norm``; ``none`` or ``standardize``), then the subclass's ``project``.

Registered names: ``linear``, ``mlp2x_gelu`` (LLaVA-1.5), and the dense connector of arXiv 2405.13800 in
its three variants, following the paper's own code (HJYao00/DenseConnector,
``dc/model/multimodal_projector/dense_connector.py``). ``hidden_states`` has ``L + 1`` entries: index 0 is the
embedding output, index ``i`` the output of layer ``i``; the main feature is ``hidden_states[-2]`` (= ``L - 1``):

* ``dense_connector`` (DCI): ``[main ; mean(group_1) ; … ; mean(group_G)]`` on channels, the G groups splitting
  ``hidden_states[0 .. L-1]`` contiguously (the final layer's output is in no group). CLIP-L (L = 24), G = 2:
  ``[0:12]``, ``[12:24]`` as in the reference; TinyCLIP (L = 12), G = 4: ``[0:3]``, ``[3:6]``, ``[6:9]``, ``[9:12]``.
* ``dense_sci`` (SCI): ``[main ; hidden_states[p_1] ; … ]`` on channels, the G − 1 picked layers at depth
  fractions k/G, one before the layer boundary like the main feature: ``p_k = round(k·L/G) − 1``. CLIP-L, G = 3:
  7 and 15 (with main 23) as in the reference; TinyCLIP, G = 4: 2, 5, 8 (main 11).
* ``dense_sti`` (STI): the main tokens followed by the picked layers' tokens average-pooled along the token
  sequence (the reference's ``AvgPool1d(kernel_size=8, stride=8)``; ``projector.sti_pool = grid`` pools 2-D
  windows of the patch grid instead — our variant, not the paper's).

Every projector describes its selection as data (``selection()``): the feature cache keys on it and every
checkpoint records it, so a dense checkpoint trained on another grouping is refused instead of loaded silently
(``vlm_core.training.checkpoint.load_projector``).

    >>> from vlm_core.model.projectors import dense_groups, picked_layers
    >>> dense_groups(12, 4)  # TinyCLIP, G = 4
    [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9, 10, 11]]
    >>> picked_layers(24, 3)  # CLIP-L, the reference's SCI / STI picks
    [7, 15]
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..base.errors import ConfigError
from ..base.registry import Registry
from ..config import ProjectorConfig, choices
from .vision.encoder import EncoderGeometry

SELECTION_SCHEME = 2
"""Version of the layer selection rules above. 1 (the first): DCI averaged groups of ``hidden_states[1..L]``
and SCI/STI picked ``round(k·L/G)``; checkpoints of that scheme recorded no selection."""


def dense_groups(num_layers: int, groups: int) -> list[list[int]]:
    """DCI: ``hidden_states`` indices 0..L-1 (embeddings, then layers 1..L-1; not the final layer's output) in
    ``groups`` contiguous, near-equal groups."""
    if not 1 <= groups <= num_layers:
        raise ConfigError(f"projector.dense_groups: {groups} groups do not fit an encoder with {num_layers} layers")
    bounds = [round(k * num_layers / groups) for k in range(groups + 1)]
    return [list(range(bounds[k], bounds[k + 1])) for k in range(groups)]


def picked_layers(num_layers: int, groups: int) -> list[int]:
    """SCI/STI: ``hidden_states[round(k·L/G) - 1]`` for k = 1..G-1 (the main layer, ``L - 1``, is the G-th)."""
    if not 2 <= groups <= num_layers:
        raise ConfigError(f"projector.dense_groups: SCI/STI need 2..{num_layers} groups, got {groups}")
    return [round(k * num_layers / groups) - 1 for k in range(1, groups)]


class Projector(nn.Module):
    """Base: ``select`` from hidden states, then project."""

    in_dim: int
    num_tokens: int

    def __init__(self, geom: EncoderGeometry, llm_dim: int, cfg: ProjectorConfig):
        super().__init__()
        self.geom = geom
        self.llm_dim = llm_dim
        self.cfg = cfg

    def _tokens(self, h: torch.Tensor) -> torch.Tensor:
        return h[:, 1:] if self.geom.drop_cls else h

    def main_feature(self, hidden_states: tuple[torch.Tensor, ...]) -> torch.Tensor:
        return self._tokens(hidden_states[self.geom.feature_layer])

    def select(self, hidden_states: tuple[torch.Tensor, ...]) -> torch.Tensor:
        return self.main_feature(hidden_states)

    def selection(self) -> dict:
        """Which hidden states ``select`` reads and how, as JSON-able data (recorded in checkpoints, keys caches)."""
        return {"scheme": SELECTION_SCHEME, "main": self.geom.layer_index(self.geom.feature_layer),
                "drop_cls": self.geom.drop_cls}

    def project(self, features: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.project(self.feature_norm(features))


class NoFeatureNorm(nn.Module):
    """``none``: the encoder's features as they are (LLaVA)."""

    fitted = True

    def __init__(self, num_tokens: int, dim: int):
        super().__init__()

    def fit(self, features: torch.Tensor) -> None:
        pass

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


class FeatureStandardizer(nn.Module):
    """``standardize``: ``(x - mean) / std`` per token position and channel, with mean and std measured once on
    training images before stage 1 (``fit``) and then frozen. They are buffers: they travel with the projector's
    weights into stage 2, resumption and inference.

    Why: an encoder's features can be far from the scale a freshly initialised projector expects, and mostly the
    same for every image (background, position: a random-init encoder's are; a CNN's stage outputs have their own
    offsets and scales). Centring and scaling each (token, channel) puts what differs between images on the scale
    the projector starts from."""

    def __init__(self, num_tokens: int, dim: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(num_tokens, dim))
        self.register_buffer("std", torch.ones(num_tokens, dim))
        self.register_buffer("fitted_on", torch.zeros((), dtype=torch.long))  # images the statistics came from

    @property
    def fitted(self) -> bool:
        return int(self.fitted_on) > 0

    @torch.no_grad()
    def fit(self, features: torch.Tensor) -> None:
        """``features``: ``[N, T, D]`` from N training images (N >= 2)."""
        if features.shape[0] < 2 or tuple(features.shape[1:]) != tuple(self.mean.shape):
            raise ValueError(f"feature_norm.fit needs [N >= 2, {tuple(self.mean.shape)}] features, got "
                             f"{tuple(features.shape)}")
        f = features.float()
        self.mean.copy_(f.mean(0))
        # a (token, channel) that never changes carries nothing; keep it centred, not blown up
        self.std.copy_(f.std(0).clamp_min(1e-3 * float(f.std(0).mean().clamp_min(1e-12))))
        self.fitted_on.fill_(features.shape[0])

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return (features - self.mean.to(features.dtype)) / self.std.to(features.dtype)


FEATURE_NORMS: Registry[Callable[[int, int], nn.Module]] = Registry.implementing(choices.FEATURE_NORM)
FEATURE_NORMS.add("none", NoFeatureNorm)
FEATURE_NORMS.add("standardize", FeatureStandardizer)


def mlp2x_gelu(in_dim: int, out_dim: int) -> nn.Sequential:
    """LLaVA-1.5's projector: Linear → GELU → Linear."""
    return nn.Sequential(nn.Linear(in_dim, out_dim), nn.GELU(), nn.Linear(out_dim, out_dim))


PROJECTORS: Registry[Callable[[EncoderGeometry, int, ProjectorConfig], Projector]] = Registry.implementing(
    choices.PROJECTOR)
register = PROJECTORS.register


def available_projectors() -> list[str]:
    return PROJECTORS.names()


def selects_layers(name: str) -> bool:
    """Whether the registered projector ``name`` reads more than the main feature (its selection has indices that
    changed with SELECTION_SCHEME)."""
    return name in PROJECTORS and PROJECTORS[name].selection is not Projector.selection


def build_projector(cfg: ProjectorConfig, geom: EncoderGeometry, llm_dim: int) -> Projector:
    factory, norm = PROJECTORS[cfg.name], FEATURE_NORMS[cfg.feature_norm]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.init_seed)
        projector = factory(geom, llm_dim, cfg)
    projector.feature_norm = norm(projector.num_tokens, projector.in_dim)
    return projector


@register("linear")
class LinearProjector(Projector):
    def __init__(self, geom, llm_dim, cfg):
        super().__init__(geom, llm_dim, cfg)
        self.in_dim, self.num_tokens = geom.embed_dim, geom.num_tokens
        self.proj = nn.Linear(self.in_dim, llm_dim)

    def project(self, features: torch.Tensor) -> torch.Tensor:
        return self.proj(features)


@register("mlp2x_gelu")
class MLPProjector(Projector):
    def __init__(self, geom, llm_dim, cfg):
        super().__init__(geom, llm_dim, cfg)
        self.in_dim, self.num_tokens = geom.embed_dim, geom.num_tokens
        self.proj = mlp2x_gelu(self.in_dim, llm_dim)

    def project(self, features: torch.Tensor) -> torch.Tensor:
        return self.proj(features)


@register("dense_connector")
class DenseChannelIntegration(MLPProjector):
    """DCI: ``[main ; mean(group_1) ; … ; mean(group_G)]`` along channels, then the 2-layer GELU MLP."""

    def __init__(self, geom, llm_dim, cfg):
        Projector.__init__(self, geom, llm_dim, cfg)
        self.groups = dense_groups(geom.num_layers, cfg.dense_groups)
        self.in_dim, self.num_tokens = (len(self.groups) + 1) * geom.embed_dim, geom.num_tokens
        self.proj = mlp2x_gelu(self.in_dim, llm_dim)

    def select(self, hidden_states):
        means = [torch.stack([self._tokens(hidden_states[i]) for i in g]).mean(0) for g in self.groups]
        return torch.cat([self.main_feature(hidden_states), *means], dim=-1)

    def selection(self):
        return {**super().selection(), "groups": self.groups}


@register("dense_sci")
class DenseSparseChannelIntegration(MLPProjector):
    """SCI: channel concat of the main layer and the picked layers (the reference's order), then the 2-layer GELU
    MLP."""

    def __init__(self, geom, llm_dim, cfg):
        Projector.__init__(self, geom, llm_dim, cfg)
        self.layers = picked_layers(geom.num_layers, cfg.dense_groups)
        self.in_dim, self.num_tokens = (len(self.layers) + 1) * geom.embed_dim, geom.num_tokens
        self.proj = mlp2x_gelu(self.in_dim, llm_dim)

    def select(self, hidden_states):
        picked = [self._tokens(hidden_states[i]) for i in self.layers]
        return torch.cat([self.main_feature(hidden_states), *picked], dim=-1)

    def selection(self):
        return {**super().selection(), "layers": self.layers}


def _pool_sequence(patches: torch.Tensor, stride: int, side: int) -> torch.Tensor:
    """The reference's STI pooling: ``AvgPool1d(stride, stride)`` along the token sequence (row-major patches);
    a tail shorter than ``stride`` is dropped, as AvgPool1d does."""
    return F.avg_pool1d(patches.transpose(1, 2), kernel_size=stride, stride=stride).transpose(1, 2)


def _pool_grid(patches: torch.Tensor, stride: int, side: int) -> torch.Tensor:
    """2-D ``stride × stride`` windows of the patch grid (ceil mode: the border windows are smaller)."""
    b, _, d = patches.shape
    grid = patches.transpose(1, 2).reshape(b, d, side, side)
    return F.avg_pool2d(grid, kernel_size=stride, stride=stride, ceil_mode=True).flatten(2).transpose(1, 2)


STI_POOLS: Registry[Callable[[torch.Tensor, int, int], torch.Tensor]] = Registry.implementing(choices.STI_POOL)
STI_POOLS.add("sequence", _pool_sequence)
STI_POOLS.add("grid", _pool_grid)


@register("dense_sti")
class DenseSparseTokenIntegration(MLPProjector):
    """STI: the main tokens followed by the pooled tokens of each picked layer (token concat)."""

    def __init__(self, geom, llm_dim, cfg):
        Projector.__init__(self, geom, llm_dim, cfg)
        self.layers = picked_layers(geom.num_layers, cfg.dense_groups)
        self.side = math.isqrt(geom.num_patches)
        if cfg.sti_pool == "grid" and self.side * self.side != geom.num_patches:
            raise ConfigError(f"projector.sti_pool: grid pooling needs a square patch grid, got {geom.num_patches} "
                              f"patches; use sti_pool=sequence")
        try:  # tokens per picked layer, as the pool itself gives them (no second formula to keep in step)
            pooled = STI_POOLS[cfg.sti_pool](torch.zeros(1, geom.num_patches, 1), cfg.sti_pool_stride,
                                             self.side).shape[1]
        except RuntimeError:  # torch refuses a window longer than its input
            pooled = 0
        if pooled < 1:
            raise ConfigError(f"projector.sti_pool_stride: {cfg.sti_pool_stride} is longer than the "
                              f"{geom.num_patches} patches")
        self.in_dim = geom.embed_dim
        self.num_tokens = geom.num_tokens + len(self.layers) * pooled
        self.proj = mlp2x_gelu(self.in_dim, llm_dim)

    def _pool(self, h: torch.Tensor) -> torch.Tensor:
        # pooling is over the patches; a CLS token never takes part (the reference's [:, 1:] on CLIP)
        return STI_POOLS[self.cfg.sti_pool](self.geom.patches(h), self.cfg.sti_pool_stride, self.side)

    def select(self, hidden_states):
        return torch.cat([self.main_feature(hidden_states), *[self._pool(hidden_states[i]) for i in self.layers]],
                         dim=1)

    def selection(self):
        selection = {**super().selection(), "layers": self.layers, "pool": self.cfg.sti_pool,
                     "pool_stride": self.cfg.sti_pool_stride}
        if not self.geom.cls_token:  # pools every token; before this was recorded, a CLS-free grid lost its first
            selection["cls_token"] = False  # token: such a checkpoint (recorded without the key) is refused
        return selection
