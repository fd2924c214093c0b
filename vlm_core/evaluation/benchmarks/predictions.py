"""Predictions files, read and scored: ``vlm-sweep score --benchmark NAME --predictions FILE.jsonl``.

A predictions file holds one JSON object a line: ``question_id`` (the benchmark's question id, see its reader:
POPE's are ``SPLIT/question_id``, MMBench's the TSV ``index``) and ``prediction`` (the generated text; ``text``, the
key of LLaVA's answer files, is read too). Another model's, or ours: ``vlm-sweep eval --benchmark`` writes
``answers-BENCHMARK-CHECKPOINTKEY-PROTOCOL.jsonl``, whose lines also carry a ``condition`` — keep one condition's
lines. So a result can be checked against a published one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ...base.errors import DataError
from .base import Benchmark, Question, json_lines

PREDICTION_KEYS = ("prediction", "text")


def read_predictions(path: str | Path) -> dict[str, str]:
    """``question_id → prediction``; a line without either, not a JSON object, or repeating an id is refused by
    number."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: predictions file not found")
    out: dict[str, str] = {}
    for n, row in json_lines(path, lambda problem: DataError(f"{path}: {problem}")):
        key = next((k for k in PREDICTION_KEYS if k in row), None)
        if "question_id" not in row or key is None:
            raise DataError(f"{path}: line {n} needs 'question_id' and 'prediction' (or 'text')")
        qid = str(row["question_id"])
        if qid in out:
            raise DataError(f"{path}: line {n} repeats question_id {qid!r}")
        out[qid] = str(row[key])
    return out


def score_predictions(bench: Benchmark, questions: Sequence[Question], predictions: Mapping[str, str],
                      source: str = "") -> dict[str, Any]:
    """The benchmark's metrics on the predicted questions, with how many questions had no prediction; a predicted
    id that is not a question of the benchmark is refused (naming a few, and what its ids look like)."""
    ids = {q.qid for q in questions}
    unknown = [k for k in predictions if k not in ids]
    if unknown:
        raise DataError(f"{source or 'predictions'}: {len(unknown)} question ids are not questions of "
                        f"{bench.name} (e.g. {unknown[:3]}); its ids look like {[q.qid for q in questions[:2]]}")
    scored = bench.score(questions, predictions)
    return {"benchmark": bench.name, "reproduces": bench.reproduces, "headline": bench.headline,
            "metrics": scored.metrics, "questions": len(questions), "predicted": len(predictions),
            "without_prediction": len(ids) - len(predictions)}
