"""Evaluation: answer normalisation, the text-only controls, accuracy and held-out loss per condition.

    pytest -q tests/test_evaluation.py
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from vlm_core.config import ConfigError
from vlm_core.evaluation import CONTROLS, EvalConfig, balanced_subset, evaluate, normalise, question_type


@pytest.mark.parametrize("raw,expected", [("Yes.", "yes"), ("  the Circle!\nmore text", "circle"),
                                          ("A red", "red"), ("NO", "no"), ("", ""), ("rectangle,", "rectangle")])
def test_answers_are_normalised_before_exact_match(raw, expected):
    assert normalise(raw) == expected


def test_question_types_follow_the_expected_answer():
    assert [question_type(a) for a in ("yes", "No", "teal", "circle")] == ["yes/no", "yes/no", "color", "shape"]


def test_a_limited_question_set_takes_the_types_in_turn():
    rows = [{"id": str(i), "answer": a} for i, a in enumerate(["yes", "no", "yes", "red", "circle", "no", "teal"])]
    picked = balanced_subset(rows, 5)
    assert [r["id"] for r in picked] == ["3", "4", "0", "6", "1"]  # color, shape, yes/no, color, yes/no
    assert balanced_subset(rows, None) == rows and balanced_subset(rows, 99) == rows


def test_controls_remove_or_swap_the_image():
    f = torch.arange(12.0).reshape(3, 2, 2)
    assert torch.equal(CONTROLS["zeros"](f), torch.zeros_like(f))
    shuffled = CONTROLS["shuffled"](f)
    assert all(not torch.equal(shuffled[i], f[i]) for i in range(3))  # every question gets another image
    assert sorted(shuffled.flatten().tolist()) == sorted(f.flatten().tolist())
    with pytest.raises(ConfigError, match="eval.controls"):
        EvalConfig(questions="q", images="i", controls=["blank"])


def test_evaluate_reports_every_condition(tiny_model, corpus):
    cfg = EvalConfig(questions=str(corpus / "eval_easyvqa.jsonl"), images=str(corpus / "images"),
                     val=str(corpus / "sharegpt4v_sample.jsonl"), max_questions=12, max_val_samples=6,
                     batch_size=4, max_new_tokens=3, num_samples=3)
    result = evaluate(tiny_model, cfg)
    answers = result["answers"]
    assert answers["n"] == 12 and set(answers["accuracy"]) == {"image", "zeros", "shuffled"}
    assert all(0.0 <= a <= 1.0 for a in answers["accuracy"].values())
    assert sum(answers["type_counts"].values()) == 12
    available = {}
    for line in (corpus / "eval_easyvqa.jsonl").read_text().splitlines():
        t = question_type(json.loads(line)["answer"])
        available[t] = available.get(t, 0) + 1
    counts = answers["type_counts"]  # balanced: a type short of its share gives the rest to the others
    assert all(counts[a] <= counts[b] + 1 or counts[b] == available[b] for a in counts for b in counts)
    assert len(answers["samples"]) == 3 and {"image", "question", "expected", "answer_image",
                                             "answer_zeros"} <= set(answers["samples"][0])
    held = result["heldout"]
    assert held["n"] == 6
    for cond in ("image", "zeros", "shuffled"):
        assert held[cond]["loss"] > 0 and held[cond]["perplexity"] == pytest.approx(math.exp(held[cond]["loss"]))
    # the controls change what the model sees: their losses differ from the image-conditioned one
    assert held["zeros"]["loss"] != pytest.approx(held["image"]["loss"], abs=1e-6)
    assert held["shuffled"]["loss"] != pytest.approx(held["image"]["loss"], abs=1e-6)
    assert result["image_gain"]["zeros"] == pytest.approx(answers["accuracy"]["image"] - answers["accuracy"]["zeros"])
    json.dumps(result)  # serialisable as eval.json
