"""Generation with exactly the formatting used in training, batched.

    vlm-sweep chat --checkpoint runs/demo/stage2/final --image photo.jpg "What is in the picture?"

Python::

    from vlm_core.training.checkpoint import load_vlm
    from vlm_core.evaluation.inference import answer
    model = load_vlm("runs/demo/stage2/final")
    answer(model, [PIL.Image.open("photo.jpg")], ["What is in the picture?"])
"""

from __future__ import annotations

import torch
from PIL import Image

from ..data.dataset import Collator


def build_prompt_batch(model, questions: list[str], history: list[list[dict]] | None = None) -> dict:
    """Left-padded prompt tokens; each question gets the image marker unless its history already has one."""
    marker = model.image_token.text
    items = []
    for i, q in enumerate(questions):
        turns = list(history[i]) if history else []
        if not any(marker in t.get("value", t.get("content", "")) for t in turns) and marker not in q:
            q = f"{marker}\n{q}"
        turns.append({"from": "human", "value": q})
        enc = model.formatter.encode_prompt(turns)
        items.append({"id": str(i), "input_ids": enc.input_ids, "labels": enc.labels})
    return Collator(model.tokenizer.pad_token_id, padding_side="left")(items)


@torch.no_grad()
def answer(model, images: list[Image.Image], questions: list[str], max_new_tokens: int = 64,
           history: list[list[dict]] | None = None, **gen_kwargs) -> list[str]:
    """Greedy (by default) answers, one per (image, question) pair, generated in one batch."""
    if len(images) != len(questions):
        raise ValueError(f"{len(images)} images but {len(questions)} questions")
    model.eval()
    batch = build_prompt_batch(model, questions, history)
    pixel_values = model.vision.preprocess(images).to(model.device)
    out = model.generate(batch["input_ids"].to(model.device), batch["attention_mask"].to(model.device),
                         pixel_values=pixel_values, max_new_tokens=max_new_tokens, **gen_kwargs)
    return [model.tokenizer.decode(row, skip_special_tokens=True).strip() for row in out]
