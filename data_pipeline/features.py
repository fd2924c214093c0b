"""Build a frozen-encoder feature cache (``vlm_core.data.feature_cache``) on Ray Data: images are decoded and encoded by
actors (one per GPU, or half the CPUs: :class:`EncoderActors`), the driver streams their fp16 features into one
Arrow file, written atomically. Reused when its key and every image's size / mtime still match; rebuilt (and said
so) otherwise.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vlm_core.base.devices import pick_device
from vlm_core.base.outputs import atomic_dir
from vlm_core.config import VLMConfig
from vlm_core.data.feature_cache import (
    FEATURES_FILE,
    META_FILE,
    FeatureCache,
    FeatureCacheError,
    FeatureEncoder,
    image_stat,
)
from vlm_core.data.images import open_rgb, resolve_image

log = logging.getLogger(__name__)

BATCH = 32


class EncodeImages:
    """Ray Data actor: image paths → their projector inputs as fp16 bytes (plus the size / mtime encoded)."""

    def __init__(self, model: dict[str, Any], image_root: str):

        self.encoder = FeatureEncoder(VLMConfig.from_dict(model))
        self.encoder.to(pick_device())
        self.root = Path(image_root)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        import numpy as np

        paths = [str(p) for p in batch["image"]]
        files = [resolve_image(p, self.root) for p in paths]
        stats = [image_stat(f) for f in files]  # before reading: a file changed meanwhile shows as stale
        feats = self.encoder.encode([open_rgb(f) for f in files]).half().numpy()
        return {"image": paths, "size": np.array([s[0] for s in stats], dtype=np.int64),
                "mtime_ns": np.array([s[1] for s in stats], dtype=np.int64),
                "features": [f.tobytes() for f in feats]}


@dataclass(frozen=True)
class EncoderActors:
    """Where the encoding actors go: ``gpus`` actors of one GPU each (of ``accelerator_type`` when given), else
    half the CPUs up now. An autoscaling cluster whose GPU nodes are not up yet names its GPUs here, so the
    autoscaler launches them (what is up now would put every image on the GPU-less head's CPUs)."""

    gpus: int = 0
    accelerator_type: str | None = None

    def plan(self, batches: int) -> dict[str, Any]:
        """``map_batches``' resources and actor pool for ``batches`` batches (no more actors than batches)."""
        import ray
        import ray.data

        up = ray.cluster_resources()  # one read of the GCS, whichever branch
        gpus = self.gpus or int(up.get("GPU", 0))
        if gpus >= 1:
            extra = {"accelerator_type": self.accelerator_type} if self.accelerator_type else {}
            return {"num_gpus": 1, "compute": ray.data.ActorPoolStrategy(size=max(1, min(gpus, batches))), **extra}
        cpus = int(up.get("CPU", 1))
        return {"num_cpus": 1, "compute": ray.data.ActorPoolStrategy(size=max(1, min(cpus // 2, batches)))}


def build_feature_cache(model: VLMConfig, images: list[str], image_root: str | Path, root: str | Path,
                        actors: EncoderActors = EncoderActors()) -> Path:
    """The cache folder ``root/<key>`` holding features of every image in ``images`` for ``model``'s encoder and
    selection; built on Ray Data (Ray must be initialised, the actors placed as ``actors`` says) unless a matching,
    fresh one is already there."""
    import pyarrow as pa
    import ray.data

    encoder = FeatureEncoder(model)
    inputs, key = encoder.inputs(), encoder.key()
    target = Path(root) / key
    unique = sorted(dict.fromkeys(images))
    if target.exists():
        try:
            FeatureCache.open(target, key).verify(unique, image_root)
            log.info("feature cache: reusing %s (%d images)", target, len(unique))
            return target
        except FeatureCacheError as e:
            log.warning("feature cache: rebuilding: %s", e)
    t0 = time.perf_counter()
    shape = [encoder.projector.num_tokens, encoder.projector.in_dim]  # what select() returns per image
    del encoder
    ds = ray.data.from_items([{"image": p} for p in unique]).map_batches(
        EncodeImages, fn_constructor_args=(model.to_dict(), str(image_root)), batch_size=BATCH,
        **actors.plan(-(-len(unique) // BATCH)))
    schema = pa.schema([("image", pa.string()), ("size", pa.int64()), ("mtime_ns", pa.int64()),
                        ("features", pa.binary(2 * shape[0] * shape[1]))])
    n = 0
    with atomic_dir(target) as tmp:
        with pa.OSFile(str(tmp / FEATURES_FILE), "wb") as sink, pa.ipc.new_file(sink, schema) as writer:
            for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None):
                writer.write_table(batch.select(schema.names).cast(schema))
                n += batch.num_rows
        if n != len(unique):
            raise FeatureCacheError(f"{target}: encoded {n} of {len(unique)} images; nothing was kept")
        (tmp / META_FILE).write_text(json.dumps({"key": key, "inputs": inputs, "shape": shape, "dtype": "float16",
                                                 "images": n}, indent=2, sort_keys=True, default=str))
    log.info("feature cache: %d images encoded into %s in %.1f s (%s fp16 each)", n, target,
             time.perf_counter() - t0, "×".join(map(str, shape)))
    return target
