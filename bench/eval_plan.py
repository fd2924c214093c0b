"""The paper preset's benchmark evaluation on A100s, planned as arithmetic (no GPU here): for each benchmark, the
published file's questions × the three conditions (the image, zeroed features, another image) × the checkpoints
the study evaluates, asked in batches of 16 the way the sweep asks them (``answer_benchmark``: greedy, KV cache, each
image encoded once for its questions and both controls), each batch prefilling its prompts and then decoding until
its longest answer ends or the benchmark's budget (``Benchmark.max_new_tokens``) is spent.

Two figures no CPU can give are inputs, to be replaced by the device's (``bench/eval_throughput.py --preset
paper-shaped`` on a GPU gives seconds per batch):

* ``--decode-ms``: one decoding step of a batch of 16. Llama-3.2-1B's bf16 weights are 2.5 GB, read once a step:
  1.6 ms at the A100-40GB's 1.55 TB/s; transformers' eager ``generate`` adds its per-layer kernel launches and
  Python, which for a 16-layer model is the larger part. Default 15 ms: an assumption, not a measurement.
* ``--mfu``: the share of the A100's 312 bf16 TFLOP/s the prefill reaches (FLOPs = 2 × parameters × tokens).

``--answer-tokens``: how long answers are when they end before the budget (a trained model answers POPE's "Is there
a dog?" in one or two words and an end-of-turn token); the table gives both the budget bound and that figure.

    python bench/eval_plan.py --checkpoints 6 --decode-ms 15 --answer-tokens 4
"""

from __future__ import annotations

import argparse
import json
import math

from vlm_core.evaluation.benchmarks import BENCHMARKS

PUBLISHED_QUESTIONS = {
    "pope": 9_000,            # 3 splits × 3,000 (AoiDragon/POPE output/coco; lmms-eval pope pools them)
    "vqav2": 214_354,         # v2_OpenEnded_mscoco_val2014_questions.json
    "gqa": 12_578,            # testdev_balanced_questions.json
    "xgqa-id": 2 * 9_666,     # the Indonesian questions and their English originals (shared/architecture.md §10)
    "textvqa": 5_000,         # TextVQA_0.5.1_val.json
    "scienceqa-img": 2_017,   # ScienceQA test problems with an image
    "mme": 2_374,             # MME_Benchmark_release_version, 14 categories
    "mmbench-en-dev": 4_329,  # mmbench_dev_20230712.tsv rows, circular copies included
}
"""Questions in each benchmark's published evaluation file (what ``--eval-limit`` would cut)."""
PROMPT_TOKENS = {"scienceqa-img": 120, "mmbench-en-dev": 120}
"""Text tokens of a prompt beyond the image's, where the question carries a context and options (else 40)."""
LLAMA32_1B_PARAMS = 1.236e9
A100_BF16 = 312e12
CONDITIONS = 3


def plan(name: str, checkpoints: int, batch: int, image_tokens: int, decode_ms: float, mfu: float,
         answer_tokens: int) -> dict:
    """One benchmark's answers, batches and A100 seconds for the whole study."""
    questions = PUBLISHED_QUESTIONS[name]
    budget = BENCHMARKS[name].max_new_tokens
    answers = questions * CONDITIONS * checkpoints
    batches = math.ceil(questions * CONDITIONS / batch) * checkpoints
    prompt = image_tokens + PROMPT_TOKENS.get(name, 40)
    prefill_s = 2 * LLAMA32_1B_PARAMS * prompt * batch / (mfu * A100_BF16)
    steps_short = min(budget, answer_tokens + 1)  # + the end-of-turn token
    return {"benchmark": name, "questions": questions, "budget": budget, "answers": answers, "batches": batches,
            "prefill_s_per_batch": prefill_s,
            "gpu_h_at_budget": batches * (prefill_s + budget * decode_ms / 1e3) / 3600,
            "gpu_h_short_answers": batches * (prefill_s + steps_short * decode_ms / 1e3) / 3600}


def main() -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoints", type=int, default=6, help="the study's stage-2 checkpoints (the paper grid: 6)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--image-tokens", type=int, default=49, help="TinyCLIP-ViT-40M-32 at 224 px: 7 × 7 patches")
    ap.add_argument("--decode-ms", type=float, default=15.0)
    ap.add_argument("--mfu", type=float, default=0.35)
    ap.add_argument("--answer-tokens", type=int, default=4)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    rows = [plan(name, args.checkpoints, args.batch_size, args.image_tokens, args.decode_ms, args.mfu,
                 args.answer_tokens) for name in PUBLISHED_QUESTIONS]
    print(f"{args.checkpoints} checkpoints × {CONDITIONS} conditions, batches of {args.batch_size}, "
          f"{args.decode_ms} ms a decoding step, prefill at {args.mfu:.0%} of 312 TFLOP/s\n")
    print("| benchmark | questions | budget | answers | batches | prefill (ms / batch) | A100-hours, every batch "
          "to the budget | A100-hours, answers of "
          f"{args.answer_tokens} tokens |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['benchmark']} | {r['questions']:,} | {r['budget']} | {r['answers']:,} | {r['batches']:,} | "
              f"{r['prefill_s_per_batch'] * 1e3:.1f} | {r['gpu_h_at_budget']:.2f} | {r['gpu_h_short_answers']:.2f} |")
    total = {k: sum(r[k] for r in rows) for k in ("answers", "batches", "gpu_h_at_budget", "gpu_h_short_answers")}
    print(f"| all | | | {total['answers']:,} | {total['batches']:,} | | {total['gpu_h_at_budget']:.2f} | "
          f"{total['gpu_h_short_answers']:.2f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "rows": rows, "total": total}, f, indent=2)
    return rows


if __name__ == "__main__":
    main()
