"""Tokens processed per optimizer step: pad-to-512 (the original study) vs dynamic padding vs dynamic padding with
length grouping, on the sample corpus's conversations formatted as the ``local`` preset trains them.

Pure counting (no model runs): a batch padded to length L costs ``batch × L`` token positions; the data hold
``sum(lengths)``. Prints each scheme's positions per step and its ratio to the data.

    python bench/padding.py --batch_size 8 --rows 600
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path


def measure(batch_size: int, rows: int, pad_to: int = 512) -> dict:
    from data_pipeline.sample_corpus import TRAIN_FILE, write_sample_corpus
    from vlm_core.config import FormatConfig
    from vlm_core.data.dataset import read_records
    from vlm_core.model.conversation import ConversationFormatter, FormatError
    from vlm_core.model.language_model import load_tokenizer, resolve_image_token
    from vlm_core.model.vision.encoder import encoder_geometry
    from vlm_core.presets import get_preset
    from vlm_core.training.batching import epoch_batches

    cfg = get_preset("local")
    tok = load_tokenizer(cfg.lm)
    image_token, _ = resolve_image_token(tok, cfg.lm.image_token)
    num_image_tokens = encoder_geometry(cfg.vision).num_tokens
    fmt = ConversationFormatter(tok, image_token, FormatConfig(mode="chat", max_length=pad_to), num_image_tokens)
    with tempfile.TemporaryDirectory() as tmp:
        write_sample_corpus(Path(tmp), n_train_images=rows, n_eval_questions=1)
        records = [r for r in read_records(Path(tmp) / TRAIN_FILE) if r["image"].startswith("coco/")]
    lengths = []
    for r in records:
        try:
            lengths.append(len(fmt.encode(r["conversations"]).input_ids) - 1 + num_image_tokens)
        except FormatError:
            continue

    def cost(batches):
        return sum(len(b) * max(lengths[i] for i in b) for b in batches)

    data = sum(lengths)
    plain = epoch_batches(lengths, batch_size, 0, 0)
    grouped = epoch_batches(lengths, batch_size, 0, 0, group_by_length=True)
    steps = len(plain)
    schemes = {"pad to 512": len(lengths) * pad_to, "dynamic": cost(plain),
               "dynamic + group_by_length": cost(grouped)}
    return {"samples": len(lengths), "batch_size": batch_size, "mean_length": round(data / len(lengths), 1),
            "max_length": max(lengths), "steps": steps,
            "per_step": {k: round(v / steps, 1) for k, v in schemes.items()},
            "vs_data": {k: round(v / data, 3) for k, v in schemes.items()}}


def main() -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch_size", type=int, default=8)
    ap.add_argument("--rows", type=int, default=600)
    args, _ = ap.parse_known_args()
    r = measure(args.batch_size, args.rows)
    print(f"{r['samples']} samples, mean {r['mean_length']} / max {r['max_length']} tokens (image tokens included), "
          f"batch {r['batch_size']}, {r['steps']} steps")
    for k in r["per_step"]:
        print(f"  {k:28} {r['per_step'][k]:>9} token positions / step   {r['vs_data'][k]:>6}× the data")
    return r


if __name__ == "__main__":
    print(json.dumps(main()))
