"""Scale check of ``vlm-sweep data build`` and its embedding stage, measured side by side on this machine.

1. Generates a ShareGPT4V-style JSONL of ``--rows`` rows (easy-vqa questions recombined, COCO-style paths, a
   few bad rows), runs the whole Ray Data pipeline on it and reports wall time, rows/s and the peak RSS of
   the driver and of all Ray processes together (sampled every 0.5 s);
2. embeds the same ``--compare_rows`` human turns twice: through Ray Data's actor pool (as the pipeline does)
   and with a plain single-process ``SentenceTransformer.encode``, and prints the ratio.

    python bench/data_build.py --rows 200000 --compare_rows 20000 --out /tmp/bench-data
    python bench/data_build.py --rows 5000 --compare_rows 2000 --out /tmp/bench-data-small   # quick
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import threading
import time
from pathlib import Path


class RssMonitor(threading.Thread):
    """Peak RSS of one process (this one, or ``driver_pid`` when set before ``start``) and of every Ray process on
    the machine with it, sampled."""

    def __init__(self, interval: float = 0.5, watch: int | None = None):
        super().__init__(daemon=True)
        self.interval, self.stop_flag = interval, threading.Event()
        self.peak_driver = self.peak_total = 0
        self.driver_pid = watch

    def run(self) -> None:
        import psutil

        me = psutil.Process(self.driver_pid) if self.driver_pid else psutil.Process()
        while not self.stop_flag.is_set():
            total = 0
            for p in psutil.process_iter(["pid", "cmdline", "memory_info"]):
                try:
                    cmd = " ".join(p.info["cmdline"] or [])
                    if p.info["pid"] == me.pid or "ray" in cmd:
                        total += p.info["memory_info"].rss
                except (psutil.Error, TypeError):
                    continue
            try:
                self.peak_driver = max(self.peak_driver, me.memory_info().rss)
            except psutil.Error:
                break
            self.peak_total = max(self.peak_total, total)
            self.stop_flag.wait(self.interval)


def generate(path: Path, rows: int, seed: int = 0) -> None:
    import easy_vqa

    texts, answers, _ = easy_vqa.get_train_questions()
    rng = random.Random(seed)
    with path.open("w") as f:
        for i in range(rows):
            if i % 1000 == 999:
                f.write("{broken json\n")
                continue
            turns = []
            for k in range(rng.choice((1, 2, 3))):
                j = rng.randrange(len(texts))
                q = texts[j][:1].upper() + texts[j][1:]
                turns += [{"from": "human", "value": f"<image>\n{q}" if k == 0 else q},
                          {"from": "gpt", "value": answers[j]}]
            prefix = "coco/train2017" if i % 10 else "sam/images"
            f.write(json.dumps({"id": f"g{i:07d}", "image": f"{prefix}/{i:012d}.jpg", "conversations": turns}) + "\n")


def compare_embedding(texts: list[str], batch_size: int, rows_per_call: int) -> dict:
    import numpy as np
    import ray

    from data_pipeline.build import plan_actors
    from data_pipeline.config import BuildConfig
    from data_pipeline.embed import EmbedBatch, load_embedder

    plan = plan_actors(BuildConfig(source="-", images="-", out="-"), {k.lower(): v for k, v in
                                                                        ray.cluster_resources().items()})
    t0 = time.perf_counter()
    ds = ray.data.from_items([{"human_text": t, "reason": ""} for t in texts])
    n = ds.map_batches(EmbedBatch, fn_constructor_args=(None, batch_size, max(1, math.ceil(plan.embed_cpus))),
                       batch_size=rows_per_call, compute=ray.data.ActorPoolStrategy(size=plan.embed_actors),
                       num_cpus=plan.embed_cpus).materialize().count()  # the embeddings held, as encode's
    ray_s = time.perf_counter() - t0
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    t0 = time.perf_counter()
    model = load_embedder(None, "cpu")
    emb = model.encode(texts, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True)
    plain_s = time.perf_counter() - t0
    assert n == len(texts) == len(np.asarray(emb))
    return {"rows": len(texts), "ray_data_s": round(ray_s, 1), "plain_encode_s": round(plain_s, 1),
            "ray_rows_per_s": round(len(texts) / ray_s, 1), "plain_rows_per_s": round(len(texts) / plain_s, 1),
            "ray_over_plain_time": round(ray_s / plain_s, 2), "embed_actors": plan.embed_actors,
            "embed_cpus_per_actor": plan.embed_cpus, "plain_threads": torch.get_num_threads(),
            "rows_per_call": rows_per_call}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--compare_rows", type=int, default=20_000)
    ap.add_argument("--out", type=Path, default=Path("/tmp/bench-data"))
    ap.add_argument("--batch_size", type=int, default=128)
    ap.add_argument("--rows_per_call", type=int, default=4096, help="--embed.rows_per_call")
    ap.add_argument("--compare_only", action="store_true",
                    help="only the embedding comparison, on the generated rows' first human turns")
    args = ap.parse_args()
    from data_pipeline.build import build
    from data_pipeline.config import BuildConfig, EmbedConfig, VariantSpec
    from vlm_core.base.ray_env import init_ray

    args.out.mkdir(parents=True, exist_ok=True)
    src = args.out / "source.jsonl"
    if not src.is_file() or sum(1 for _ in src.open()) != args.rows:
        generate(src, args.rows)
    images = args.out / "images"
    images.mkdir(exist_ok=True)
    init_ray()
    if args.compare_only:
        texts = []
        with src.open() as f:
            for line in f:
                try:
                    texts.append(json.loads(line)["conversations"][0]["value"].replace("<image>\n", ""))
                except (ValueError, KeyError):
                    continue
                if len(texts) == args.compare_rows:
                    break
        result = {"embedding": compare_embedding(texts, args.batch_size, args.rows_per_call)}
        print(json.dumps(result))
        return
    mon = RssMonitor()
    mon.start()
    t0 = time.perf_counter()
    size_r, size_u = min(10_000, args.rows // 4), min(20_000, args.rows // 2)
    manifest = build(BuildConfig(source=str(src), images=str(images), out=str(args.out / "data"),
                                 variants=[VariantSpec("10kRandom", "random", size_r),
                                           VariantSpec("20kUmap", "umap", size_u)],
                                 embed=EmbedConfig(batch_size=args.batch_size, rows_per_call=args.rows_per_call),
                                 check_images=False))  # generated rows name images that are not there
    wall = time.perf_counter() - t0
    mon.stop_flag.set()
    mon.join()
    result = {"pipeline": {"rows": args.rows, "wall_s": round(wall, 1), "rows_per_s": round(args.rows / wall, 1),
                           "peak_rss_driver_mb": round(mon.peak_driver / 2**20),
                           "peak_rss_all_ray_processes_mb": round(mon.peak_total / 2**20),
                           "timings_s": manifest["timings_s"], "counts": manifest["counts"],
                           "reused": manifest["reused_stages"]}}
    import pyarrow.dataset as pads

    rows_dir = next((args.out / "data" / "_work").glob("rows-*"))
    texts = pads.dataset(rows_dir, format="parquet").head(args.compare_rows, columns=["human_text"])
    result["embedding"] = compare_embedding(texts["human_text"].to_pylist(), args.batch_size, args.rows_per_call)
    print(json.dumps(result, indent=2))
    (args.out / "bench_result.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result))  # last line: for bench/run_all.py


if __name__ == "__main__":
    main()
