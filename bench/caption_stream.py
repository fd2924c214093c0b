"""ShareGPT4V's share-captioner file at its real size, streamed through the data build's first steps with its
memory watched.

``share-captioner_coco_lcs_sam_1246k_1107.json`` is one JSON list of ~1.2 M single-turn caption records (COCO, LCS-558K
and SAM images, as its name says). For each ``--rows`` size this writes a file of that shape (records as
``data_pipeline.caption_fixture`` makes them: a fixed caption prompt, a GPT-4V-length caption drawn from a pool of
``--captions`` distinct ones, the real roots' image paths, ~9.5 % COCO as COCO train2017's 118k images are of
1.2 M), then times, in a fresh Ray session:

1. ``start_run``: the JSON list converted to JSON Lines once (ijson, streaming), and its sha256;
2. ``read_and_filter``: read + validate + filter by ``coco/`` as Ray Data tasks (the build's own steps), consumed
   block by block as the embedding actors would consume them, counting kept and rejected rows. No images are
   written, so ``check_images`` is off: decoding the kept rows' images is measured by the real-size build of
   ``caption_fixture`` (README, "Preparing data"), whose 64-px JPEGs are there.

Peak RSS of this driver and of all Ray processes together is sampled every 0.5 s (``RssMonitor``). Two sizes side by
side show what grows with the row count.

    python bench/caption_stream.py --rows 311725 1246901 --out /tmp/caption-stream
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from data_build import RssMonitor  # noqa: E402

COCO_SHARE = 118_287 / 1_246_901
"""COCO train2017's images over the file's rows (the name's 1246k)."""


def write_share_captioner(path: Path, rows: int, captions: int, seed: int = 0) -> int:
    """One JSON list of ``rows`` caption records; returns the COCO rows written."""
    from data_pipeline.caption_fixture import CAPTION_PROMPTS, SCENES, _image_path, _word_count, make_caption
    from vlm_core.config import IMAGE_MARKER

    rng = np.random.default_rng(seed)
    scenes = sorted(SCENES)
    pool = [make_caption(rng, scenes[int(rng.integers(len(scenes)))], _word_count(rng)) for _ in range(captions)]
    n_coco = 0
    with path.open("w", encoding="utf-8") as f:
        f.write("[\n")
        for k in range(rows):
            coco = bool(rng.random() < COCO_SHARE)
            n_coco += coco
            rel = _image_path(rng, k, coco)
            record = {"id": f"{Path(rel).stem}-{k}", "image": rel,
                      "conversations": [{"from": "human", "value": f"{CAPTION_PROMPTS[k % len(CAPTION_PROMPTS)]}\n"
                                                                    f"{IMAGE_MARKER}"},
                                        {"from": "gpt", "value": pool[k % captions]}]}
            f.write(("" if k == 0 else ",\n") + json.dumps(record, ensure_ascii=False))
        f.write("\n]\n")
    return n_coco


def stream(source: Path, out: Path) -> dict:
    import ray

    from data_pipeline.build import plan_actors, read_and_filter, start_run
    from data_pipeline.config import BuildConfig
    from vlm_core.base.ray_env import init_ray

    cfg = BuildConfig(source=str(source), images=str(out / "images"), out=str(out / "data"), check_images=False)
    (out / "images").mkdir(exist_ok=True)
    mon = RssMonitor()
    mon.start()
    t0 = time.perf_counter()
    run = start_run(cfg)
    convert_s = time.perf_counter() - t0
    resources = init_ray()
    t1 = time.perf_counter()
    kept = rejected = 0
    for batch in read_and_filter(run, plan_actors(cfg, resources)).iter_batches(batch_size=None,
                                                                                batch_format="pyarrow"):
        n_ok = int(np.sum(np.asarray(batch.column("reason").to_pylist()) == ""))
        kept, rejected = kept + n_ok, rejected + batch.num_rows - n_ok
    stream_s = time.perf_counter() - t1
    mon.stop_flag.set()
    mon.join()
    ray.shutdown()
    rows = kept + rejected
    return {"rows": rows, "kept_coco": kept, "rejected": rejected, "source_mb": round(source.stat().st_size / 2**20),
            "convert_to_jsonl_and_hash_s": round(convert_s, 1), "read_validate_filter_s": round(stream_s, 1),
            "convert_rows_per_s": round(rows / convert_s), "read_validate_filter_rows_per_s": round(rows / stream_s),
            "peak_rss_driver_mb": round(mon.peak_driver / 2**20),
            "peak_rss_all_ray_processes_mb": round(mon.peak_total / 2**20)}


def main() -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[311_725, 1_246_901])
    ap.add_argument("--captions", type=int, default=2_000, help="distinct captions the records cycle through")
    ap.add_argument("--out", type=Path, default=Path("/tmp/caption-stream"))
    args = ap.parse_args()
    results = []
    for rows in args.rows:
        out = args.out / f"rows-{rows}"
        out.mkdir(parents=True, exist_ok=True)
        source = out / "share-captioner_coco_lcs_sam_1246k_1107.json"
        t0 = time.perf_counter()
        coco = write_share_captioner(source, rows, args.captions)
        result = {"written_s": round(time.perf_counter() - t0, 1), "coco_written": coco, **stream(source, out)}
        assert result["kept_coco"] == coco and result["rows"] == rows, result
        print(json.dumps(result), flush=True)
        results.append(result)
    print(json.dumps(results))  # last line: for bench/run_all.py
    return results


if __name__ == "__main__":
    main()
