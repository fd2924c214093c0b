"""A trial's wall time with the frozen-encoder feature cache vs encoding on the fly: the same config, data and
steps, run one after the other in this process (``run_stage``, what a Train worker runs), for two encoders:

* ``local``: the ``local`` preset as the sweep runs it (112 px random CLIP, 8 layers + SmolLM2-135M);
* ``tinyclip-shape``: the same with a random encoder of TinyCLIP-ViT-40M-32's shape (224 px, patch 32, 12 layers,
  width 512), the production encoder's cost without its weights (none ship offline).

The cache is built once on Ray Data first (its time is printed too: the study's 25 trials share 4 caches); the
runs go on the fly, cache, cache, on the fly, and each mode's two wall times are averaged.

    python bench/feature_cache.py --steps 8 --batch_size 4
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path


def encoders() -> dict:
    from vlm_core.presets import get_preset

    local = get_preset("local-clip")  # a random-init CLIP of the sizes below (`local` before 2026-12-06)
    shaped = get_preset("local-clip")
    shaped.vision.image_size, shaped.vision.patch_size = 224, 32
    shaped.vision.hidden_size, shaped.vision.num_layers, shaped.vision.num_heads = 512, 12, 8
    return {"local": local, "tinyclip-shape": shaped}


def measure(name, cfg, steps: int, batch_size: int, corpus: Path, work: Path) -> dict:
    import pyarrow.parquet as pq

    from data_pipeline.features import build_feature_cache
    from vlm_core.config import TrainConfig
    from vlm_core.training.one_stage import DataSpec, run_stage

    records = work / "records.parquet"
    images = pq.read_table(records, columns=["image"]).column("image").to_pylist()
    t0 = time.perf_counter()
    cache = build_feature_cache(cfg, images, corpus / "images", work / f"features-{name}")
    build_s = time.perf_counter() - t0
    train = TrainConfig(stage=1, epochs=1, batch_size=batch_size, lr=1e-3, max_steps_per_epoch=steps,
                        max_val_samples=2 * batch_size)
    walls = {"on the fly": 0.0, "feature cache": 0.0}
    # A B B A: the run that goes second finds warm caches and allocators; this order gives both the same share
    for k, mode in enumerate(("on the fly", "feature cache", "feature cache", "on the fly")):
        data = DataSpec(train=str(records), images=str(corpus / "images"),
                        features=str(cache) if mode == "feature cache" else None)
        t0 = time.perf_counter()
        result, _ = run_stage(cfg, train, data, work / f"run-{name}-{k}", write_final=False)
        walls[mode] += (time.perf_counter() - t0) / 2
        assert result.steps == steps
    return {"encoder": name, "steps": steps, "batch_size": batch_size, "cache_build_s": round(build_s, 1),
            "images": len(set(images)), **{f"{k}_s": round(v, 1) for k, v in walls.items()},
            "ratio": round(walls["on the fly"] / walls["feature cache"], 2)}


def main() -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--batch_size", type=int, default=4)
    args, _ = ap.parse_known_args()
    import pyarrow as pa
    import pyarrow.parquet as pq

    from data_pipeline.sample_corpus import TRAIN_FILE, write_sample_corpus
    from vlm_core.base.ray_env import init_ray
    from vlm_core.data.dataset import read_records

    init_ray()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        corpus, work = Path(tmp) / "corpus", Path(tmp)
        write_sample_corpus(corpus, n_train_images=120, n_eval_questions=1)
        recs = [r for r in read_records(corpus / TRAIN_FILE) if r["image"].startswith("coco/")]
        pq.write_table(pa.table({"id": [r["id"] for r in recs], "image": [r["image"] for r in recs],
                                 "conversations": [json.dumps(r["conversations"]) for r in recs]}),
                       work / "records.parquet")
        for name, cfg in encoders().items():
            rows.append(measure(name, cfg, args.steps, args.batch_size, corpus, work))
    for r in rows:
        print(f"{r['encoder']:15} {r['steps']} steps of batch {r['batch_size']}: on the fly {r['on the fly_s']} s, "
              f"feature cache {r['feature cache_s']} s → {r['ratio']}× (cache of {r['images']} images built once "
              f"in {r['cache_build_s']} s)")
    return rows


if __name__ == "__main__":
    print(json.dumps(main()))
