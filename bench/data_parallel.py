"""One trial on 1 vs 2 Ray Train workers (data-parallel ranks; in stage 2 also sharded with FSDP), side by side:
training throughput and wall time.

The same tiny stage-1 run (the sample corpus's COCO rows, ``--epochs`` epochs of batch ``--batch_size``) through a
``TorchTrainer`` with one worker of 1 CPU, one of 2 CPUs (torch threads follow the CPU request) and two of 1 CPU each
(gloo, each optimizer step's global batch split across them, so all three make the same updates). Samples/s is
what each epoch report says (the global batch over the epoch's time, rank 0's clock); wall is ``trainer.fit()`` end
to end, start-up included. On a 2-core machine the fair comparison is two workers against one worker holding both
cores; the point is a cluster, where each worker has its own GPU. ``--stage 2`` trains projector + LLM and adds two
workers with ``train.sharding: fsdp`` (the LLM's weights, gradients and optimizer state split over them).

    python bench/data_parallel.py                      # tiny preset, 3 epochs of batch 8
    python bench/data_parallel.py --stage 2            # + FSDP
    python bench/data_parallel.py --preset local --epochs 1 --batch_size 4
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path


def main() -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch_size", type=int, default=8)
    ap.add_argument("--images", type=int, default=120, help="sample-corpus training images")
    ap.add_argument("--stage", type=int, default=1, choices=(1, 2))
    args, _ = ap.parse_known_args()
    import ray.train
    from ray.train.torch import TorchTrainer

    from data_pipeline.sample_corpus import TRAIN_FILE, write_sample_corpus
    from sweeps.trial import train_worker
    from vlm_core.base.ray_env import init_ray
    from vlm_core.config import TrainConfig
    from vlm_core.presets import get_preset

    init_ray()
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        corpus = tmp / "corpus"
        write_sample_corpus(corpus, n_train_images=args.images, n_eval_questions=1)
        runs = [("1x1", 1, 1, "none"), ("1x2", 1, 2, "none"), ("2x1", 2, 1, "none")]  # workers x CPUs each
        if args.stage == 2:
            runs.append(("2x1 fsdp", 2, 1, "fsdp"))
        for label, workers, cpus, sharding in runs:
            train = TrainConfig(stage=args.stage, epochs=args.epochs, batch_size=args.batch_size, lr=1e-3,
                                sharding=sharding)
            config = {"model": get_preset(args.preset).to_dict(), "train": train.to_dict(),
                      "data": {"train": str(corpus / TRAIN_FILE), "images": str(corpus / "images"), "val": None,
                               "val_fraction": 0.1, "features": None}, "run_name": "bench"}
            t0 = time.perf_counter()
            result = TorchTrainer(
                train_worker, train_loop_config=config,
                scaling_config=ray.train.ScalingConfig(num_workers=workers, resources_per_worker={"CPU": cpus}),
                run_config=ray.train.RunConfig(name=f"dp{label.replace(' ', '-')}", storage_path=str(tmp / "storage"),
                                               checkpoint_config=ray.train.CheckpointConfig(num_to_keep=None)),
            ).fit()
            wall = time.perf_counter() - t0
            reports = sorted((m for _, m in result.best_checkpoints), key=lambda m: m["epoch"])
            later = [m["samples_per_s"] for m in reports[1:]] or [reports[0]["samples_per_s"]]  # epoch 1 warms up
            rows[label] = {"wall_s": round(wall, 1), "samples_per_s": round(statistics.median(later), 1),
                             "steps": reports[-1]["step"], "final_train_loss": round(reports[-1]["train_loss"], 5)}
    r = {"preset": args.preset, "stage": args.stage, "epochs": args.epochs, "batch_size": args.batch_size,
         "workers": rows,
         "samples_per_s_2x1_vs_1x1": round(rows["2x1"]["samples_per_s"] / rows["1x1"]["samples_per_s"], 2),
         "samples_per_s_2x1_vs_1x2": round(rows["2x1"]["samples_per_s"] / rows["1x2"]["samples_per_s"], 2)}
    for label, row in rows.items():
        print(f"{label[0]} worker(s) × {label[2]} CPU(s){label[3:]}: {row['samples_per_s']} samples/s (median of "
              f"epochs 2+), {row['steps']} steps, wall {row['wall_s']} s, final train loss {row['final_train_loss']}")
    print(f"2 workers × 1 CPU vs 1 × 1: samples/s ×{r['samples_per_s_2x1_vs_1x1']}; vs 1 worker × 2 CPUs (the same "
          f"cores): ×{r['samples_per_s_2x1_vs_1x2']}")
    return r


if __name__ == "__main__":
    print(json.dumps(main()))
