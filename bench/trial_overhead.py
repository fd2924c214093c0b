"""A Ray Tune + Train trial vs the same training in-process: what scheduling one trial costs, in seconds.

Runs one stage-1 trial of the study (``--preset``, its first paper19 row) through ``run_sweep`` (Tune → Train
→ one worker) on an already started local Ray, and the same configs through ``run_stage`` in this process.

    python bench/trial_overhead.py --preset tiny
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path


def main() -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="tiny")
    args, _ = ap.parse_known_args()
    import pyarrow as pa
    import pyarrow.parquet as pq

    from data_pipeline.sample_corpus import TRAIN_FILE, write_sample_corpus
    from sweeps.driver import SweepConfig, plan, run_sweep
    from sweeps.trial import trial_configs
    from vlm_core.data import read_records, split_records
    from vlm_core.presets import preset
    from vlm_core.ray_env import init_ray
    from vlm_core.runner import DataSpec, run_stage

    init_ray()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        corpus = tmp / "corpus"
        write_sample_corpus(corpus, n_train_images=60, n_eval_questions=1)
        recs = [r for r in read_records(corpus / TRAIN_FILE) if r["image"].startswith("coco/")]
        train_recs, val_recs = split_records(recs, 0.2)
        for name in ("10kRandom", "20kUmap"):
            (tmp / "data" / name).mkdir(parents=True)
            for split, rows in (("train", train_recs), ("val", val_recs)):
                pq.write_table(pa.table({"id": [r["id"] for r in rows], "image": [r["image"] for r in rows],
                                         "conversations": [json.dumps(r["conversations"]) for r in rows]}),
                               tmp / "data" / name / f"{split}-00000.parquet")
        cfg = SweepConfig(data=str(tmp / "data"), images=str(corpus / "images"), preset=args.preset, stage="1",
                          limit=1, out=str(tmp / "sweep"), wandb="disabled", feature_cache=False)
        spec = plan(cfg, 1)[0].spec
        model, train = trial_configs(spec, args.preset, preset(args.preset).scale)
        data = DataSpec(train=str(tmp / "data" / spec.dataset / "train-00000.parquet"), images=str(corpus / "images"),
                        val=str(tmp / "data" / spec.dataset / "val-00000.parquet"))
        t0 = time.perf_counter()
        run_stage(model, train, data, tmp / "inprocess", write_final=False)
        inproc = time.perf_counter() - t0
        t0 = time.perf_counter()
        run_sweep(cfg)
        trial = time.perf_counter() - t0
    r = {"preset": args.preset, "config": spec.config_id, "epochs": train.epochs,
         "steps_per_epoch": train.max_steps_per_epoch, "in_process_s": round(inproc, 1),
         "tune_train_trial_s": round(trial, 1), "overhead_s": round(trial - inproc, 1),
         "ratio": round(trial / inproc, 2)}
    print(f"{r['config']} ({r['epochs']} epochs × {r['steps_per_epoch']} steps): in-process {r['in_process_s']} s, "
          f"as a Tune + Train trial {r['tune_train_trial_s']} s → +{r['overhead_s']} s ({r['ratio']}×)")
    return r


if __name__ == "__main__":
    print(json.dumps(main()))
