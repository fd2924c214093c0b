"""Evaluation: the field's answer rules on hand-written model outputs, the short-answer instruction, the text-only
controls, accuracy / exact match and held-out loss per condition.

    pytest -q tests/test_evaluation.py
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from vlm_core.base.errors import ConfigError
from vlm_core.data.dataset import read_records
from vlm_core.evaluation.answers import (
    SHORT_ANSWER_INSTRUCTION,
    exact_match,
    score,
    vqa_normalise,
    whole_word_match,
    with_instruction,
    yes_no,
)
from vlm_core.evaluation.heldout import (
    CONTROLS,
    EvalConfig,
    answer_accuracy,
    balanced_subset,
    evaluate,
    prompt_questions,
    question_type,
)


# The VQAv2 normaliser (lmms-eval EvalAIAnswerProcessor). This replaces the old first-line / strip-punctuation
# normalise(): multi-line text is now joined (newline -> space) as the reference does, so "the Circle!\nmore text"
# is "circle more text", no longer "circle".
@pytest.mark.parametrize("raw,expected", [
    ("Yes.", "yes"), ("NO", "no"), ("", ""), ("rectangle,", "rectangle"), ("A red", "red"),
    ("  the Circle!\nmore text", "circle more text"),           # newline joined, article dropped, "!" gone
    ("No, the image does not show a circle.", "no image does not show circle"),  # comma dropped, articles dropped
    ("Two circles.", "2 circles"), ("none", "0"), ("ten", "10"),  # number words -> digits
    ("an apple and the pear", "apple and pear"),                 # every article, not only a leading one
    ("black-and-white", "black and white"),                      # a mark between letters becomes a space
    ("red - blue", "red blue"),                                  # a mark next to a space is deleted
    ("1.5 m.", "1.5 m"), ("2.", "2"),                            # a period not followed by a digit is deleted
    ("I dont know", "i don't know"), ("isnt it", "isn't it"),    # contractions written the canonical way
    ("Theres", "there's"),
    ("the dog's ball", "dog 's ball"),                           # 's split off (kept, as the reference does)
])
def test_answers_get_the_vqav2_normalisation(raw, expected):
    assert vqa_normalise(raw) == expected


@pytest.mark.parametrize("prediction,read", [
    ("No, the image does not show a circle.", "no"), ("Yes.", "yes"), ("yes", "yes"), ("NO!", "no"),
    ("Yes: it is red", "yes"),          # punctuation the normaliser keeps is stripped off the first word
    ("I think yes", None),              # first-word rule: a yes later on is not an answer
    ("The answer is no", None), ("Not at all", None), ("yesterday", None), ("", None), ("Noah", None),
])
def test_yes_no_reads_the_first_word_only(prediction, read):
    assert yes_no(prediction) == read


@pytest.mark.parametrize("prediction,answer,correct,strict", [
    # yes/no questions: the first word decides; strict needs the bare word
    ("No, the image does not show a circle.", "no", True, False),
    ("Yes.", "yes", True, True),
    ("I think yes", "yes", False, False),
    ("No", "yes", False, False),
    ("Yes, there is no circle.", "no", False, False),   # the first word says yes: a later "no" does not count
    # open questions: the normalised answer as a whole word (run of words) in the normalised prediction
    ("The color of the circle is red.", "red", True, False),
    ("red", "red", True, True), ("Red.", "red", True, True), ("The red", "red", True, True),  # articles, case
    ("reddish", "red", False, False),                   # a word that starts with the answer is another word
    ("credit", "red", False, False),
    ("two circles", "2", True, False),                  # number words map to digits on both sides
    ("2", "two", True, True),
    ("circle", "rectangle", False, False),
    ("It is a rectangle, not a circle.", "rectangle", True, False),
    ("dark blue", "dark blue", True, True), ("blue, dark", "dark blue", False, False),  # a run, in order
    ("The color of the circle is", "red", False, False),  # the old 6-token cut: no answer word at all
    ("", "red", False, False),
])
def test_the_fields_rule_and_strict_exact_match(prediction, answer, correct, strict):
    verdict = score(prediction, answer)
    assert verdict["correct"] is correct and verdict["exact_match"] is strict
    if answer not in ("yes", "no"):
        assert whole_word_match(prediction, answer) is correct
    assert exact_match(prediction, answer) is strict


def test_the_instruction_is_appended_once_or_not_at_all():
    q = "What color is the shape?"
    assert with_instruction(q, SHORT_ANSWER_INSTRUCTION) == f"{q}\n{SHORT_ANSWER_INSTRUCTION}"
    assert SHORT_ANSWER_INSTRUCTION == "Answer the question using a single word or phrase."  # LLaVA-1.5's words
    once = with_instruction(q, SHORT_ANSWER_INSTRUCTION)
    assert with_instruction(once, SHORT_ANSWER_INSTRUCTION) == once  # a question that already carries it
    assert with_instruction(once.lower(), SHORT_ANSWER_INSTRUCTION) == once.lower()  # in any case
    assert with_instruction(q, "") == q
    rows = [{"conversations": [{"from": "human", "value": f"<image>\n{q}"}]},
            {"conversations": [{"from": "human", "value": f"{q}\n<image>"}]}]
    assert prompt_questions(rows, "Answer briefly.") == [f"{q}\nAnswer briefly."] * 2
    assert prompt_questions(rows, "") == [q, q]


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
    assert set(answers["exact_match"]) == set(answers["accuracy"]) == set(answers["unanswered"])
    assert all(0.0 <= a <= 1.0 for a in [*answers["accuracy"].values(), *answers["exact_match"].values()])
    # strict exact match can only be lower: a bare right answer is also right by the field's rule
    assert all(answers["exact_match"][c] <= answers["accuracy"][c] for c in answers["accuracy"])
    assert answers["protocol"]["instruction"] == SHORT_ANSWER_INSTRUCTION and answers["protocol"]["max_new_tokens"] == 3
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
    assert result["image_gain_exact_match"]["shuffled"] == pytest.approx(
        answers["exact_match"]["image"] - answers["exact_match"]["shuffled"])
    json.dumps(result)  # serialisable as eval.json


class ScriptedGenerate:
    """Stands in for ``model.generate``: records each prompt and answers with hand-written text per condition
    (one generate call per condition when the batch holds every question: image, zeros, shuffled in turn)."""

    def __init__(self, model, replies):
        self.model, self.replies, self.prompts, self.calls = model, replies, [], 0

    def __call__(self, input_ids, attention_mask, image_features=None, max_new_tokens=64, **kwargs):
        tok = self.model.tokenizer
        self.prompts.append([tok.decode(row[mask.bool()]) for row, mask in zip(input_ids, attention_mask)])
        texts = self.replies[self.calls]
        self.calls += 1
        rows = [tok(t, add_special_tokens=False)["input_ids"][:max_new_tokens] for t in texts]
        width = max(len(r) for r in rows)
        return torch.tensor([r + [tok.pad_token_id] * (width - len(r)) for r in rows])


def test_scripted_answers_are_scored_by_each_rule(tiny_model, corpus, monkeypatch):
    records = balanced_subset(read_records(corpus / "eval_easyvqa.jsonl"), 6)
    answers = [r["answer"] for r in records]
    types = [question_type(a) for a in answers]
    assert sorted(types) == ["color", "color", "shape", "shape", "yes/no", "yes/no"]
    image = [f"{a.capitalize()}, I can see it." if t == "yes/no" else f"The answer is {a}." for a, t in
             zip(answers, types)]           # right by the field's rule, wrong by strict exact match
    image[0] = answers[0]                   # ... except the first: the bare answer, right by both
    zeros = ["I think yes"] * 6             # yes/no unanswered (first word), open questions wrong
    shuffled = [f"The {a}!" for a in answers]  # right by both rules: article and "!" normalised away
    fake = ScriptedGenerate(tiny_model, [image, zeros, shuffled])
    monkeypatch.setattr(tiny_model, "generate", fake)
    cfg = EvalConfig(questions="unused", images=str(corpus / "images"), batch_size=6, num_samples=6)
    result = answer_accuracy(tiny_model, records, corpus / "images", cfg)

    assert result["accuracy"] == {"image": 1.0, "zeros": 0.0, "shuffled": 1.0}
    assert result["exact_match"] == pytest.approx({"image": 1 / 6, "zeros": 0.0, "shuffled": 1.0})
    assert result["unanswered"] == {"image": 0, "zeros": 2, "shuffled": 0}
    assert result["type_counts"] == {"color": 2, "shape": 2, "yes/no": 2}
    assert result["by_type"]["image"] == {"color": 1.0, "shape": 1.0, "yes/no": 1.0}
    strict_first = types[0]
    assert result["exact_match_by_type"]["image"] == {t: (0.5 if t == strict_first else 0.0)
                                                      for t in ("color", "shape", "yes/no")}
    assert [s["correct_image"] for s in result["samples"]] == [True] * 6
    assert [s["exact_image"] for s in result["samples"]] == [True] + [False] * 5
    assert [s["answer_zeros"] for s in result["samples"]] == zeros
    # the instruction: in every prompt exactly once, after the question; recorded with the results
    for prompts in fake.prompts:
        for p, r in zip(prompts, records):
            assert p.count(SHORT_ANSWER_INSTRUCTION) == 1
            q = r["conversations"][0]["value"].replace("<image>", "").strip()
            assert f"{q}\n{SHORT_ANSWER_INSTRUCTION}" in p
    assert result["samples"][0]["prompt"].endswith("\n" + SHORT_ANSWER_INSTRUCTION)
    assert SHORT_ANSWER_INSTRUCTION not in result["samples"][0]["question"]
    protocol = result["protocol"]
    assert protocol["instruction"] == SHORT_ANSWER_INSTRUCTION and protocol["max_new_tokens"] == cfg.max_new_tokens
    assert {"normalisation", "yes/no", "open", "exact_match"} <= set(protocol["rules"])

    # instruction="" leaves the prompt as it was before the instruction existed
    bare = ScriptedGenerate(tiny_model, [image, zeros, shuffled])
    monkeypatch.setattr(tiny_model, "generate", bare)
    plain = answer_accuracy(tiny_model, records, corpus / "images", EvalConfig(
        questions="unused", images=str(corpus / "images"), batch_size=6, instruction=""))
    assert plain["protocol"]["instruction"] == ""
    for with_ins, without in zip(fake.prompts[0], bare.prompts[0]):
        assert "single word or phrase" not in without
        assert with_ins.replace("\n" + SHORT_ANSWER_INSTRUCTION, "") == without
    assert plain["accuracy"] == result["accuracy"]  # same answers, same scores: the prompt is all that changed


def test_generation_budget_is_a_phrase_and_validated():
    assert EvalConfig(questions="q", images="i").max_new_tokens == 16  # lmms-eval's VQAv2 budget
    with pytest.raises(ConfigError, match="eval.max_new_tokens"):
        EvalConfig(questions="q", images="i", max_new_tokens=0)


def test_the_report_shows_both_scores_per_type_and_names_the_instruction(tmp_path):
    from sweeps.reporting.study_report import evaluation_section
    from vlm_core.evaluation.heldout import score_answers

    records = [{"image": f"coco/val2017/{i}.jpg", "answer": a} for i, a in enumerate(["yes", "no", "red", "circle"])]
    replies = {"image": ["Yes.", "No, there is none.", "The color of the circle is red.", "circle"],
               "zeros": ["I think yes", "no", "blue", "It is a\nrectangle | maybe"],
               "shuffled": ["no", "no", "green", "triangle"]}
    scored = score_answers(replies, records)
    verdicts = scored.pop("scores")
    samples = [{"image": r["image"], "question": f"Question {i}?", "expected": r["answer"],
                **{f"answer_{c}": replies[c][i] for c in replies},
                **{f"correct_{c}": verdicts[c][i]["correct"] for c in replies},
                **{f"exact_{c}": verdicts[c][i]["exact_match"] for c in replies}} for i, r in enumerate(records)]
    protocol = {"instruction": SHORT_ANSWER_INSTRUCTION, "max_new_tokens": 16}
    evals = [{"config_id": "s2-a", "checkpoint": "ck/a", "questions": str(tmp_path / "q.jsonl"),
              "answers": {"n": 4, **scored, "samples": samples, "protocol": protocol},
              "heldout": {"image": {"loss": 1.0, "perplexity": math.e}}}]
    lines, best = evaluation_section(tmp_path, evals)
    text = "\n".join(lines)
    assert scored["accuracy"] == {"image": 1.0, "zeros": 0.25, "shuffled": 0.25}
    assert scored["exact_match"] == {"image": 0.5, "zeros": 0.25, "shuffled": 0.25}
    header = next(ln for ln in lines if ln.startswith("| config_id"))
    assert "| acc_image | em_image | acc_zeros | em_zeros | acc_shuffled | em_shuffled |" in header
    assert f'"{SHORT_ANSWER_INSTRUCTION}"' in text and "up to 16 new tokens" in text
    assert "| question type | questions | acc_image | em_image |" in text
    assert "| yes/no | 2 | 1.000 | 0.500 | 0.500 | 0.500 | 0.500 | 0.500 |" in text  # counts and both scores
    assert "| color | 1 | 1.000 | 0.000 |" in text
    assert "with image 0, zeroed image 1, another image 0." in text  # "I think yes": unanswered
    assert "The color of the circle is red. ✓ |" in text and "| circle ✓✓ |" in text and "I think yes ✗" in text
    assert "It is a ⏎ rectangle \\| maybe ✗" in text  # one table cell: line break and pipe made safe
    assert best["config_id"] == "s2-a" and best["exact_match"]["image"] == 0.5 and best["protocol"] == protocol
    bare = evaluation_section(tmp_path, [{**evals[0], "answers": {**evals[0]["answers"],
                                                                  "protocol": {**protocol, "instruction": ""}}}])[0]
    assert "the bare question (no short-answer instruction)" in "\n".join(bare)
    own = "\n".join(evaluation_section(tmp_path, [{**evals[0], "answers": {
        **evals[0]["answers"], "protocol": {**protocol, "instruction": "Be brief."}}}])[0])
    assert '"Be brief."' in own and "LLaVA-1.5's" not in own.split("Prompt:")[1].split("\n")[0]
    assert evaluation_section(tmp_path, []) == ([], None)


def test_a_report_with_one_control_names_only_the_conditions_that_ran(tmp_path):
    from sweeps.reporting.study_report import evaluation_section
    from vlm_core.evaluation.heldout import score_answers

    records = [{"image": "coco/val2017/1.jpg", "answer": "red"}, {"image": "coco/val2017/2.jpg", "answer": "no"}]
    scored = score_answers({"image": ["red", "no"], "shuffled": ["blue", "yes"]}, records)
    scored.pop("scores")
    evals = [{"config_id": "s2-a", "checkpoint": "ck/a", "questions": str(tmp_path / "q.jsonl"),
              "answers": {"n": 2, **scored, "samples": [],
                          "protocol": {"instruction": SHORT_ANSWER_INSTRUCTION, "max_new_tokens": 16}},
              "heldout": {"image": {"loss": 1.0, "perplexity": math.e}}}]
    text = "\n".join(evaluation_section(tmp_path, evals)[0])  # --controls shuffled: no zeroed-image run
    best_line = next(ln for ln in text.splitlines() if ln.startswith("Val loss"))
    assert ("with image 1.000, another image 0.000; strict exact match with image 1.000, another image 0.000"
            in best_line)
    assert "zeroed" not in best_line and "nan" not in best_line


def test_select_by_names_the_best_config_of_the_study_report(tmp_path):
    """``run --select-by pope.f1``: the study's best config (and its chat command) is the sweep report's best by that
    metric, not the easy-vqa leader; unknown benchmarks and a metric of no evaluated benchmark are refused first."""
    from sweeps.reporting.study_report import evaluation_section
    from sweeps.study import StudyConfig, check_eval_flags
    from vlm_core.evaluation.heldout import score_answers

    records = [{"image": "coco/val2017/1.jpg", "answer": "red"}, {"image": "coco/val2017/2.jpg", "answer": "no"}]
    evals = []
    for config_id, said in (("s2-a", ["red", "no"]), ("s2-b", ["blue", "no"])):
        scored = score_answers({"image": said}, records)
        scored.pop("scores")
        evals.append({"config_id": config_id, "checkpoint": f"ck/{config_id}", "questions": str(tmp_path / "q"),
                      "answers": {"n": 2, **scored, "samples": [], "protocol": {"max_new_tokens": 16}},
                      "heldout": {"image": {"loss": 1.0, "perplexity": math.e}}})
    assert evaluation_section(tmp_path, evals)[1]["config_id"] == "s2-a"  # easy-vqa accuracy 1.0 against 0.5
    lines, best = evaluation_section(tmp_path, evals, ("s2-b", "pope.f1"))
    assert best["config_id"] == "s2-b" and "## Best config: `s2-b`" in lines
    assert "the best config is the best by `pope.f1`" in " ".join(lines)
    check_eval_flags(StudyConfig(eval_benchmarks="gqa", select_by="gqa.accuracy"))
    for bad, message in ((dict(eval_benchmarks="gqb"), "unknown benchmark 'gqb'"),
                         (dict(select_by="gqa.accuracy"), "its benchmark is not evaluated"),
                         (dict(select_by="pope.yes_ratio"), "is not 'val_loss' or BENCHMARK.METRIC")):
        with pytest.raises(ConfigError, match=message):
            check_eval_flags(StudyConfig(**bad))


def test_the_reports_chat_command_pastes_into_bash_as_one_argument_per_value(tmp_path):
    import subprocess

    from sweeps.reporting.study_report import chat_command

    question = with_instruction("Is it the user's \\ red one?", SHORT_ANSWER_INSTRUCTION)
    cmd = chat_command(str(tmp_path / "a checkpoint"), "/x/img 1.jpg", question)
    assert "\n" not in cmd  # one line
    argv = subprocess.run(["bash", "-c", 'printf "%s\\0" ' + cmd.split(" ", 1)[1]], capture_output=True,
                          text=True, check=True).stdout.split("\0")[:-1]
    assert argv == ["chat", "--checkpoint", str(tmp_path / "a checkpoint"), "--image", "/x/img 1.jpg", question]
