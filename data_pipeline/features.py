"""Build a frozen-encoder feature cache (``vlm_core.data.feature_cache``) on Ray Data: images are decoded and encoded by
actors (one per GPU, or half the CPUs: :class:`EncoderActors`), the driver streams their fp16 features into one
Arrow file, written atomically. Reused when its key and every image's size / mtime still match; rebuilt (and said
so) otherwise.
"""

from __future__ import annotations

import contextlib
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
    """Ray Data actor: image paths → each selection's projector inputs as fp16 bytes (``features_<i>``, one pass of
    the encoder for all), plus each image's size / mtime when encoded."""

    def __init__(self, models: list[dict[str, Any]], image_root: str):
        cfgs = [VLMConfig.from_dict(m) for m in models]
        self.encoder = FeatureEncoder(cfgs[0])
        self.encoder.to(pick_device())
        self.selections = [self.encoder.selection(c) for c in cfgs]
        self.root = Path(image_root)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        import numpy as np

        paths = [str(p) for p in batch["image"]]
        files = [resolve_image(p, self.root) for p in paths]
        stats = [image_stat(f) for f in files]  # before reading: a file changed meanwhile shows as stale
        feats = self.encoder.encode_many([open_rgb(f) for f in files], self.selections)
        return {"image": paths, "size": np.array([s[0] for s in stats], dtype=np.int64),
                "mtime_ns": np.array([s[1] for s in stats], dtype=np.int64),
                **{f"features_{i}": [f.tobytes() for f in sel.half().numpy()] for i, sel in enumerate(feats)}}


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
    selection (:func:`build_feature_caches` for one model)."""
    return build_feature_caches([model], images, image_root, root, actors)[0]


def build_feature_caches(models: list[VLMConfig], images: list[str], image_root: str | Path, root: str | Path,
                         actors: EncoderActors = EncoderActors()) -> list[Path]:
    """For each of ``models`` (one vision config, any projectors), the cache folder ``root/<key>`` of its layer
    selection over every image in ``images``; those not already there (matching and fresh) are built together on
    Ray Data, in one pass of the encoder per image (Ray must be initialised, the actors placed as ``actors`` says)."""
    import pyarrow as pa
    import ray.data

    encoder = FeatureEncoder(models[0])
    selections = [encoder.selection(m) for m in models]  # refuses a model of another vision config
    unique = sorted(dict.fromkeys(images))
    targets = [Path(root) / encoder.key(s) for s in selections]
    todo = []
    for i, target in enumerate(targets):
        if target in (targets[j] for j in todo):
            continue  # two models with the same selection: one cache
        if target.exists():
            try:
                FeatureCache.open(target, target.name).verify(unique, image_root)
                log.info("feature cache: reusing %s (%d images)", target, len(unique))
                continue
            except FeatureCacheError as e:
                log.warning("feature cache: rebuilding: %s", e)
        todo.append(i)
    if not todo:
        return targets
    t0 = time.perf_counter()
    shapes = {i: [selections[i].num_tokens, selections[i].in_dim] for i in todo}  # what select() returns per image
    inputs = {i: encoder.inputs(selections[i]) for i in todo}
    del encoder, selections
    ds = ray.data.from_items([{"image": p} for p in unique]).map_batches(
        EncodeImages, fn_constructor_args=([models[i].to_dict() for i in todo], str(image_root)), batch_size=BATCH,
        **actors.plan(-(-len(unique) // BATCH)))
    schemas = {i: pa.schema([("image", pa.string()), ("size", pa.int64()), ("mtime_ns", pa.int64()),
                             ("features", pa.binary(2 * shapes[i][0] * shapes[i][1]))]) for i in todo}
    n = 0
    with contextlib.ExitStack() as stack:
        tmps = {i: stack.enter_context(atomic_dir(targets[i])) for i in todo}
        writers = {}
        for i in todo:
            sink = stack.enter_context(pa.OSFile(str(tmps[i] / FEATURES_FILE), "wb"))
            writers[i] = pa.ipc.new_file(sink, schemas[i])
        for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None):
            for k, i in enumerate(todo):
                part = batch.select(["image", "size", "mtime_ns", f"features_{k}"]).rename_columns(
                    ["image", "size", "mtime_ns", "features"])
                writers[i].write_table(part.cast(schemas[i]))
            n += batch.num_rows
        for w in writers.values():
            w.close()
        if n != len(unique):
            raise FeatureCacheError(f"{', '.join(str(targets[i]) for i in todo)}: encoded {n} of {len(unique)} "
                                    f"images; nothing was kept")
        for i in todo:
            (tmps[i] / META_FILE).write_text(json.dumps({"key": targets[i].name, "inputs": inputs[i],
                                                         "shape": shapes[i], "dtype": "float16", "images": n},
                                                        indent=2, sort_keys=True, default=str))
    log.info("feature cache: %d images encoded once into %d selection(s) in %.1f s: %s", n, len(todo),
             time.perf_counter() - t0, ", ".join(f"{targets[i]} ({'×'.join(map(str, shapes[i]))} fp16 each)"
                                                   for i in todo))
    return targets
