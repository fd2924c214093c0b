"""Every performance benchmark, one after the other (each in its own process, nothing else should run), and the
figures as the Markdown that BENCHMARKS.md records.

    python bench/run_all.py                 # ~10 min on 2 cores; prints the tables
    python bench/run_all.py --quick         # smaller sizes, for a smoke check
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def run(script: str, *args: str) -> object:
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, str(HERE / script), *args], capture_output=True, text=True,
                         cwd=HERE.parent)
    if out.returncode != 0:
        raise SystemExit(f"{script} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith(("{", "["))]
    print(f"{script} {' '.join(args)}: {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return json.loads(lines[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", type=Path, default=None, help="also write the raw results here")
    args = ap.parse_args()
    q = args.quick
    res = {
        "padding": run("padding.py", "--batch_size", "8", "--rows", "200" if q else "600"),
        "feature_cache": run("feature_cache.py", "--steps", "3" if q else "8", "--batch_size", "4"),
        "loop_overhead": run("loop_overhead.py", "--steps", "3" if q else "6", "--rounds", "1" if q else "2"),
        "trial_overhead": run("trial_overhead.py", "--preset", "tiny", "--trials", "3"),
        "embedding": run("data_build.py", "--rows", "2000" if q else "5000", "--compare_rows",
                         "500" if q else "2000", "--out", "/tmp/bench-data-run-all"),
        "gpu_plan": run("gpu_plan.py", "--tokens", "400", "--mfu", "0.35"),
    }
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))
    p = res["padding"]
    print(f"### Padding (`python bench/padding.py --batch_size 8 --rows {200 if q else 600}`)\n\n"
          f"{p['samples']} conversations of the sample corpus, `local` chat format, mean {p['mean_length']} / max "
          f"{p['max_length']} tokens with the image tokens, batch {p['batch_size']}:\n\n"
          "| scheme | token positions / step | × the data |\n|---|---|---|")
    for k in p["per_step"]:
        print(f"| {k} | {p['per_step'][k]} | {p['vs_data'][k]} |")
    print(f"\n### Feature cache (`python bench/feature_cache.py --steps {3 if q else 8} --batch_size 4`)\n\n"
          "| encoder | on the fly (s) | feature cache (s) | ratio | cache build (s, once) |\n|---|---|---|---|---|")
    for r in res["feature_cache"]:
        print(f"| {r['encoder']} | {r['on the fly_s']} | {r['feature cache_s']} | {r['ratio']}× | "
              f"{r['cache_build_s']} ({r['images']} images) |")
    lo = res["loop_overhead"]
    print(f"\n### Training-loop overhead (`python bench/loop_overhead.py --steps {3 if q else 6} --rounds "
          f"{1 if q else 2}`)\n\nvlm_core step {lo['ours_median_s']} s vs plain loop {lo['plain_median_s']} s "
          f"(median of {lo['steps_each']}): **{lo['ratio']}×**")
    t = res["trial_overhead"]
    print(f"\n### Trial overhead (`python bench/trial_overhead.py --preset tiny --trials 3`)\n\n{t['trials']} "
          f"trials, in-process {t['in_process_s']} s in all; per trial beyond its training: "
          + ", ".join(f"`--runner {name}` **{row['fixed_cost_per_trial_s']} s**" for name, row in t["runners"].items()))
    e = res["embedding"]["embedding"]
    print(f"\n### Embedding (`python bench/data_build.py --rows {2000 if q else 5000} --compare_rows "
          f"{500 if q else 2000}`)\n\n{e['rows']} human turns: Ray Data {e['ray_data_s']} s "
          f"({e['embed_actors']} actors × {e['embed_cpus_per_actor']} CPUs) vs plain `SentenceTransformer.encode` "
          f"{e['plain_encode_s']} s ({e['plain_threads']} threads): **{e['ray_over_plain_time']}×** the time")
    print("\n### GPU plan (`python bench/gpu_plan.py --tokens 400 --mfu 0.35`)\n\n| run | profile | GFLOP / token | "
          "encoder share of the step | step (s) | memory (GB) |\n|---|---|---|---|---|---|")
    for r in res["gpu_plan"]:
        print(f"| {r['run']} | {r['profile']} | {r['gflop_per_token']} | {100 * r['encoder_share']:.2f}% | "
              f"~{r['step_s']} | ~{r['memory_gb']} |")


if __name__ == "__main__":
    main()
