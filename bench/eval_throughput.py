"""Benchmark evaluation throughput: questions answered per second, batched with each image encoded once, against a
one-question-at-a-time loop, side by side on the same checkpoint and questions.

The model is the ``--preset`` (``local``: EfficientNet-Lite0 + SmolLM2-135M, as ``vlm-sweep run`` evaluates it)
with its projector drawn at random (the cost of an answer does not depend on what the model learnt, but its length
does: both ways answer the same questions with the same greedy decoding and the same budget, and the answers are
checked equal). Questions: ``--questions`` of the sample corpus's easy-vqa and POPE sets, each under the image and
the two controls (zeroed features, another question's image), as the sweep's evaluation asks them.

* loop: for every question and condition, ``vlm_core.evaluation.inference``'s path at batch 1 (decode and encode
  the image, generate with the KV cache);
* batched: ``answer_benchmark`` (batches of ``--batch-size``, each image encoded once for its questions and the
  controls: ``ImageFeatures``).

    python bench/eval_throughput.py --preset local --questions 36
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path


def main() -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="local")
    ap.add_argument("--questions", type=int, default=36)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--budget", type=int, default=16)
    args, _ = ap.parse_known_args()
    import torch

    from data_pipeline.sample_corpus import write_sample_corpus
    from vlm_core.evaluation.benchmark_eval import (
        CONDITIONS,
        BenchmarkEvalConfig,
        answer_benchmark,
        load_question_image,
        prepare,
    )
    from vlm_core.evaluation.inference import build_prompt_batch
    from vlm_core.model.vlm import VisionLanguageModel
    from vlm_core.presets import get_preset

    torch.manual_seed(0)
    model = VisionLanguageModel.build(get_preset(args.preset)).eval()
    out: dict = {"preset": args.preset, "batch_size": args.batch_size, "max_new_tokens": args.budget,
                 "threads": torch.get_num_threads(), "benchmarks": {}}
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus"
        write_sample_corpus(corpus, n_train_images=60, n_eval_questions=args.questions)
        cfg = BenchmarkEvalConfig(["easy-vqa", "pope"], files={"easy-vqa": str(corpus), "pope": str(corpus / "pope")},
                                  images={"pope": str(corpus / "images")}, limit=args.questions,
                                  batch_size=args.batch_size, budgets={"easy-vqa": args.budget, "pope": args.budget})
        for prepared in prepare(cfg):
            qs = prepared.questions
            t0 = time.perf_counter()
            batched = answer_benchmark(model, prepared, ["zeros", "shuffled"], args.batch_size,
                                       Path(tmp) / f"{prepared.bench.name}.jsonl")
            t_batched = time.perf_counter() - t0
            t0 = time.perf_counter()
            looped: dict[str, dict[str, str]] = {}
            with torch.no_grad():
                for name in ("image", "zeros", "shuffled"):
                    cond = CONDITIONS[name]
                    for i in range(len(qs)):
                        (q,) = cond.images(qs, [i])
                        pixels = model.vision.preprocess([load_question_image(q)])
                        feats = cond.features(model.image_features(pixels))
                        batch = build_prompt_batch(model, [qs[i].prompt])
                        gen = model.generate(batch["input_ids"], batch["attention_mask"], image_features=feats,
                                             max_new_tokens=prepared.budget)
                        looped.setdefault(name, {})[qs[i].qid] = model.tokenizer.decode(
                            gen[0], skip_special_tokens=True).strip()
            t_loop = time.perf_counter() - t0
            same = sum(looped[c][k] == batched[c][k] for c in looped for k in looped[c])
            n = 3 * len(qs)
            out["benchmarks"][prepared.bench.name] = {
                "questions": len(qs), "answers": n, "images": len({q.image for q in qs}),
                "loop_s": round(t_loop, 1), "batched_s": round(t_batched, 1),
                "loop_answers_per_s": round(n / t_loop, 2), "batched_answers_per_s": round(n / t_batched, 2),
                "speedup": round(t_loop / t_batched, 2), "same_answers": f"{same}/{n}"}
    print(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
