"""UMAP's kernel cache (``data_pipeline.umap_kernels``) on whole data builds, side by side in one run: the same build
with the cache off (every process compiles, as umap-learn does), on an empty cache (a first build that compiles),
on a cache filled beforehand (``python -m data_pipeline.fill_kernels``, as ``scripts/setup.sh`` runs it, for the
corpus's build; with ``--nn-descent`` for the generated rows'; timed apart), and on the cache a build filled (every
later build), in that order, each in a fresh process and output folder.

Two builds: the main job's (``vlm-sweep data build`` on the sample corpus, 566 rows: UMAP's exact-neighbour path)
and ``bench/data_build.py``'s generated ``--rows`` (NN-descent at 4,096 fit rows and above). The figures are the
build's own timings (``manifest.json``'s ``timings_s``) and its wall time.

    python bench/kernel_cache.py --rows 5000 --out /tmp/bench-kernels
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).parent
VLM_SWEEP = Path(sys.executable).with_name("vlm-sweep")
CORPUS_VARIANTS = "[{name: 10kRandom, kind: random, size: 300}, {name: 20kUmap, kind: umap, size: 400}]"


def fill(cache: str, *flags: str) -> float:
    """An empty cache filled as ``scripts/setup.sh`` fills it (``--nn-descent``: NN-descent's kernels too); seconds."""
    shutil.rmtree(cache, ignore_errors=True)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "data_pipeline.fill_kernels", *flags], env={**os.environ,
                   "VLM_SWEEP_KERNEL_CACHE": cache}, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return round(time.perf_counter() - t0, 1)


def run(cmd: list[str], cache: str, manifest: Path) -> dict:
    env = {**os.environ, "VLM_SWEEP_KERNEL_CACHE": cache}
    t0 = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    m = json.loads(manifest.read_text())
    return {**{k: round(v, 1) for k, v in m["timings_s"].items()}, "build_s": round(m["wall_s"], 1),
            "process_wall_s": round(wall, 1)}


def main() -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=5000)
    ap.add_argument("--out", type=Path, default=Path("/tmp/bench-kernels"))
    ap.add_argument("--builds", nargs="+", choices=["corpus", "rows"], default=["corpus", "rows"])
    args = ap.parse_args()
    shutil.rmtree(args.out, ignore_errors=True)
    args.out.mkdir(parents=True)
    cache = str(args.out / "kernels")
    corpus = args.out / "corpus"
    subprocess.run([str(VLM_SWEEP), "data", "sample-corpus", "--out", str(corpus)], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    results: dict[str, dict] = {}
    cases = (("off", "off"), ("cold", cache), ("filled by setup", cache), ("warm", cache))
    for case, folder in cases if "corpus" in args.builds else ():
        filled = {"fill_s": fill(cache)} if case == "filled by setup" else {}
        out = args.out / f"corpus-{case.replace(' ', '-')}"
        results[f"corpus/{case}"] = filled | run(
            [str(VLM_SWEEP), "data", "build", "--source", str(corpus / "sharegpt4v_sample.jsonl"), "--images",
             str(corpus / "images"), "--out", str(out), "--variants", CORPUS_VARIANTS], folder, out / "manifest.json")
        print(json.dumps({f"corpus/{case}": results[f"corpus/{case}"]}), flush=True)
    shutil.rmtree(cache, ignore_errors=True)
    for case, folder in cases if "rows" in args.builds else ():
        filled = {"fill_s": fill(cache, "--nn-descent")} if case == "filled by setup" else {}
        out = args.out / f"rows{args.rows}-{case.replace(' ', '-')}"
        results[f"rows{args.rows}/{case}"] = filled | run(
            [sys.executable, str(BENCH / "data_build.py"), "--rows", str(args.rows), "--compare_rows", "200", "--out",
             str(out)], folder, out / "data" / "manifest.json")
        print(json.dumps({f"rows{args.rows}/{case}": results[f"rows{args.rows}/{case}"]}), flush=True)
    print(json.dumps(results))  # last line: for bench/run_all.py
    return results


if __name__ == "__main__":
    main()
