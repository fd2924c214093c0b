"""``vlm-sweep eval CHECKPOINT``: held-out loss / perplexity and answer accuracy, with text-only controls that
show how much the image contributes.

For each condition the model sees the same prompts; only the image features differ:

- ``image``: the question's own image (what the model is for);
- ``zeros``: every image feature set to zero (the projector still adds its bias: "no picture");
- ``shuffled``: another question's image (features rolled by one over the evaluation set).

Accuracy is exact match after normalisation (case, surrounding punctuation, a leading article), on held-out
easy-vqa questions (``eval_easyvqa.jsonl`` of the sample corpus: yes/no, colour and shape questions), generated
greedily with the training chat format. Loss is the token-weighted assistant-token loss on held-out
conversations (a variant's ``val`` split), perplexity its exponential.

    vlm-sweep eval runs/main/sweep/.../checkpoint_... --questions corpus/eval_easyvqa.jsonl \\
        --images corpus/images --val data/20kUmap/val-00000.parquet
"""

from __future__ import annotations

import json
import math
import re
import string
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .config import check_field

CONTROLS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "zeros": torch.zeros_like,
    "shuffled": lambda f: f.roll(1, dims=0),
}
COLORS = {"red", "green", "blue", "black", "gray", "grey", "teal", "brown", "yellow", "white", "orange", "purple"}


@dataclass
class EvalConfig:
    """What to evaluate a checkpoint on."""

    questions: str
    """JSONL of held-out questions (``image``, ``answer``, one human turn), e.g. corpus/eval_easyvqa.jsonl."""
    images: str
    """Image root the questions' (and ``val``'s) image paths are relative to."""
    val: str | None = None
    """Held-out conversations (JSONL / parquet) for loss and perplexity; unset: skip them."""
    max_questions: int | None = None
    """Evaluate N questions only, balanced over the question types (see ``balanced_subset``)."""
    max_val_samples: int | None = None
    """Score the first N held-out conversations only."""
    controls: list[str] = field(default_factory=lambda: ["zeros", "shuffled"])
    """Text-only controls to compare with (see CONTROLS)."""
    batch_size: int = 16
    max_new_tokens: int = 6
    """Answers are one word; a few tokens suffice (a rambling answer is wrong whatever its tail)."""
    num_samples: int = 6
    """Sample generations to keep (with their image paths) for the report."""

    def __post_init__(self) -> None:
        bad = [c for c in self.controls if c not in CONTROLS]
        check_field(not bad, "eval.controls", f"unknown {bad}; choose from {sorted(CONTROLS)}")
        check_field(self.batch_size >= 1, "eval.batch_size", "must be >= 1")


def normalise(text: str) -> str:
    """Lowercase, first line, no surrounding punctuation or leading article: ``"Yes."`` → ``"yes"``."""
    text = text.strip().splitlines()[0] if text.strip() else ""
    text = text.lower().strip().strip(string.punctuation + " ")
    return re.sub(r"^(a|an|the)\s+", "", text)


def question_type(answer: str) -> str:
    a = normalise(answer)
    return "yes/no" if a in ("yes", "no") else "color" if a in COLORS else "shape"


def balanced_subset(records: list[dict], n: int | None) -> list[dict]:
    """The first ``n`` questions taking each type in turn (yes/no, color, shape), in file order.

    easy-vqa's test split is 3/4 yes/no questions, where a text-only model already scores ~50%; equal shares make
    the colour and shape questions, which need the image, count as much. Deterministic; ``n=None``: all."""
    if n is None or n >= len(records):
        return list(records)
    by_type: dict[str, list[dict]] = {}
    for r in records:
        by_type.setdefault(question_type(r["answer"]), []).append(r)
    queues = [list(v) for _, v in sorted(by_type.items())]
    chosen: list[dict] = []
    while len(chosen) < n:
        for q in queues:
            if q and len(chosen) < n:
                chosen.append(q.pop(0))
    return chosen


def _question_text(record: dict) -> str:
    turn = record["conversations"][0]
    return turn.get("value", turn.get("content", "")).replace("<image>", "").strip()


@torch.no_grad()
def _features(model, images: list, batch_size: int) -> torch.Tensor:
    chunks = [model.image_features(model.vision.preprocess(images[i:i + batch_size]).to(model.device))
              for i in range(0, len(images), batch_size)]
    return torch.cat(chunks) if chunks else torch.empty(0)


@torch.no_grad()
def answer_accuracy(model, records: list[dict], image_root: Path, cfg: EvalConfig) -> dict[str, Any]:
    """Greedy answers under every condition; accuracy overall and per question type."""
    from .images import open_rgb
    from .inference import build_prompt_batch

    model.eval()
    images = [open_rgb(image_root / r["image"]) for r in records]
    feats = _features(model, images, cfg.batch_size)
    questions = [_question_text(r) for r in records]
    conditions = {"image": lambda f: f, **{c: CONTROLS[c] for c in cfg.controls}}
    answers: dict[str, list[str]] = {}
    for name, transform in conditions.items():
        cond_feats = transform(feats)  # controls act on the whole set (shuffled: another question's image)
        out = []
        for i in range(0, len(records), cfg.batch_size):
            batch = build_prompt_batch(model, questions[i:i + cfg.batch_size])
            gen = model.generate(batch["input_ids"].to(model.device), batch["attention_mask"].to(model.device),
                                 image_features=cond_feats[i:i + cfg.batch_size], max_new_tokens=cfg.max_new_tokens)
            out += [model.tokenizer.decode(row, skip_special_tokens=True).strip() for row in gen]
        answers[name] = out
    expected = [normalise(r["answer"]) for r in records]
    types = [question_type(r["answer"]) for r in records]
    result: dict[str, Any] = {"n": len(records), "accuracy": {}, "by_type": {}}
    for name, got in answers.items():
        hits = [normalise(g) == e for g, e in zip(got, expected)]
        result["accuracy"][name] = sum(hits) / max(len(hits), 1)
        result["by_type"][name] = {t: sum(h for h, tt in zip(hits, types) if tt == t) / types.count(t)
                                   for t in sorted(set(types))}
    result["type_counts"] = {t: types.count(t) for t in sorted(set(types))}
    result["samples"] = [{"image": r["image"], "question": q, "expected": r["answer"],
                          **{f"answer_{name}": answers[name][i] for name in answers}}
                         for i, (r, q) in enumerate(zip(records[:cfg.num_samples], questions))]
    return result


@torch.no_grad()
def heldout_loss(model, records: list[dict], image_root: Path, cfg: EvalConfig) -> dict[str, Any]:
    """Assistant-token loss and perplexity on held-out conversations, with the image and under each control."""
    from .data import Collator, ConversationDataset

    model.eval()
    dataset = ConversationDataset(records, model.formatter, model.vision.preprocess, image_root)
    collate = Collator(model.tokenizer.pad_token_id)
    batches = [collate([dataset[j] for j in range(i, min(i + cfg.batch_size, len(dataset)))])
               for i in range(0, len(dataset), cfg.batch_size)]
    feats = [model.image_features(b["pixel_values"].to(model.device)) for b in batches]
    all_feats = torch.cat(feats) if feats else torch.empty(0)
    out: dict[str, Any] = {"n": len(dataset), "skipped": dict(dataset.skipped)}
    for name, transform in {"image": lambda f: f, **{c: CONTROLS[c] for c in cfg.controls}}.items():
        cond = transform(all_feats).split([f.shape[0] for f in feats]) if feats else []
        total, tokens = 0.0, 0
        for b, f in zip(batches, cond):
            o = model(b["input_ids"].to(model.device), b["attention_mask"].to(model.device),
                      labels=b["labels"].to(model.device), image_features=f)
            total, tokens = total + float(o.loss_sum), tokens + o.num_tokens
        loss = total / max(tokens, 1) if tokens else float("nan")
        out[name] = {"loss": loss, "perplexity": math.exp(loss) if tokens else float("nan")}
    return out


def evaluate(model, cfg: EvalConfig) -> dict[str, Any]:
    from .data import read_records

    root = Path(cfg.images)
    questions = balanced_subset(read_records(cfg.questions), cfg.max_questions)
    result: dict[str, Any] = {"questions": cfg.questions, "answers": answer_accuracy(model, questions, root, cfg)}
    if cfg.val:
        result["heldout"] = heldout_loss(model, read_records(cfg.val)[: cfg.max_val_samples], root, cfg)
    acc = result["answers"]["accuracy"]
    result["image_gain"] = {c: acc["image"] - acc[c] for c in cfg.controls}
    return result


def evaluate_checkpoint(checkpoint: str | Path, cfg: EvalConfig, out: str | Path | None = None) -> dict[str, Any]:
    """Load a checkpoint (safetensors + JSON), evaluate it, optionally write ``eval.json``."""
    from .checkpoint import load_vlm

    model = load_vlm(checkpoint)
    result = {"checkpoint": str(checkpoint), **evaluate(model, cfg)}
    if out:
        from .outputs import atomic_write_text

        Path(out).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out, json.dumps(result, indent=2))
    return result
