"""Measured optimizer-step time of a preset, per stage, on the embedded sample corpus (this machine).

Runs the real training loop in-process for ``--steps`` steps (plus one warm-up step that is not counted)
and reports the median and the tokens per second, side by side for every preset and stage asked for.

    python bench/step_time.py --presets tiny local --stages 1 2 --steps 6 --batch_size 4
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import torch


def measure(preset: str, stage: int, steps: int, batch_size: int, corpus: Path, workdir: Path) -> dict:
    from vlm_core.config import TrainConfig
    from vlm_core.data.dataset import ConversationDataset, read_records
    from vlm_core.model.vlm import VisionLanguageModel
    from vlm_core.presets import get_preset
    from vlm_core.training.loop import train

    model = VisionLanguageModel.build(get_preset(preset))
    records = [r for r in read_records(corpus / "sharegpt4v_sample.jsonl") if r["image"].startswith("coco/")]
    ds = ConversationDataset(records, model.formatter, model.vision.preprocess, corpus / "images")
    cfg = TrainConfig(stage=stage, max_steps=steps + 1, batch_size=batch_size, warmup_ratio=0.0)
    out = workdir / f"{preset}-s{stage}"
    train(model, cfg, ds, None, out)
    logs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()][1:]
    secs = [r["seconds"] for r in logs]
    return {"preset": preset, "stage": stage, "batch_size": batch_size, "steps": len(secs),
            "median_step_s": round(statistics.median(secs), 3),
            "tokens_per_s": round(sum(r["tokens"] for r in logs) / sum(secs), 1),
            "threads": torch.get_num_threads()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    ap.add_argument("--presets", nargs="+", default=["tiny", "local"])
    ap.add_argument("--stages", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--batch_size", type=int, default=4)
    ap.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = ap.parse_args()
    from data_pipeline.sample_corpus import write_sample_corpus

    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus"
        write_sample_corpus(corpus, n_train_images=80, n_eval_questions=1)
        rows = [measure(p, s, args.steps, args.batch_size, corpus, Path(tmp)) for p in args.presets
                for s in args.stages]
    print(f"{'preset':8} {'stage':>5} {'batch':>5} {'median step (s)':>16} {'tokens/s':>9}")
    for r in rows:
        print(f"{r['preset']:8} {r['stage']:>5} {r['batch_size']:>5} {r['median_step_s']:>16} {r['tokens_per_s']:>9}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
