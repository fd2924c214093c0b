"""Each benchmark's reader and scorer on a few records in its published format, the expected scores worked out by
hand from the reference functions (lmms-eval 0.7.3's task utils; LLaVA's eval_pope.py), and ``vlm-sweep score``.

    .venv/bin/python -m pytest -q tests/test_benchmarks.py
"""

from __future__ import annotations

import json

import pytest

from tests import benchmark_files as bf
from vlm_core.evaluation.benchmarks import BENCHMARKS, BenchmarkFileError, locate, split_missing, subset
from vlm_core.evaluation.benchmarks.multiple_choice import can_infer_option, extract_mcq_answer, mmbench_read
from vlm_core.evaluation.benchmarks.predictions import read_predictions, score_predictions
from vlm_core.evaluation.benchmarks.yes_no import llava_pope_read, mme_read

INSTRUCTION = "\nAnswer the question using a single word or phrase."


def _read(name, root):
    bench = BENCHMARKS[name]
    folder, images = locate(bench, root)
    return bench, bench.read(bench, folder, images)


def _score(name, root, answers):
    bench, questions = _read(name, root)
    return bench.score(questions, answers)


POPE_ROWS = {"adversarial": [(1, "COCO_val2014_000000000001.jpg", "Is there a dog in the image?", "yes"),
                             (2, "COCO_val2014_000000000001.jpg", "Is there a cat in the image?", "yes"),
                             (3, "COCO_val2014_000000000002.jpg", "Is there a dog in the image?", "no"),
                             (4, "COCO_val2014_000000000002.jpg", "Is there a bus in the image?", "no")],
             "random": [(1, "COCO_val2014_000000000003.jpg", "Is there a car in the image?", "no"),
                        (2, "COCO_val2014_000000000003.jpg", "Is there a tree in the image?", "yes")]}
POPE_ANSWERS = {"adversarial/1": "Yes", "adversarial/2": "Yes.", "adversarial/3": "No, there is no dog.",
                "adversarial/4": "There is a dog in the image", "random/1": "no", "random/2": "not sure"}


def test_pope_both_rules_per_split_and_pooled(tmp_path):
    bench, questions = _read("pope", bf.pope(tmp_path, POPE_ROWS))
    assert [q.qid for q in questions] == list(POPE_ANSWERS)
    assert questions[0].prompt == "Is there a dog in the image?" + INSTRUCTION
    assert questions[0].image == tmp_path / "coco/val2014/COCO_val2014_000000000001.jpg"
    m = bench.score(questions, POPE_ANSWERS).metrics
    # LLaVA, pooled: reads yes yes no yes no no against yes yes no no no yes → TP 2, FP 1, TN 2, FN 1
    assert m["pooled.accuracy"] == pytest.approx(4 / 6) and m["pooled.precision"] == pytest.approx(2 / 3)
    assert m["pooled.recall"] == pytest.approx(2 / 3) and m["pooled.f1"] == pytest.approx(2 / 3)
    assert m["pooled.yes_ratio"] == 0.5
    # adversarial alone: TP 2, FP 1, TN 1, FN 0 → P 2/3, R 1, F1 0.8; random alone: TP 0, FP 0, TN 1, FN 1 → F1 0
    assert m["adversarial.accuracy"] == 0.75 and m["adversarial.recall"] == 1.0
    assert m["adversarial.f1"] == pytest.approx(0.8) and m["random.f1"] == 0.0 and m["random.accuracy"] == 0.5
    # the headline: the mean over the splits read (LLaVA-1.5's reporting), not the pooled value
    assert m["f1"] == pytest.approx(0.4) and m["accuracy"] == pytest.approx(0.625)
    assert m["precision"] == pytest.approx(1 / 3) and m["recall"] == 0.5 and m["yes_ratio"] == pytest.approx(0.375)
    assert m["splits"] == 2
    # lmms-eval: only "Yes" and "no" are literally the label; "Yes." scores 0; no literal "no" on a yes → recall 1
    assert m["lmms_eval.accuracy"] == pytest.approx(2 / 6)
    assert m["lmms_eval.precision"] == 1.0 and m["lmms_eval.recall"] == 1.0 and m["lmms_eval.f1"] == 1.0
    assert m["lmms_eval.yes_ratio"] == pytest.approx(1 / 6) and m["lmms_eval.gt_yes_ratio"] == 0.5
    assert m["lmms_eval.unanswered"] == pytest.approx(4 / 6) and m["n"] == 6


def test_llava_pope_reading_keeps_the_first_sentence_and_reads_any_negation():
    assert llava_pope_read("Yes. There is no cat.") == "yes"  # only the first sentence counts
    assert llava_pope_read("There is not a cat") == "no" and llava_pope_read("Nope") == "yes"
    assert llava_pope_read("no,") == "no"  # commas dropped before splitting on spaces
    assert llava_pope_read("NO") == "yes"  # the reference's words are No / not / no, case as written


def test_vqav2_soft_accuracy_leave_one_out(tmp_path):
    root = bf.vqav2(tmp_path, [(11, 1, "How many dogs?", ["two"] * 2 + ["3"] * 8, "number"),
                               (12, 1, "Is it sunny?", ["yes"] * 10, "yes/no"),
                               (13, 2, "What colour?", ["red"] * 3 + ["blue"] * 7, "other")])
    bench, questions = _read("vqav2", root)
    assert questions[0].prompt == "How many dogs?" + INSTRUCTION
    assert questions[0].image.name == "COCO_val2014_000000000001.jpg"
    s = bench.score(questions, {"11": "Two.", "12": "Yes", "13": "red"})
    # "Two." → "2", held by 2 of 10 answers: (2 × 1/3 + 8 × 2/3) / 10 = 0.6; red by 3: (3 × 2/3 + 7 × 1) / 10 = 0.9
    assert s.verdicts["11"]["correct"] == pytest.approx(0.6) and s.verdicts["11"]["read"] == "2"
    assert s.verdicts["12"]["correct"] == 1.0 and s.verdicts["13"]["correct"] == pytest.approx(0.9)
    assert s.metrics["accuracy"] == pytest.approx((0.6 + 1 + 0.9) / 3)
    assert s.metrics["number.accuracy"] == pytest.approx(0.6) and s.metrics["yes/no.accuracy"] == 1.0


def test_textvqa_capitalises_and_normalises_fully(tmp_path):
    root = bf.textvqa(tmp_path, [(5, "abc1", "what brand is it?", ["Coca Cola"] * 3 + ["coke"] * 7)])
    bench, questions = _read("textvqa", root)
    assert questions[0].prompt == "What brand is it?" + INSTRUCTION
    assert questions[0].image == tmp_path / "textvqa/train_images/abc1.jpg"
    s = bench.score(questions, {"5": "coca-cola"})  # "-" between letters → a space: "coca cola"
    assert s.metrics["accuracy"] == pytest.approx(0.9)


def test_gqa_exact_match_ignores_case_and_punctuation_only(tmp_path):
    root = bf.gqa(tmp_path, {"g1": ("n1", "Is it red?", "yes"), "g2": ("n2", "Which side is it on?", "left")})
    bench, questions = _read("gqa", root)
    s = bench.score(questions, {"g1": " Yes. ", "g2": "left side"})
    assert s.verdicts["g1"]["correct"] and not s.verdicts["g2"]["correct"] and s.metrics["accuracy"] == 0.5


def test_xgqa_reports_indonesian_english_and_the_gap(tmp_path):
    bf.gqa(tmp_path, {"x1": ("n1", "Apakah warnanya merah?", "yes"), "x2": ("n2", "Di sisi mana?", "left")},
           name="xgqa/testdev_balanced_questions_id.json")
    bf.gqa(tmp_path, {"x1": ("n1", "Is it red?", "yes"), "x2": ("n2", "Which side is it on?", "left")},
           name="xgqa/testdev_balanced_questions_en.json")
    bench, questions = _read("xgqa-id", tmp_path)
    assert {q.qid for q in questions} == {"id/x1", "id/x2", "en/x1", "en/x2"}
    assert next(q for q in questions if q.qid == "id/x2").prompt == "Di sisi mana?" + INSTRUCTION
    m = bench.score(questions, {"id/x1": "no", "id/x2": "left", "en/x1": "yes", "en/x2": "Left"}).metrics
    assert m["accuracy"] == 0.5 and m["en.accuracy"] == 1.0 and m["gap"] == 0.5 and m["n"] == 2
    assert len(subset(questions, 1)) == 2  # a question and its English original stay together
    # --limit counts Indonesian questions: 2 of them is both pairs (4 asked), not one pair
    assert len(bench.limited(questions, 1)) == 2 and len(bench.limited(questions, 2)) == 4


def test_scienceqa_img_prompt_and_letter_rule(tmp_path):
    problems = {"p1": {"question": "Which animal barks?", "choices": ["cat", "dog", "fish"], "answer": 1,
                       "hint": "A pet.", "image": "image.png", "split": "test"},
                "p2": {"question": "Which is a colour?", "choices": ["red", "run"], "answer": 0, "hint": "",
                       "image": "image.png", "split": "test"},
                "p3": {"question": "Train?", "choices": ["a", "b"], "answer": 0, "hint": "", "image": "image.png",
                       "split": "train"},
                "p4": {"question": "No image?", "choices": ["a", "b"], "answer": 0, "hint": "", "image": None,
                       "split": "test"}}
    bench, questions = _read("scienceqa-img", bf.scienceqa(tmp_path, problems))
    assert [q.qid for q in questions] == ["p1", "p2"]
    assert questions[0].prompt == ("Context: A pet.\nWhich animal barks?\nA. cat\nB. dog\nC. fish\n"
                                   "Answer with the option's letter from the given choices directly.")
    assert questions[1].prompt.startswith("Which is a colour?\nA. red\nB. run\n")
    assert questions[0].image == tmp_path / "scienceqa/images/test/p1/image.png" and questions[0].target == "B"
    verdicts = {p: bench.score(questions, {"p1": p}).verdicts["p1"]["correct"]
                for p in ("B", "b", " B. dog", "B.", "The answer is B", "C.", "b. dog")}
    assert verdicts == {"B": True, "b": True, " B. dog": True, "B.": True, "The answer is B": False, "C.": False,
                        "b. dog": False}


def test_mme_acc_and_acc_plus_per_image_pair(tmp_path):
    yes_no = " Please answer yes or no."
    root = bf.mme(tmp_path, {
        "existence": {"0001": [("Is there a dog in the image?" + yes_no, "Yes"),
                               ("Is there a cat in the image?" + yes_no, "No")],
                      "0002": [("Is there a car?" + yes_no, "Yes"), ("Is there a boat?" + yes_no, "No")]},
        "artwork": {"10002": [("Is this by Monet?" + yes_no, "Yes"), ("Is this by Dali?" + yes_no, "No")]},
        "code_reasoning": {"0001": [("Is the output 3?" + yes_no, "No"), ("Is the output 4?" + yes_no, "Yes")]},
    }, split_folders=("artwork",))
    bench, questions = _read("mme", root)
    assert len(questions) == 8 and questions[0].prompt == "Is there a dog in the image?" + INSTRUCTION
    assert {q.group for q in questions} == {"existence/0001", "existence/0002", "artwork/10002",
                                            "code_reasoning/0001"}
    answers = {"existence/0001/0": "Yes", "existence/0001/1": "Yes",  # one of two right: acc 50, acc+ 0
               "existence/0002/0": "yes", "existence/0002/1": "No.",  # both: 100 + 100
               "artwork/10002/0": "no", "artwork/10002/1": "yes",
               "code_reasoning/0001/0": "n", "code_reasoning/0001/1": "Yes, it is 4"}
    m = bench.score(questions, answers).metrics
    assert m["existence.acc"] == 75.0 and m["existence.acc_plus"] == 50.0 and m["existence.score"] == 125.0
    assert m["artwork.score"] == 0.0 and m["code_reasoning.score"] == 200.0
    assert m["perception"] == 125.0 and m["cognition"] == 200.0
    del answers["existence/0002/1"]  # an image with one question unanswered is left out and counted
    m = bench.score(questions, answers).metrics
    assert m["existence.score"] == 50.0 and m["incomplete_pairs"] == 1
    assert [mme_read(p) for p in ("Yes.", "y", "x", "Nope", "It is")] == ["yes", "yes", "other", "no", "other"]
    picked = subset(questions, 3, seed=1)
    assert len(picked) == 4 and len({q.group for q in picked}) == 2  # whole pairs


def _mmbench_rows():
    q = {"question": "Which animal is it?", "hint": "", "category": "attribute"}
    rotations = [("cat", "dog", "fish", "bird", "B"), ("dog", "fish", "bird", "cat", "A"),
                 ("fish", "bird", "cat", "dog", "D"), ("bird", "cat", "dog", "fish", "C")]
    rows = [q | {"index": k * 1_000_000, "A": a, "B": b, "C": c, "D": d, "answer": ans}
            for k, (a, b, c, d, ans) in enumerate(rotations)]
    r = {"question": "Which colour?", "hint": "Look closely.", "category": "color"}
    return rows + [r | {"index": 1, "A": "red", "B": "green", "answer": "A"},
                   r | {"index": 1_000_001, "A": "green", "B": "red", "answer": "B"}]


def test_mmbench_circular_evaluation(tmp_path):
    bench, questions = _read("mmbench-en-dev", bf.mmbench(tmp_path, _mmbench_rows()))
    assert [q.group for q in questions] == ["0", "0", "0", "0", "1", "1"]
    assert questions[4].prompt == ("Look closely. Which colour? There are several options:\nA. red\nB. green\n"
                                   "Answer with the option's letter from the given choices directly.")
    assert questions[0].image.open().size == (16, 16)
    answers = {"0": "B", "1000000": "A", "2000000": "(D)", "3000000": "A",  # right in 3 of 4 rotations: 0
               "1": "A", "1000001": "It is red"}  # the option's text read as its letter
    s = bench.score(questions, answers)
    assert s.metrics["accuracy"] == 50.0 and s.metrics["copies"] == 3.0
    assert s.metrics["attribute.accuracy"] == 0.0 and s.metrics["color.accuracy"] == 100.0
    assert s.verdicts["1000001"] == {"correct": True, "read": "B", "how": "can_infer"}


def test_mmbench_image_cells_that_name_another_row(tmp_path):
    """VLMEvalKit's TSVs: an image cell of at most 64 characters is the index of the row holding the image — another
    question's (57 → 12), not the question's own index; an empty cell is the main question's; a dangling one named."""
    red, blue = bf.png_base64((200, 10, 10)), bf.png_base64((10, 10, 200))
    base = {"question": "Which colour?", "A": "red", "B": "blue", "answer": "A", "category": "color"}
    rows = [base | {"index": 12, "image": red}, base | {"index": 57, "image": blue},
            base | {"index": 58, "image": "12"}, base | {"index": 1_000_057, "image": " "}]
    _, questions = _read("mmbench-en-dev", bf.mmbench(tmp_path, rows))
    assert [q.image.data for q in questions] == [red, blue, red, blue]
    rows[2]["image"] = "99"
    with pytest.raises(BenchmarkFileError, match=r"line 4: no image for index 58 \(image cell '99'\)"):
        _read("mmbench-en-dev", bf.mmbench(tmp_path / "bad", rows))


def test_mmbench_answer_reading_rules():
    assert can_infer_option("B") == "B" and can_infer_option("The answer is (C).") == "C"
    assert can_infer_option("A dog") == "A"  # a lone capital A in a short answer is the option
    assert can_infer_option("A dog is in the picture") is None  # ... in a longer one it may be the article
    assert can_infer_option("B or C") is None
    choices = {"A": "cat", "B": "dog", "C": "fish", "D": "bird"}
    assert mmbench_read("Option B is correct, not C", choices) == ("C", "mcq_extract")  # the later end form wins
    assert extract_mcq_answer("the answer is D because", list("ABCD")) == "D"
    assert extract_mcq_answer("", list("ABCD")) == "" and mmbench_read("no idea", choices) == (None, "none")


def test_easy_vqa_reads_a_sample_corpus_and_scores_by_type(tmp_path):
    folder = tmp_path / "easy-vqa"
    folder.mkdir()
    rows = [("q1", "yes"), ("q2", "red"), ("q3", "circle"), ("q4", "no")]
    (folder / "eval_easyvqa.jsonl").write_text("".join(json.dumps(
        {"id": i, "image": f"{i}.png", "answer": a,
         "conversations": [{"from": "human", "value": "<image>\nWhat is it?"}]}) + "\n" for i, a in rows))
    for i, _ in rows:
        bf.image(folder / "images" / f"{i}.png")
    bench, questions = _read("easy-vqa", tmp_path)
    assert questions[0].prompt == "What is it?" + INSTRUCTION
    assert [q.qid for q in bench.limited(questions, 3)] == ["q2", "q3", "q1"]  # the types in turn
    m = bench.score(questions, {"q1": "Yes", "q2": "It is red.", "q3": "square", "q4": "maybe"}).metrics
    assert m["accuracy"] == 0.5 and m["exact_match"] == 0.25 and m["yes/no.accuracy"] == 0.5
    assert m["unanswered"] == 1


def test_malformed_or_missing_files_are_named_with_where_they_are_published(tmp_path):
    with pytest.raises(BenchmarkFileError, match=r"coco_pope_.*no split file found.*AoiDragon/POPE"):
        _read("pope", tmp_path)
    bf.pope(tmp_path, {"random": POPE_ROWS["random"]})
    path = tmp_path / "pope" / "coco_pope_random.json"
    path.write_text(path.read_text() + "{not json\n")
    with pytest.raises(BenchmarkFileError, match=r"coco_pope_random.json: line 3 is not JSON"):
        _read("pope", tmp_path)
    path.write_text(json.dumps({"question_id": 1, "image": "x.jpg", "text": "Dog?", "label": "maybe"}) + "\n")
    with pytest.raises(BenchmarkFileError, match=r"line 1: label 'maybe' is neither yes nor no"):
        _read("pope", tmp_path)
    bf.vqav2(tmp_path, [(1, 1, "Q?", ["a"] * 10, "other")])
    (tmp_path / "vqav2" / "v2_mscoco_val2014_annotations.json").unlink()
    with pytest.raises(BenchmarkFileError, match=r"v2_mscoco_val2014_annotations.json: not found.*visualqa.org"):
        _read("vqav2", tmp_path)
    with pytest.raises(BenchmarkFileError, match=r"mme/MME_Benchmark_release_version|mme/existence"):
        _read("mme", tmp_path)
    with pytest.raises(BenchmarkFileError, match="pass --benchmarks DIR"):
        locate(BENCHMARKS["gqa"], None)


def test_a_question_whose_image_is_missing_is_counted_not_dropped(tmp_path):
    bench, questions = _read("pope", bf.pope(tmp_path, POPE_ROWS))
    (tmp_path / "coco/val2014/COCO_val2014_000000000003.jpg").unlink()
    present, missing = split_missing(questions)
    assert [q.qid for q in missing] == ["random/1", "random/2"] and len(present) == 4


def test_limit_picks_the_same_questions_for_every_checkpoint(tmp_path):
    bench, questions = _read("pope", bf.pope(tmp_path, POPE_ROWS))
    first = [q.qid for q in bench.limited(questions, 3, seed=0)]
    assert first == [q.qid for q in bench.limited(list(questions), 3, seed=0)] and len(first) == 3
    assert any([q.qid for q in bench.limited(questions, 3, seed=s)] != first for s in range(1, 5))


def test_score_command_on_hand_made_predictions(tmp_path, capsys):
    from sweeps.cli import main

    root = bf.pope(tmp_path / "bench", POPE_ROWS)
    preds = bf.predictions(tmp_path / "preds.jsonl", POPE_ANSWERS)
    assert main(["score", "--benchmark", "pope", "--predictions", str(preds), "--benchmarks", str(root),
                 "--out", str(tmp_path / "score.json")]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["metrics"]["f1"] == pytest.approx(0.4) and printed["without_prediction"] == 0  # mean of 0.8 and 0
    assert json.loads((tmp_path / "score.json").read_text()) == printed
    # LLaVA's answer files carry the text under "text"; a question id the benchmark lacks is refused by name
    (tmp_path / "llava.jsonl").write_text(json.dumps({"question_id": "random/1", "text": "No"}) + "\n")
    assert read_predictions(tmp_path / "llava.jsonl") == {"random/1": "No"}
    bench, questions = _read("pope", root)
    with pytest.raises(ValueError, match=r"not questions of pope \(e.g. \['7'\]\); its ids look like"):
        score_predictions(bench, questions, {"7": "yes"})
    (tmp_path / "bad.jsonl").write_text('{"question_id": 1}\n')
    assert main(["score", "--benchmark", "pope", "--predictions", str(tmp_path / "bad.jsonl"),
                 "--benchmark-files", f"pope={root / 'pope'}", "--benchmark-images",
                 f"pope={root / 'coco/val2014'}"]) == 2
    assert "line 1 needs 'question_id' and 'prediction'" in capsys.readouterr().err


def test_an_evaluation_task_refuses_questions_other_than_the_planned_ones(tmp_path, monkeypatch):
    """A Ray task re-reads its benchmark on its own node: paths are made absolute as the driver sees them, and a task
    that reads another protocol (here: an image missing on its node) fails naming it instead of answering others."""
    import dataclasses

    from sweeps.evaluation import EvaluationTaskError, SweepEvalConfig, answer_shard
    from vlm_core.base.hashing import json_digest
    from vlm_core.evaluation.benchmark_eval import prepare

    root = bf.pope(tmp_path / "bench", POPE_ROWS)
    monkeypatch.chdir(tmp_path)
    cfg = SweepEvalConfig(["pope"], root="bench")
    assert cfg.root == str(root.resolve())
    bcfg = cfg.benchmark_config()
    planned = json_digest(prepare(bcfg)[0].protocol(bcfg.controls), 12)
    (root / "coco/val2014/COCO_val2014_000000000003.jpg").unlink()  # gone on "this node"
    with pytest.raises(EvaluationTaskError, match=f"driver planned {planned}; are the benchmark files"):
        answer_shard(str(tmp_path / "no-checkpoint"), dataclasses.asdict(bcfg), "pope", 0, 1,
                     str(tmp_path / "a.jsonl"), planned)


def test_an_answers_file_skips_only_a_torn_last_line(tmp_path):
    from vlm_core.base.errors import DataError
    from vlm_core.evaluation.benchmark_eval import read_answers

    good = json.dumps({"condition": "image", "question_id": "random/1", "prediction": "no"})
    path = tmp_path / "answers.jsonl"
    path.write_text(good + '\n{"condition": "zeros", "question_id": "ran')  # killed mid-write
    assert read_answers(path) == {"image": {"random/1": "no"}}
    for bad in ('{"condition": "image"}', "not json"):
        path.write_text(f"{bad}\n{good}\n")
        with pytest.raises(DataError, match=f"{path}: line 1 is not an answer"):
            read_answers(path)
