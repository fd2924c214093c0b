"""What a searcher adds per trial: the same trials run as a grid, a random search and an Optuna search, side by side.

Every variant runs the same ``--trials`` stage-1 configs of one row (``--preset``, paper row 3) — stage 1's learning
rate at ``--trials`` fixed values — through ``run_sweep``: ``--search grid`` enumerates them as ``grid:`` values,
``--search random`` and ``--search optuna`` get them as their points to evaluate first (so each suggests exactly
those, in that order), all with ``--scheduler none`` (every trial runs every epoch) and the same concurrency. The
difference in wall time per trial is what the searcher costs (suggesting, being told results, saving its state
with the experiment). Variants alternate over ``--repeats`` rounds, since this machine's timings drift.

    python bench/search_overhead.py --trials 8 --repeats 2
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
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--concurrent", type=int, default=2)
    args, _ = ap.parse_known_args()

    from data_pipeline.sample_corpus import write_sample_corpus, write_small_variants
    from sweeps.driver import SweepConfig, run_sweep
    from vlm_core.base.ray_env import init_ray

    init_ray()
    rates = [round(1e-4 * 1.5 ** i, 8) for i in range(args.trials)]
    grid = json.dumps({"train.lr": {"grid": rates}})
    points = json.dumps({"space": {"train.lr": {"loguniform": [1e-5, 1e-2]}}, "points": [{"train.lr": r}
                                                                                       for r in rates]})
    variants = {"grid": ("grid", grid), "random": ("random", points), "optuna": ("optuna", points)}
    walls: dict[str, list[float]] = {v: [] for v in variants}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        corpus = tmp / "corpus"
        write_sample_corpus(corpus, n_train_images=60, n_eval_questions=1)
        write_small_variants(corpus, tmp / "data", ("20kUmap",))
        for rnd in range(args.repeats):
            for name, (search, space) in variants.items():
                out = tmp / f"{name}-{rnd}"
                cfg = SweepConfig(data=str(tmp / "data"), images=str(corpus / "images"), preset=args.preset,
                                  stage="1", paper_ids=[3], out=str(out), wandb="disabled", search=search,
                                  space=space, num_samples=args.trials, max_concurrent=args.concurrent,
                                  scheduler="none")
                t0 = time.perf_counter()
                result = run_sweep(cfg)
                walls[name].append(time.perf_counter() - t0)
                ran = sorted(json.loads((Path(t["path"]) / "params.json").read_text())["params"]["train.lr"]
                             for t in result["stages"][1])
                assert ran == sorted(rates), (name, ran)  # the very same trials
    grid_wall = statistics.median(walls["grid"])
    out = {"trials": args.trials, "concurrent": args.concurrent, "preset": args.preset,
           "wall_s": {k: [round(w, 1) for w in v] for k, v in walls.items()},
           "per_trial_s": {k: round(statistics.median(v) / args.trials, 2) for k, v in walls.items()},
           "added_per_trial_s": {k: round((statistics.median(v) - grid_wall) / args.trials, 2)
                                 for k, v in walls.items() if k != "grid"}}
    print(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
