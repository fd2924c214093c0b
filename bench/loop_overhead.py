"""vlm_core's training loop vs a plain PyTorch / transformers loop over the same model and batches: the overhead
of our loop (collation, token-normalised loss, the NaN check, schedule, step logs), target ≤ 1.10×.

Both run stage 2 of the ``local`` preset (projector + SmolLM2-135M) on image features from a feature cache (so
neither runs the encoder), batch 4, the same batches in the same order; steps are timed after one warm-up step,
and the two loops alternate in ``--rounds`` rounds, each going first in every other round (this
machine's timings drift; alternating cancels it).

    python bench/loop_overhead.py --steps 6 --rounds 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch


def main() -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--batch_size", type=int, default=4)
    args, _ = ap.parse_known_args()
    from data_pipeline.features import build_feature_cache
    from data_pipeline.sample_corpus import TRAIN_FILE, write_sample_corpus
    from vlm_core.base.ray_env import init_ray
    from vlm_core.config import TrainConfig
    from vlm_core.data.dataset import Collator, ConversationDataset, read_records
    from vlm_core.data.feature_cache import FeatureCache, model_cache_key
    from vlm_core.model.vlm import VisionLanguageModel
    from vlm_core.presets import get_preset
    from vlm_core.training.batching import epoch_batches
    from vlm_core.training.loop import train
    from vlm_core.training.stages import freeze_for_stage

    init_ray()
    cfg = get_preset("local")
    cfg.projector.feature_norm = "none"  # nothing to fit: both loops start from the same weights
    model = VisionLanguageModel.build(cfg)
    ours, plain = [], []
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus"
        write_sample_corpus(corpus, n_train_images=60, n_eval_questions=1)
        recs = [r for r in read_records(corpus / TRAIN_FILE) if r["image"].startswith("coco/")]
        cache = FeatureCache.open(build_feature_cache(cfg, [r["image"] for r in recs], corpus / "images",
                                                      Path(tmp) / "features"), model_cache_key(model))
        ds = ConversationDataset(recs, model.formatter, model.vision.preprocess, corpus / "images", features=cache)
        n = args.steps + 1
        tcfg = TrainConfig(stage=2, max_steps=n, batch_size=args.batch_size, warmup_ratio=0.0, lr=1e-5)
        collate = Collator(model.tokenizer.pad_token_id)
        batches = [collate([ds[i] for i in b]) for b in epoch_batches(
            [len(e.encoded.input_ids) for e in ds.examples], args.batch_size, tcfg.seed, 0)[:n]]
        def run_ours(r):
            out = Path(tmp) / f"ours-{r}"
            train(model, tcfg, ds, None, out)
            logs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()][1:]
            ours.extend(x["seconds"] for x in logs)

        def run_plain():
            freeze_for_stage(model, 2)
            params = [p for p in model.parameters() if p.requires_grad]
            opt = torch.optim.AdamW(params, lr=1e-5)
            for k, b in enumerate(batches):
                t0 = time.perf_counter()
                o = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], labels=b["labels"],
                          image_features=b["image_features"])
                o.loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                opt.step()
                opt.zero_grad(set_to_none=True)
                if k:
                    plain.append(time.perf_counter() - t0)

        for r in range(args.rounds):  # alternate which loop goes first: drift and warm caches favour neither
            if r % 2 == 0:
                run_ours(r)
                run_plain()
            else:
                run_plain()
                run_ours(r)
    r = {"steps_each": len(ours), "ours_median_s": round(statistics.median(ours), 3),
         "plain_median_s": round(statistics.median(plain), 3)}
    r["ratio"] = round(r["ours_median_s"] / r["plain_median_s"], 3)
    print(f"stage 2, local preset, batch {args.batch_size}: vlm_core step {r['ours_median_s']} s, plain loop "
          f"{r['plain_median_s']} s (median of {len(ours)}) → {r['ratio']}×")
    return r


if __name__ == "__main__":
    print(json.dumps(main()))
