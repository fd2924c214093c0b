"""The frozen encoder's features, computed once and read by every trial instead of running the encoder again.

What is stored is exactly the projector's input, ``projector.select`` of the encoder's hidden states (the main
layer; for a dense connector also its group means / picked layers), in fp16, one row per image: not every layer.
A cache folder ``<root>/<key>/`` holds ``features.arrow`` (Arrow IPC, memory-mapped when read: image path, its
size and mtime when encoded, the features) and ``cache.json`` (the key, what it hashes, the feature shape).

The key is a sha256 of everything that decides the features: the vision config (for a local encoder folder also
its files' names, sizes and mtimes), the layer selection and the image processor's settings. A cache whose key
differs from the model's, or whose images changed or are missing, raises ``FeatureCacheError``: never used
silently. ``data_pipeline.features.build_feature_cache`` builds it on Ray Data; the sweep does so before its
trials (``--no-feature-cache`` encodes on the fly instead).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch

from ..base.errors import DataError
from ..base.hashing import json_digest
from ..config import VisionConfig, VLMConfig
from ..model.projectors import build_projector
from ..model.vision.encoder import build_vision_tower, vision_source
from .images import resolve_image

log = logging.getLogger(__name__)

FEATURES_FILE = "features.arrow"
META_FILE = "cache.json"
FORMAT_VERSION = 1
LLM_WIDTH_FOR_SELECTION = 8
"""``select`` has no parameters and ignores the LLM's width: the encoder side is built with a token one."""


class FeatureCacheError(DataError):
    """A feature cache that does not match the model or its images; the message names it and the fix."""


def selection_spec(projector) -> dict[str, Any]:
    """What ``projector.select`` computes, as data (two projectors with equal specs share a cache): its
    ``selection()`` (hidden-state indices, scheme version, pooling) and the encoder geometry."""
    return {"select": f"{type(projector).select.__module__}.{type(projector).select.__qualname__}",
            "geometry": dataclasses.asdict(projector.geom), **projector.selection()}


def key_inputs(vision_cfg: VisionConfig, vision, projector) -> dict[str, Any]:
    processor = {k: v for k, v in vision.image_processor.to_dict().items() if not k.startswith("_")}
    return {"format_version": FORMAT_VERSION, "vision": dataclasses.asdict(vision_cfg), "weights":
            vision_source(vision_cfg).fingerprint(), "selection": selection_spec(projector), "processor": processor}


def cache_key(inputs: dict[str, Any]) -> str:
    return json_digest(inputs, 24)


def model_cache_key(model) -> str:
    """The key a built ``VisionLanguageModel`` needs its cache to have."""
    return cache_key(key_inputs(model.cfg.vision, model.vision, model.projector))


class FeatureEncoder:
    """The frozen encoder plus the projector's parameter-free selection, without the LLM."""

    def __init__(self, cfg: VLMConfig):
        self.cfg = cfg
        self.vision = build_vision_tower(cfg.vision)
        self.projector = self.selection(cfg)

    def selection(self, cfg: VLMConfig):
        """The parameter-free selection of ``cfg``'s projector on this encoder (``cfg.vision`` must be this one's)."""
        if cfg.vision != self.cfg.vision:
            raise ValueError("a selection of another vision config: build a FeatureEncoder for it")
        return build_projector(cfg.projector, self.vision.geometry, LLM_WIDTH_FOR_SELECTION)

    def inputs(self, projector=None) -> dict[str, Any]:
        return key_inputs(self.cfg.vision, self.vision, projector or self.projector)

    def key(self, projector=None) -> str:
        return cache_key(self.inputs(projector))

    def to(self, device) -> "FeatureEncoder":
        self.vision.to(device)
        return self

    @torch.no_grad()
    def encode(self, images) -> torch.Tensor:
        """PIL images → ``[B, T, D]`` projector inputs (float32)."""
        return self.encode_many(images, [self.projector])[0]

    @torch.no_grad()
    def encode_many(self, images, selections) -> list[torch.Tensor]:
        """PIL images → each selection's ``[B, T, D]`` inputs, from one pass of the encoder (float32)."""
        device = next(self.vision.parameters()).device
        hidden = self.vision(self.vision.preprocess(images).to(device))
        return [s.select(hidden).float().cpu() for s in selections]


def image_stat(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns


@dataclass
class FeatureCache:
    """A built cache, memory-mapped; ``get(image)`` returns that image's ``[T, D]`` features (fp16)."""

    folder: Path
    meta: dict[str, Any]
    table: Any
    index: dict[str, int]

    @classmethod
    def open(cls, folder: str | Path, expected_key: str | None = None) -> "FeatureCache":
        import pyarrow as pa

        folder = Path(folder)
        meta_file = folder / META_FILE
        if not meta_file.is_file() or not (folder / FEATURES_FILE).is_file():
            raise FeatureCacheError(f"{folder}: not a feature cache (no {META_FILE} / {FEATURES_FILE}); rebuild it "
                                    f"(the sweep does so itself) or run with --no-feature-cache")
        meta = json.loads(meta_file.read_text())
        if expected_key is not None and meta.get("key") != expected_key:
            raise FeatureCacheError(
                f"{folder}: built for another encoder, layer selection or preprocessing (its key {meta.get('key')}, "
                f"this model needs {expected_key}); rebuild it (the sweep does so itself) or run with "
                f"--no-feature-cache")
        table = pa.ipc.open_file(pa.memory_map(str(folder / FEATURES_FILE))).read_all()
        index = {img: i for i, img in enumerate(table.column("image").to_pylist())}
        return cls(folder, meta, table, index)

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.meta["shape"])

    def verify(self, images: Iterable[str], image_root: str | Path | None) -> int:
        """Every image is in the cache and unchanged since it was encoded (size and mtime); returns how many were
        checked. Raises ``FeatureCacheError`` naming the first missing / changed image and how many there are."""
        sizes, mtimes = self.table.column("size").to_pylist(), self.table.column("mtime_ns").to_pylist()
        missing, changed, n = [], [], 0
        for image in dict.fromkeys(images):
            n += 1
            i = self.index.get(image)
            if i is None:
                missing.append(image)
                continue
            try:
                if image_stat(resolve_image(image, image_root or None)) != (sizes[i], mtimes[i]):
                    changed.append(image)
            except OSError:
                changed.append(image)
        if missing or changed:
            what = (f"{len(missing)} images are not in it (first: {missing[0]})" if missing else
                    f"{len(changed)} images changed since they were encoded (first: {changed[0]})")
            raise FeatureCacheError(f"{self.folder}: stale feature cache: {what}; rebuild it (the sweep does so "
                                    f"itself) or run with --no-feature-cache")
        return n

    def get(self, image: str) -> torch.Tensor:
        i = self.index.get(image)
        if i is None:
            raise FeatureCacheError(f"{self.folder}: no features for image {image}; rebuild the cache")
        buf = self.table.column("features")[i].as_buffer()
        return torch.from_numpy(np.frombuffer(buf, dtype=np.float16).reshape(self.shape).copy())
