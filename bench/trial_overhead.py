"""What a sweep trial costs beyond its training, in seconds, on each runner, side by side.

Runs the study's first ``--trials`` stage-1 configs (``--preset``) one at a time through ``run_sweep`` on a local
Ray — once with ``--runner auto`` (the CPU backend's trials train in the Tune trial itself, Tune reusing its
process), once with ``--runner train`` (Tune → Train controller → one worker per trial) — and the same configs
through ``run_stage`` in this process. Per-trial fixed cost = (sweep wall − in-process wall) / trials: the sweep's
own start (Tune, the token-length pass) is spread over its trials.

    python bench/trial_overhead.py --preset tiny --trials 3
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
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--runners", default="auto,train", help="comma-separated --runner values")
    args, _ = ap.parse_known_args()

    from data_pipeline.sample_corpus import write_sample_corpus, write_small_variants
    from sweeps.driver import SweepConfig, plan, run_sweep
    from vlm_core.base.ray_env import init_ray
    from vlm_core.training.one_stage import DataSpec, run_stage

    init_ray()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        corpus = tmp / "corpus"
        write_sample_corpus(corpus, n_train_images=60, n_eval_questions=1)
        write_small_variants(corpus, tmp / "data")
        base = dict(data=str(tmp / "data"), images=str(corpus / "images"), preset=args.preset, stage="1",
                    limit=args.trials, max_concurrent=1, wandb="disabled", feature_cache=False)
        planned = plan(SweepConfig(**base), 1)
        inproc = 0.0
        for k, p in enumerate(planned):
            data = DataSpec(train=str(tmp / "data" / p.spec.dataset / "train-00000.parquet"),
                            images=str(corpus / "images"),
                            val=str(tmp / "data" / p.spec.dataset / "val-00000.parquet"))
            t0 = time.perf_counter()
            run_stage(p.model, p.train, data, tmp / f"inprocess-{k}", write_final=False)
            inproc += time.perf_counter() - t0
        walls = {}
        for runner in args.runners.split(","):
            t0 = time.perf_counter()
            run_sweep(SweepConfig(**base, runner=runner, out=str(tmp / f"sweep-{runner}")))
            walls[runner] = time.perf_counter() - t0
    n = len(planned)
    r = {"preset": args.preset, "trials": n, "configs": [p.spec.config_id for p in planned],
         "in_process_s": round(inproc, 1),
         "runners": {name: {"sweep_s": round(w, 1), "fixed_cost_per_trial_s": round((w - inproc) / n, 1)}
                     for name, w in walls.items()}}
    print(f"{n} stage-1 trials of {args.preset}, one at a time; in-process {r['in_process_s']} s in all")
    for name, row in r["runners"].items():
        print(f"  --runner {name:5}: sweep {row['sweep_s']} s → {row['fixed_cost_per_trial_s']} s per trial beyond "
              f"its training")
    return r

if __name__ == "__main__":
    print(json.dumps(main()))
