"""easy-vqa (the embedded default's questions): yes/no, colour and shape questions on synthetic shapes.

Read from a sample corpus (``vlm-sweep data sample-corpus``: ``eval_easyvqa.jsonl`` and ``images/``) and scored by
the field's reading of short answers (``vlm_core.evaluation.answers``): ``accuracy`` (yes/no by the first word,
open answers by whole-word match), strict ``exact_match`` beside it, both per question type, and how many yes/no
questions got neither yes nor no. ``--limit N`` takes the types in turn (:func:`balanced_subset`): the test split
is 3/4 yes/no, where a text-only model already scores about half.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from ..answers import SHORT_ANSWER_INSTRUCTION, score, vqa_normalise, with_instruction
from .base import BENCHMARKS, Benchmark, Question, Scored, load_jsonl, need, rate

EVAL_FILE = "eval_easyvqa.jsonl"
"""The held-out questions of a sample corpus (``data_pipeline.sample_corpus``)."""
IMAGE_MARKER = "<image>"
COLORS = {"red", "green", "blue", "black", "gray", "grey", "teal", "brown", "yellow", "white", "orange", "purple"}


def question_type(answer: str) -> str:
    a = vqa_normalise(answer)
    return "yes/no" if a in ("yes", "no") else "color" if a in COLORS else "shape"


def balanced_subset(questions: Sequence, n: int | None, seed: int = 0, answer=lambda q: q.target) -> list:
    """The first ``n`` questions taking each type in turn (yes/no, color, shape), in file order; deterministic
    (``seed`` unused); ``n=None``: all."""
    if n is None or n >= len(questions):
        return list(questions)
    by_type: dict[str, list] = {}
    for q in questions:
        by_type.setdefault(question_type(answer(q)), []).append(q)
    queues = [list(v) for _, v in sorted(by_type.items())]
    chosen: list = []
    while len(chosen) < n:
        for queue in queues:
            if queue and len(chosen) < n:
                chosen.append(queue.pop(0))
    return chosen


def question_text(record: Mapping) -> str:
    """The record's first human turn without the image marker."""
    turn = record["conversations"][0]
    return turn.get("value", turn.get("content", "")).replace(IMAGE_MARKER, "").strip()


def read_easy_vqa(bench: Benchmark, folder: Path, images: Path) -> list[Question]:
    """``eval_easyvqa.jsonl`` (``id``, ``image``, ``answer``, one human turn); images under ``images/``."""
    path = folder / EVAL_FILE
    out = []
    for n, row in load_jsonl(bench, path):
        need(bench, path, f"line {n}", row, ("image", "answer", "conversations"))
        out.append(Question(str(row.get("id", n)), with_instruction(question_text(row), SHORT_ANSWER_INSTRUCTION),
                            str(row["answer"]), images / str(row["image"]),
                            meta={"type": question_type(str(row["answer"]))}))
    return out


def score_easy_vqa(questions: Sequence[Question], predictions: Mapping[str, str]) -> Scored:
    asked = [q for q in questions if q.qid in predictions]
    verdicts = {q.qid: score(predictions[q.qid], q.target) for q in asked}
    metrics: dict[str, float] = {"n": len(asked)}
    for kind in [None, *sorted({q.meta["type"] for q in asked})]:
        part = [verdicts[q.qid] for q in asked if kind is None or q.meta["type"] == kind]
        prefix = f"{kind}." if kind else ""
        metrics[f"{prefix}accuracy"] = rate([v["correct"] for v in part])
        metrics[f"{prefix}exact_match"] = rate([v["exact_match"] for v in part])
    metrics["unanswered"] = sum(verdicts[q.qid]["read"] is None for q in asked if q.meta["type"] == "yes/no")
    return Scored(metrics, verdicts)


BENCHMARKS.add("easy-vqa", Benchmark(
    name="easy-vqa", reproduces="LLaVA-1.5's short-answer prompt; VQAv2 normalisation, yes/no by the first word, "
                                "whole-word match (vlm_core.evaluation.answers)",
    publisher="a sample corpus (`vlm-sweep data sample-corpus --out CORPUS`; questions from the easy-vqa package)",
    files="easy-vqa", file_names=(EVAL_FILE,), images="easy-vqa/images", read=read_easy_vqa, score=score_easy_vqa,
    max_new_tokens=16, headline="accuracy", instruction=SHORT_ANSWER_INSTRUCTION,
    pick=lambda qs, n, seed: balanced_subset(qs, n, seed)))
