"""Does the projector learn to carry the image? Stage 1 of the ``local-clip`` preset (``local`` before 2026-12-06)
with and without ``projector.feature_norm=standardize``, side by side, on the same data, seed and steps.

Trains the projector with the real training loop (frozen SmolLM2-135M, cosine schedule) and, every ``--every``
steps, scores held-out easy-vqa colour and shape answers: the loss of the right answer given its own image vs
given another question's image (the evaluation's ``heldout_loss`` and its
``shuffled`` control). A gap > 0 means the image helps; it is a
continuous, low-noise view of what answer accuracy shows only after much longer training.

    vlm-sweep data sample-corpus --out runs/corpus    # or use OUT/corpus and OUT/data of `vlm-sweep run`
    python bench/feature_norm_signal.py --corpus runs/long2/corpus --train runs/long2/data/20kUmap/train-00000.parquet
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
from pathlib import Path

import torch


def heldout_by_type(model, records: list[dict], types: list[str], image_root: Path) -> dict[str, tuple[float, float]]:
    """Question type → (answer loss with the own image, with another question's image): the evaluation's own
    ``heldout_loss`` and its ``shuffled`` control, on each type's questions."""
    from vlm_core.evaluation.heldout import EvalConfig, heldout_loss

    cfg = EvalConfig(questions="", images=str(image_root), controls=["shuffled"])
    out = {}
    for t in sorted(set(types)):
        r = heldout_loss(model, [x for x, tt in zip(records, types) if tt == t], image_root, cfg)
        out[t] = (r["image"]["loss"], r["shuffled"]["loss"])
    model.train()
    return out


def run_arm(feature_norm: str, args, train_records, eval_records, types) -> list[dict]:
    from vlm_core.config import TrainConfig
    from vlm_core.data.dataset import ConversationDataset
    from vlm_core.model.vlm import VisionLanguageModel
    from vlm_core.presets import get_preset
    from vlm_core.training.loop import train

    cfg = copy.deepcopy(get_preset(args.preset))
    cfg.projector.feature_norm = feature_norm
    model = VisionLanguageModel.build(cfg)
    images = Path(args.corpus) / "images"
    train_set = ConversationDataset(train_records, model.formatter, model.vision.preprocess, images)
    rows = []

    def score(step: int) -> None:
        losses = heldout_by_type(model, eval_records, types, images)
        row = {"feature_norm": feature_norm, "step": step, **{f"{t}_own": own for t, (own, _) in losses.items()},
               **{f"{t}_other": other for t, (_, other) in losses.items()},
               **{f"{t}_gap": other - own for t, (own, other) in losses.items()}}
        rows.append(row)
        print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}), flush=True)

    # max_steps ends it; epochs only has to be large enough not to end it first
    tcfg = TrainConfig(stage=1, epochs=1000, max_steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                       scheduler="cosine", warmup_ratio=0.03, seed=0, val_every_epoch=False)
    with tempfile.TemporaryDirectory() as tmp:
        train(model, tcfg, train_set, None, tmp,
              on_step=lambda rec: score(rec.step) if rec.step % args.every == 0 else None)
    return rows


def main() -> None:
    from vlm_core.data.dataset import read_records
    from vlm_core.evaluation.heldout import question_type

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--corpus", required=True, help="sample-corpus folder (eval_easyvqa.jsonl + images/)")
    p.add_argument("--train", required=True, help="training records (a variant's train Parquet or a JSONL)")
    p.add_argument("--preset", default="local-clip")  # the random-init CLIP the README's figures were measured on
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--every", type=int, default=20)
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--questions", type=int, default=48, help="held-out questions per type (colour, shape)")
    p.add_argument("--norms", nargs="+", default=["none", "standardize"])
    args = p.parse_args()
    torch.manual_seed(0)
    train_records = read_records(args.train)
    by_type: dict[str, list[dict]] = {}
    for r in read_records(Path(args.corpus) / "eval_easyvqa.jsonl"):
        by_type.setdefault(question_type(r["answer"]), []).append(r)
    eval_records = [r for t in ("color", "shape") for r in by_type.get(t, [])[:args.questions]]
    types = [question_type(r["answer"]) for r in eval_records]
    rows = [row for norm in args.norms for row in run_arm(norm, args, train_records, eval_records, types)]
    print("\n| feature_norm | step | colour: own image | other image | gap | shape: own | other | gap |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['feature_norm']} | {r['step']} | {r['color_own']:.3f} | {r['color_other']:.3f} | "
              f"{r['color_gap']:+.3f} | {r['shape_own']:.3f} | {r['shape_other']:.3f} | {r['shape_gap']:+.3f} |")


if __name__ == "__main__":
    main()
