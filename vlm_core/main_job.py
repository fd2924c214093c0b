"""The main job on the embedded default (for now: both stages for a few steps, then a chat answer).

Steps: write the sample corpus (packaged assets only) → keep COCO images → stage 1 (projector only) →
stage 2 (projector + LLM, started from the stage-1 projector) → answer a held-out question about an image.
Later issues grow this into the whole study (Ray Data preparation, Tune sweeps, evaluation, report).

    vlm-sweep run --preset local                # about 70 s on a 2-core CPU, no GPU, no hub access
    vlm-sweep run --preset tiny --steps 2       # seconds
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from .config import TrainConfig
from .presets import get_preset
from .runner import DataSpec, run_stage

log = logging.getLogger(__name__)


def _coco_only(src: Path, dst: Path, prefix: str = "coco/") -> int:
    kept = 0
    with src.open() as fin, dst.open("w") as fout:
        for line in fin:
            if json.loads(line)["image"].startswith(prefix):
                fout.write(line)
                kept += 1
    return kept


def run_main_job(preset: str = "local", out: str | Path = "runs/main", steps: int = 8, batch_size: int = 4,
                 n_train_images: int = 200) -> dict:
    from data_pipeline.sample_corpus import EVAL_FILE, TRAIN_FILE, write_sample_corpus

    out = Path(out)
    t0 = time.perf_counter()
    corpus = out / "corpus"
    if not (corpus / TRAIN_FILE).is_file():
        write_sample_corpus(corpus, n_train_images=n_train_images)
    else:
        log.info("reusing the sample corpus in %s", corpus)
    train_file = out / "train_coco.jsonl"
    kept = _coco_only(corpus / TRAIN_FILE, train_file)
    data = DataSpec(train=str(train_file), images=str(corpus / "images"), val_fraction=0.1)
    model_cfg = get_preset(preset)

    log.info("stage 1: projector only, %d steps", steps)
    s1 = TrainConfig(stage=1, max_steps=steps, batch_size=batch_size, lr=1e-3, warmup_ratio=0.1)
    r1, final1 = run_stage(model_cfg, s1, data, out / "stage1")
    log.info("stage 2: projector + LLM from %s, %d steps", final1, steps)
    s2 = TrainConfig(stage=2, max_steps=steps, batch_size=batch_size, lr=2e-5, warmup_ratio=0.1,
                     init_checkpoint=str(final1))
    r2, final2 = run_stage(model_cfg, s2, data, out / "stage2")

    from PIL import Image

    from .checkpoint import load_vlm
    from .inference import answer

    sample = json.loads((corpus / EVAL_FILE).read_text().splitlines()[0])
    question = sample["conversations"][0]["value"].replace("<image>", "").strip()
    model = load_vlm(final2)
    with Image.open(corpus / "images" / sample["image"]) as img:
        reply = answer(model, [img.convert("RGB")], [question], max_new_tokens=16)[0]
    summary = {
        "preset": preset, "coco_records": kept, "stage1": {"checkpoint": str(final1), **r1.epoch_metrics[-1]},
        "stage2": {"checkpoint": str(final2), **r2.epoch_metrics[-1]},
        "chat": {"image": str(corpus / "images" / sample["image"]), "question": question, "answer": reply,
                 "expected": sample["answer"]},
        "wall_seconds": round(time.perf_counter() - t0, 1),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    print(f"\nchat with it: vlm-sweep chat --checkpoint {final2} --image {summary['chat']['image']} "
          f"\"{question}\"")
    return summary
