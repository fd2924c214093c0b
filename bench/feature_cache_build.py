"""Building the feature caches of one dataset: every layer selection from one encoder pass, against one build per
selection (before) and a plain batched loop over the same images in this process, side by side.

The ``--preset`` model's encoder (``local``: EfficientNet-Lite0 at 224 px) over ``--images`` images of the sample
corpus, for the two selections the study's trials need (the MLP's main layer; the dense connector's group means):

* ``one pass``: ``data_pipeline.features.build_feature_caches`` with both models (Ray Data, as the sweep builds
  them; run first and last, averaged);
* ``per selection``: ``build_feature_caches`` once per model (what the sweep did before);
* ``plain loop``: ``FeatureEncoder.encode_many`` over batches of 32 in this process (decode, preprocess, one
  encoder pass, both selections; no files written) — the floor the Ray Data build is measured against.

    python bench/feature_cache_build.py --preset local --images 300
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path


def main() -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="local")
    ap.add_argument("--images", type=int, default=300)
    args, _ = ap.parse_known_args()
    import torch

    from data_pipeline.features import BATCH, build_feature_caches
    from data_pipeline.sample_corpus import TRAIN_FILE, write_sample_corpus
    from vlm_core.base.ray_env import init_ray
    from vlm_core.config import VLMConfig
    from vlm_core.data.dataset import read_records
    from vlm_core.data.feature_cache import FeatureEncoder
    from vlm_core.data.images import open_rgb
    from vlm_core.presets import get_preset

    init_ray()
    mlp = get_preset(args.preset)
    dense = VLMConfig.from_dict(mlp.to_dict())
    dense.projector.name = "dense_connector"
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_sample_corpus(tmp / "corpus", n_train_images=args.images, n_eval_questions=1)
        root = tmp / "corpus" / "images"
        images = sorted({r["image"] for r in read_records(tmp / "corpus" / TRAIN_FILE)})[: args.images]
        walls: dict[str, float] = {}
        one, per = "one pass (Ray Data, both selections)", "per selection (Ray Data, one build each)"
        for k, way in enumerate((one, per, one)):  # A B A: the first build pays Ray Data's start alone
            t0 = time.perf_counter()
            for i, models in enumerate([[mlp, dense]] if way == one else [[mlp], [dense]]):
                build_feature_caches(models, images, root, tmp / f"build-{k}-{i}")
            walls[way] = walls.get(way, 0.0) + (time.perf_counter() - t0) / (2 if way == one else 1)
        t0 = time.perf_counter()
        encoder = FeatureEncoder(mlp)
        selections = [encoder.selection(mlp), encoder.selection(dense)]
        with torch.no_grad():
            for start in range(0, len(images), BATCH):
                encoder.encode_many([open_rgb(root / p) for p in images[start:start + BATCH]], selections)
        walls["plain loop (this process, both selections)"] = time.perf_counter() - t0
    out = {"preset": args.preset, "images": len(images), "threads": torch.get_num_threads(),
           "wall_s": {k: round(v, 1) for k, v in walls.items()},
           "images_per_s": {k: round(len(images) / v, 1) for k, v in walls.items()}}
    print(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
