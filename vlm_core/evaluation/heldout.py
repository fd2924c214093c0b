"""``vlm-sweep eval CHECKPOINT``: held-out loss / perplexity and answer accuracy, with text-only controls that
show how much the image contributes.

For each condition the model sees the same prompts; only the image features differ:

- ``image``: the question's own image (what the model is for);
- ``zeros``: every image feature set to zero (the projector still adds its bias: "no picture");
- ``shuffled``: another question's image (features rolled by one over the evaluation set).

Answers are scored by the field's conventions (LLaVA-1.5, lmms-eval; rules in ``vlm_core.evaluation.answers``), on
held-out easy-vqa questions (``eval_easyvqa.jsonl`` of the sample corpus: yes/no, colour and shape questions):

- the prompt is the question followed by LLaVA-1.5's short-answer instruction (``EvalConfig.instruction``,
  default "Answer the question using a single word or phrase."; empty: the bare question), in the training chat
  format, answered greedily with up to ``max_new_tokens`` (16, as lmms-eval's VQAv2 task) new tokens;
- ``accuracy`` (the field's rule): a yes/no question is right when the answer's first word, after VQAv2
  normalisation, is the expected yes/no (anything else is *unanswered*, counted per condition); an open (colour,
  shape) question is right when its VQAv2-normalised answer occurs as a whole word in the normalised prediction;
- ``exact_match`` (strict, reported beside it): normalised prediction == normalised answer.

Both are given overall and by question type, per condition, with ``image_gain`` (image minus each control, on
accuracy) and ``image_gain_exact_match``; the instruction, the token budget and the rules are recorded under
``answers.protocol``, each sample generation with its verdicts (``correct_*``, ``exact_*``). Loss is the
token-weighted assistant-token loss on held-out conversations (a variant's ``val`` split), perplexity its
exponential.

    vlm-sweep eval runs/main/sweep/.../checkpoint_... --questions corpus/eval_easyvqa.jsonl \\
        --images corpus/images --val data/20kUmap/val-00000.parquet
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..base.outputs import atomic_write_text
from ..base.registry import Registry
from ..config import check_field
from ..data.dataset import ConversationDataset, read_records
from ..data.images import open_rgb, resolve_image
from ..training.checkpoint import load_vlm
from ..training.validation import loss_batches, summed_loss
from .answers import RULES, SHORT_ANSWER_INSTRUCTION, score, with_instruction
from .benchmarks.easy_vqa import balanced_subset as _balanced_subset
from .benchmarks.easy_vqa import question_text, question_type
from .inference import build_prompt_batch

CONTROLS: Registry[Callable[[torch.Tensor], torch.Tensor]] = Registry("eval.controls", "control", {
    "zeros": torch.zeros_like,  # every image feature zeroed (the projector still adds its bias): "no picture"
    "shuffled": lambda f: f.roll(1, dims=0),  # another question's image
})


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
    instruction: str = SHORT_ANSWER_INSTRUCTION
    """Appended to every question after a newline, as LLaVA-1.5 / lmms-eval prompt short-answer VQA questions
    (recorded with the results); empty: the bare question."""
    max_new_tokens: int = 16
    """New tokens per answer: lmms-eval's VQAv2 budget, room for a phrase or a sentence whose answer word comes
    late ("The color of the circle is red."); generation stops earlier once every answer of a batch has ended,
    so the extra cost is only where the model rambles: at most 16/6 the decoding steps of the old budget of 6."""
    num_samples: int = 6
    """Sample generations to keep (with their image paths) for the report."""

    def __post_init__(self) -> None:
        for control in self.controls:
            CONTROLS.check(control)
        check_field(self.batch_size >= 1, "eval.batch_size", "must be >= 1")
        check_field(self.max_new_tokens >= 1, "eval.max_new_tokens", "must be >= 1")


def balanced_subset(records: list[dict], n: int | None) -> list[dict]:
    """The first ``n`` question records taking each type in turn (:func:`.benchmarks.easy_vqa.balanced_subset`)."""
    return _balanced_subset(records, n, answer=lambda r: r["answer"])


def question_set(cfg: EvalConfig) -> list[dict]:
    """The questions an evaluation under ``cfg`` answers: ``cfg.max_questions`` of ``cfg.questions``, the types in
    turn (``balanced_subset``)."""
    return balanced_subset(read_records(cfg.questions), cfg.max_questions)


def protocol(cfg: EvalConfig) -> dict[str, Any]:
    """How answers are generated and scored under ``cfg``: recorded with every result (``answers.protocol``); a
    saved result under another protocol is not comparable."""
    return {"instruction": cfg.instruction, "max_new_tokens": cfg.max_new_tokens, "decoding": "greedy",
            "rules": dict(RULES)}


def prompt_questions(records: list[dict], instruction: str) -> list[str]:
    """What each question's human turn says: the question, then the short-answer instruction (once)."""
    return [with_instruction(question_text(r), instruction) for r in records]


def _rates(flags: list[bool], types: list[str]) -> tuple[float, dict[str, float]]:
    by_type = {t: sum(f for f, tt in zip(flags, types) if tt == t) / types.count(t) for t in sorted(set(types))}
    return sum(flags) / max(len(flags), 1), by_type


def score_answers(answers: dict[str, list[str]], records: list[dict]) -> dict[str, Any]:
    """Per condition: ``accuracy`` (the field's rule) and ``exact_match`` (strict), overall and by question type,
    and how many yes/no questions got neither yes nor no (``unanswered``); ``scores``: each answer's verdict."""
    types = [question_type(r["answer"]) for r in records]
    out: dict[str, Any] = {"accuracy": {}, "exact_match": {}, "by_type": {}, "exact_match_by_type": {},
                           "unanswered": {}, "scores": {}}
    for name, got in answers.items():
        verdicts = [score(g, r["answer"]) for g, r in zip(got, records)]
        out["accuracy"][name], out["by_type"][name] = _rates([v["correct"] for v in verdicts], types)
        out["exact_match"][name], out["exact_match_by_type"][name] = _rates([v["exact_match"] for v in verdicts],
                                                                            types)
        out["unanswered"][name] = sum(v["read"] is None for v, t in zip(verdicts, types) if t == "yes/no")
        out["scores"][name] = verdicts
    out["type_counts"] = {t: types.count(t) for t in sorted(set(types))}
    return out


@torch.no_grad()
def _features(model, images: list, batch_size: int) -> torch.Tensor:
    chunks = [model.image_features(model.vision.preprocess(images[i:i + batch_size]).to(model.device))
              for i in range(0, len(images), batch_size)]
    return torch.cat(chunks) if chunks else torch.empty(0)


def given_answers(given: dict[str, dict[str, str]], records: list[dict], controls: list[str]
                  ) -> dict[str, list[str]] | None:
    """Answers already generated for these records (``condition → record id → answer``: the easy-vqa benchmark's
    answers file, same prompt, budget and controls), in record order; None unless every one is there."""
    try:
        return {c: [given[c][str(r["id"])] for r in records] for c in ["image", *controls]}
    except KeyError:
        return None


def answer_accuracy(model, records: list[dict], image_root: Path, cfg: EvalConfig,
                    given: dict[str, dict[str, str]] | None = None) -> dict[str, Any]:
    """Greedy answers under every condition (or ``given`` ones, see :func:`given_answers`), scored by
    ``score_answers``; the protocol is recorded with them."""
    questions = prompt_questions(records, cfg.instruction)
    answers = given_answers(given, records, cfg.controls) if given else None
    if answers is None:
        answers = _generate(model, records, image_root, cfg, questions)
    return _answer_result(answers, records, questions, cfg)


@torch.no_grad()
def _generate(model, records: list[dict], image_root: Path, cfg: EvalConfig, questions: list[str]
              ) -> dict[str, list[str]]:
    model.eval()
    images = [open_rgb(resolve_image(r["image"], image_root)) for r in records]
    feats = _features(model, images, cfg.batch_size)
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
    return answers


def _answer_result(answers: dict[str, list[str]], records: list[dict], questions: list[str], cfg: EvalConfig
                   ) -> dict[str, Any]:
    scored = score_answers(answers, records)
    verdicts = scored.pop("scores")
    result: dict[str, Any] = {"n": len(records), **scored, "protocol": protocol(cfg)}
    result["samples"] = [{"image": r["image"], "question": question_text(r), "prompt": q, "expected": r["answer"],
                          **{f"answer_{name}": answers[name][i] for name in answers},
                          **{f"correct_{name}": verdicts[name][i]["correct"] for name in answers},
                          **{f"exact_{name}": verdicts[name][i]["exact_match"] for name in answers}}
                         for i, (r, q) in enumerate(zip(records[:cfg.num_samples], questions))]
    return result


@torch.no_grad()
def heldout_loss(model, records: list[dict], image_root: Path, cfg: EvalConfig) -> dict[str, Any]:
    """Assistant-token loss and perplexity on held-out conversations, with the image and under each control."""
    model.eval()
    dataset = ConversationDataset(records, model.formatter, model.vision.preprocess, image_root)
    batches = loss_batches(model, dataset, cfg.batch_size)
    feats = [model.image_features(b["pixel_values"].to(model.device)) for b in batches]
    all_feats = torch.cat(feats) if feats else torch.empty(0)
    out: dict[str, Any] = {"n": len(dataset), "skipped": dict(dataset.skipped)}
    for name, transform in {"image": lambda f: f, **{c: CONTROLS[c] for c in cfg.controls}}.items():
        # a control acts on the whole set (shuffled: another conversation's image), then per batch again
        cond = list(transform(all_feats).split([f.shape[0] for f in feats])) if feats else []
        total, tokens = summed_loss(model, batches, image_features=cond)
        loss = total / max(tokens, 1) if tokens else float("nan")
        out[name] = {"loss": loss, "perplexity": math.exp(loss) if tokens else float("nan")}
    return out


def evaluate(model, cfg: EvalConfig, given: dict[str, dict[str, str]] | None = None) -> dict[str, Any]:
    """Answers (generated, or ``given``: see :func:`given_answers`) and, with ``cfg.val``, held-out loss."""
    root = Path(cfg.images)
    questions = question_set(cfg)
    result: dict[str, Any] = {"questions": cfg.questions, "images": cfg.images,
                              "answers": answer_accuracy(model, questions, root, cfg, given)}
    if cfg.val:
        result["heldout"] = heldout_loss(model, read_records(cfg.val)[: cfg.max_val_samples], root, cfg)
    acc, em = result["answers"]["accuracy"], result["answers"]["exact_match"]
    result["image_gain"] = {c: acc["image"] - acc[c] for c in cfg.controls}  # on the field's rule
    result["image_gain_exact_match"] = {c: em["image"] - em[c] for c in cfg.controls}
    return result


def evaluate_checkpoint(checkpoint: str | Path, cfg: EvalConfig, out: str | Path | None = None,
                        given: dict[str, dict[str, str]] | None = None) -> dict[str, Any]:
    """Load a checkpoint (safetensors + JSON), evaluate it, optionally write ``eval.json``."""
    model = load_vlm(checkpoint)
    result = {"checkpoint": str(checkpoint), **evaluate(model, cfg, given)}
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out, json.dumps(result, indent=2))
    return result
