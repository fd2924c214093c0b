"""Projectors (connectors) from vision features to the LLM's embedding space, by registered name.

Each projector has two halves:

* ``select(hidden_states)``: parameter-free, turns the encoder's hidden states into the projector input
  ``[B, T, in_dim]`` (this is what a feature cache stores: exactly what the projector needs);
* ``forward(features)``: the trainable part, ``[B, T, in_dim] -> [B, T, llm_dim]``: the feature norm
  (``projector.feature_norm``; ``none`` or ``standardize``), then the subclass's ``project``.

Registered names: ``linear``, ``mlp2x_gelu`` (LLaVA-1.5), and the dense connector of arXiv 2405.13800 in
its three variants: ``dense_connector`` (DCI: channel concat of the main layer with the means of G contiguous
layer groups), ``dense_sci`` (channel concat of picked layers) and ``dense_sti`` (token concat of pooled picked
layers). Layer indices derive from the encoder's depth.

    python -c "from vlm_core.projectors import available_projectors; print(available_projectors())"
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .config import ConfigError, ProjectorConfig


@dataclass(frozen=True)
class EncoderGeometry:
    """What a projector needs to know about the vision encoder (and where the main feature comes from)."""

    embed_dim: int
    num_layers: int
    num_patches: int
    feature_layer: int = -2
    drop_cls: bool = True

    @property
    def num_tokens(self) -> int:
        return self.num_patches + (0 if self.drop_cls else 1)

    def layer_index(self, i: int) -> int:
        """Normalise a (possibly negative) index into ``hidden_states`` (length ``num_layers + 1``)."""
        return i % (self.num_layers + 1)


def dense_groups(num_layers: int, groups: int) -> list[list[int]]:
    """Split layer outputs 1..L (``hidden_states`` indices) into ``groups`` contiguous, near-equal groups."""
    if not 1 <= groups <= num_layers:
        raise ConfigError(f"projector.dense_groups: {groups} groups do not fit an encoder with {num_layers} layers")
    bounds = [round(k * num_layers / groups) for k in range(groups + 1)]
    return [list(range(bounds[k] + 1, bounds[k + 1] + 1)) for k in range(groups)]


def picked_layers(num_layers: int, groups: int) -> list[int]:
    """SCI/STI: the layers at k·L/G for k = 1..G-1 (the main layer is added separately)."""
    if not 2 <= groups <= num_layers:
        raise ConfigError(f"projector.dense_groups: SCI/STI need 2..{num_layers} groups, got {groups}")
    return [round(k * num_layers / groups) for k in range(1, groups)]


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

    Why: a random-init encoder (the offline presets; no package ships CLIP weights) gives features that differ
    little between images — most of each token is the same for every image (background, position). Centring and
    scaling each (token, channel) puts what differs between images on the scale the projector starts from."""

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


FEATURE_NORMS: dict[str, Callable[[int, int], nn.Module]] = {"none": NoFeatureNorm, "standardize": FeatureStandardizer}


def mlp2x_gelu(in_dim: int, out_dim: int) -> nn.Sequential:
    """LLaVA-1.5's projector: Linear → GELU → Linear."""
    return nn.Sequential(nn.Linear(in_dim, out_dim), nn.GELU(), nn.Linear(out_dim, out_dim))


_REGISTRY: dict[str, Callable[[EncoderGeometry, int, ProjectorConfig], Projector]] = {}


def register(name: str):
    def deco(cls):
        _REGISTRY[name] = cls
        cls.registered_name = name
        return cls
    return deco


def available_projectors() -> list[str]:
    return sorted(_REGISTRY)


def build_projector(cfg: ProjectorConfig, geom: EncoderGeometry, llm_dim: int) -> Projector:
    if cfg.name not in _REGISTRY:
        raise ConfigError(f"projector.name: unknown projector {cfg.name!r}; choose one of {available_projectors()}")
    if cfg.feature_norm not in FEATURE_NORMS:
        raise ConfigError(f"projector.feature_norm: unknown {cfg.feature_norm!r}; choose one of "
                          f"{sorted(FEATURE_NORMS)}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.init_seed)
        projector = _REGISTRY[cfg.name](geom, llm_dim, cfg)
    projector.feature_norm = FEATURE_NORMS[cfg.feature_norm](projector.num_tokens, projector.in_dim)
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


@register("dense_sci")
class DenseSparseChannelIntegration(MLPProjector):
    """SCI: channel concat of the picked layers and the main layer, then the 2-layer GELU MLP."""

    def __init__(self, geom, llm_dim, cfg):
        Projector.__init__(self, geom, llm_dim, cfg)
        self.layers = picked_layers(geom.num_layers, cfg.dense_groups)
        self.in_dim, self.num_tokens = (len(self.layers) + 1) * geom.embed_dim, geom.num_tokens
        self.proj = mlp2x_gelu(self.in_dim, llm_dim)

    def select(self, hidden_states):
        picked = [self._tokens(hidden_states[i]) for i in self.layers]
        return torch.cat([*picked, self.main_feature(hidden_states)], dim=-1)


@register("dense_sti")
class DenseSparseTokenIntegration(MLPProjector):
    """STI: the main tokens followed by 2-D average-pooled tokens of each picked layer (token concat)."""

    def __init__(self, geom, llm_dim, cfg):
        Projector.__init__(self, geom, llm_dim, cfg)
        self.layers = picked_layers(geom.num_layers, cfg.dense_groups)
        self.side = math.isqrt(geom.num_patches)
        if self.side * self.side != geom.num_patches:
            raise ConfigError(f"projector.name: dense_sti needs a square patch grid, got {geom.num_patches} patches")
        pooled_side = math.ceil(self.side / cfg.sti_pool_stride)
        self.in_dim = geom.embed_dim
        self.num_tokens = geom.num_tokens + len(self.layers) * pooled_side ** 2
        self.proj = mlp2x_gelu(self.in_dim, llm_dim)

    def _pool(self, h: torch.Tensor) -> torch.Tensor:
        patches = h[:, 1:]  # pooling is over the patch grid; CLS never takes part
        b, _, d = patches.shape
        grid = patches.transpose(1, 2).reshape(b, d, self.side, self.side)
        s = self.cfg.sti_pool_stride
        pooled = F.avg_pool2d(grid, kernel_size=s, stride=s, ceil_mode=True)
        return pooled.flatten(2).transpose(1, 2)

    def select(self, hidden_states):
        return torch.cat([self.main_feature(hidden_states), *[self._pool(hidden_states[i]) for i in self.layers]],
                         dim=1)
