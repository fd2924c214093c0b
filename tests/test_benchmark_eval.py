"""``vlm-sweep eval CHECKPOINT --benchmark``: a tiny checkpoint of every kind (linear, MLP, dense DCI / SCI / STI,
LoRA, the CNN encoder) answers a POPE-format fixture under the image and both controls; the answers are the ones
the model gives each question with its own image (or, shuffled, another question's, never its own); an interrupted
evaluation resumes to the same answers; a missing image is counted and listed.

    .venv/bin/python -m pytest -q tests/test_benchmark_eval.py
"""

from __future__ import annotations

import json

import pytest
import torch

from tests import benchmark_files as bf
from tests.test_benchmarks import POPE_ROWS
from vlm_core.config import VisionConfig, VLMConfig
from vlm_core.config.train import LoraSpec
from vlm_core.data.images import open_rgb
from vlm_core.evaluation.benchmark_eval import (
    BenchmarkEvalConfig,
    evaluate_checkpoint_on_benchmarks,
    prepare,
    read_answers,
)
from vlm_core.evaluation.inference import answer, build_prompt_batch
from vlm_core.model.lora import add_adapters
from vlm_core.model.vlm import VisionLanguageModel
from vlm_core.training.checkpoint import load_vlm, save_checkpoint

KINDS = ["linear", "mlp2x_gelu", "dense_connector", "dense_sci", "dense_sti", "lora", "cnn"]


def _checkpoint(tiny_cfg, kind, path):
    cfg = VLMConfig.from_dict(tiny_cfg.to_dict())
    if kind == "cnn":
        cfg.vision = VisionConfig(encoder="efficientnet_lite0", source="packaged", feature_layer=-1)
        cfg.projector.name = "mlp2x_gelu"
    elif kind != "lora":
        cfg.projector.name = kind
    model = VisionLanguageModel.build(cfg)
    if kind == "lora":
        add_adapters(model, LoraSpec(rank=4, alpha=8, dropout=0.0), seed=0)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # away from the initialisation, so that the answers depend on the image
        for p in model.projector.parameters():
            p.add_(0.5 * torch.randn(p.shape, generator=g))
    return save_checkpoint(model, path, stage=2, step=1, epoch=1)


@pytest.fixture(scope="module")
def bench_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    bf.pope(root, POPE_ROWS)
    for n, colour in ((1, (250, 10, 10)), (2, (10, 250, 10)), (3, (10, 10, 250))):  # three different pictures
        bf.image(root / "coco" / "val2014" / f"COCO_val2014_{n:012d}.jpg", colour)
    return root


def _pope_prompt_images(root, questions, which=(0, 1, 2, 3, 4, 5)):
    return [open_rgb(questions[j].image) for j in which]


OTHER = (5, 5, 1, 1, 3, 3)
"""Worked by hand for POPE_ROWS, whose questions 0..5 are on images 1 1 2 2 3 3: the nearest earlier question,
cyclically, on another image — 0 → 5 (image 3); 1 → 5 (question 0 shares its image); 2 → 1; 3 → 1; 4 → 3; 5 → 3."""


@pytest.mark.parametrize("kind", KINDS)
def test_every_checkpoint_kind_answers_a_benchmark_with_controls(kind, tiny_cfg, bench_root, tmp_path, capsys):
    from sweeps.cli import main

    ckpt = _checkpoint(tiny_cfg, kind, tmp_path / "ckpt")
    out = tmp_path / "eval"
    # POPE's own budget (128 new tokens) for the linear projector; 16 for the other kinds, which keeps this test's
    # time down (a random-weight model never ends its turn) and asks the same of their splice and generation
    budget = 128 if kind == "linear" else 16
    assert main(["eval", str(ckpt), "--benchmark", "pope", "--benchmarks", str(bench_root), "--batch-size", "4",
                 "--out", str(out), "--benchmark-budgets", f"pope={budget}"]) == 0
    printed = json.loads(capsys.readouterr().out)
    result = json.loads((out / "eval.json").read_text())
    pope = result["benchmarks"]["pope"]
    assert printed["pope"]["image"] == pope["metrics"]["image"] and pope["asked"] == 6
    assert set(pope["metrics"]) == {"image", "zeros", "shuffled"} and set(pope["image_gain"]) == {"zeros", "shuffled"}
    for control in ("zeros", "shuffled"):
        assert pope["image_gain"][control]["f1"] == pytest.approx(
            pope["metrics"]["image"]["f1"] - pope["metrics"][control]["f1"])
    assert result["protocols"]["pope"]["max_new_tokens"] == budget
    answers = read_answers(out / pope["answers"].split("/")[-1])
    # the answers are the model's to each question with its own image (batched generation kept each row's image),
    # and under "shuffled" with the nearest earlier question's image that is not its own (never its own image)
    model = load_vlm(ckpt)
    questions = prepare(BenchmarkEvalConfig(["pope"], root=str(bench_root)))[0].questions
    prompts = [q.prompt for q in questions]
    own = answer(model, _pope_prompt_images(bench_root, questions), prompts, max_new_tokens=budget)
    assert all(questions[j].image != q.image for j, q in zip(OTHER, questions))
    previous = answer(model, _pope_prompt_images(bench_root, questions, OTHER), prompts, max_new_tokens=budget)
    assert [answers["image"][q.qid] for q in questions] == own
    assert [answers["shuffled"][q.qid] for q in questions] == previous
    assert len(answers["zeros"]) == 6


def test_an_interrupted_evaluation_resumes_to_the_same_answers(tiny_cfg, bench_root, tmp_path):
    ckpt = _checkpoint(tiny_cfg, "mlp2x_gelu", tmp_path / "ckpt")
    cfg = BenchmarkEvalConfig(["pope"], root=str(bench_root), batch_size=2, budgets={"pope": 16})
    whole = evaluate_checkpoint_on_benchmarks(ckpt, cfg, tmp_path / "whole")
    cut = evaluate_checkpoint_on_benchmarks(ckpt, cfg, tmp_path / "cut", stop_after_batches=4)
    path = tmp_path / "cut" / whole["benchmarks"]["pope"]["answers"].split("/")[-1]
    assert len(path.read_text().splitlines()) == 8  # 4 batches of 2, then stopped
    assert cut["benchmarks"]["pope"]["metrics"]["zeros"]["n"] == 2  # 6 image answers, 2 of the zeros control
    with open(path, "a") as f:
        f.write('{"condition": "zeros", "question_id": "random/')  # a line torn by a kill
    resumed = evaluate_checkpoint_on_benchmarks(ckpt, cfg, tmp_path / "cut")
    lines = [json.loads(ln) for ln in path.read_text().splitlines()]  # the torn line cut, not glued to the next
    assert len(lines) == 18 and len({(r["condition"], r["question_id"]) for r in lines}) == 18  # nothing twice
    assert resumed["benchmarks"]["pope"]["metrics"] == whole["benchmarks"]["pope"]["metrics"]
    assert read_answers(path) == read_answers(tmp_path / "whole" / path.name)


def test_a_missing_image_is_counted_and_listed_and_a_missing_file_fails_before_the_model(tiny_cfg, tmp_path):
    root = bf.pope(tmp_path / "bench", POPE_ROWS)
    (root / "coco/val2014/COCO_val2014_000000000003.jpg").unlink()
    ckpt = _checkpoint(tiny_cfg, "linear", tmp_path / "ckpt")
    result = evaluate_checkpoint_on_benchmarks(ckpt, BenchmarkEvalConfig(["pope"], root=str(root), budgets={"pope": 4}),
                                               tmp_path / "e")
    pope = result["benchmarks"]["pope"]
    assert pope["missing_images"] == {"n": 2, "question_ids": ["random/1", "random/2"]} and pope["asked"] == 4
    with pytest.raises(ValueError, match="gqa/testdev_balanced_questions.json: not found"):
        evaluate_checkpoint_on_benchmarks(tmp_path / "no-such-checkpoint", BenchmarkEvalConfig(
            ["pope", "gqa"], root=str(root)), tmp_path / "e2")


def test_a_budget_other_than_the_references_is_a_protocol_of_its_own(tiny_cfg, bench_root, tmp_path, capsys):
    """``--benchmark-budgets pope=3``: every answer at most 3 new tokens (the model's own first 3 of 128), recorded
    beside the reference's 128 and keyed apart, so answers under the two budgets never mix; bad budgets refused."""
    from sweeps.cli import main
    from vlm_core.base.errors import ConfigError
    from vlm_core.evaluation.benchmarks import budgets_by_name

    ckpt = _checkpoint(tiny_cfg, "linear", tmp_path / "ckpt")
    assert main(["eval", str(ckpt), "--benchmark", "pope", "--benchmarks", str(bench_root), "--out",
                 str(tmp_path / "e"), "--benchmark-budgets", "pope=3"]) == 0
    capsys.readouterr()
    short = json.loads((tmp_path / "e" / "eval.json").read_text())
    reference = evaluate_checkpoint_on_benchmarks(ckpt, BenchmarkEvalConfig(["pope"], root=str(bench_root)),
                                                  tmp_path / "e")
    assert short["protocols"]["pope"]["max_new_tokens"] == 3
    assert short["protocols"]["pope"]["reference_max_new_tokens"] == 128
    assert short["benchmarks"]["pope"]["max_new_tokens"] == 3
    assert short["protocols"]["pope"]["key"] != reference["protocols"]["pope"]["key"]
    model = load_vlm(ckpt)
    questions = prepare(BenchmarkEvalConfig(["pope"], root=str(bench_root)))[0].questions
    cut = answer(model, _pope_prompt_images(bench_root, questions), [q.prompt for q in questions], max_new_tokens=3)
    assert [read_answers(tmp_path / "e" / short["benchmarks"]["pope"]["answers"].split("/")[-1])["image"][q.qid]
            for q in questions] == cut
    for spec, message in (("pope=0", "must be >= 1"), ("pope=x", "NAME=N"), ("popes=3", "unknown benchmark")):
        with pytest.raises(ConfigError, match=message):
            BenchmarkEvalConfig(["pope"], budgets=budgets_by_name(spec, "--benchmark_budgets"))
    with pytest.raises(ConfigError, match="'gqa' is not one of the benchmarks asked"):
        BenchmarkEvalConfig(["pope"], budgets={"gqa": 8})


def test_two_checkpoints_evaluated_into_one_folder_keep_their_own_answers(tiny_cfg, bench_root, tmp_path):
    """``eval runA/final`` then ``eval runB/final`` both default to ``eval/final``: B must answer for itself, not
    resume from A's file (answers are keyed by the checkpoint's weights as well as the protocol)."""
    cfg = BenchmarkEvalConfig(["pope"], root=str(bench_root), budgets={"pope": 4}, controls=[])
    a = evaluate_checkpoint_on_benchmarks(_checkpoint(tiny_cfg, "linear", tmp_path / "a"), cfg, tmp_path / "final")
    b_ckpt = _checkpoint(tiny_cfg, "mlp2x_gelu", tmp_path / "b")
    b = evaluate_checkpoint_on_benchmarks(b_ckpt, cfg, tmp_path / "final")
    assert a["checkpoint_key"] != b["checkpoint_key"]
    assert a["benchmarks"]["pope"]["answers"] != b["benchmarks"]["pope"]["answers"]
    questions = prepare(cfg)[0].questions
    own = answer(load_vlm(b_ckpt), _pope_prompt_images(bench_root, questions), [q.prompt for q in questions],
                 max_new_tokens=4)
    assert [read_answers(tmp_path / "final" / b["benchmarks"]["pope"]["answers"].split("/")[-1])["image"][q.qid]
            for q in questions] == own


def test_each_image_is_encoded_once_for_its_questions_and_the_controls(tiny_cfg, bench_root, tmp_path):
    """POPE_ROWS: six questions on three images, answered with the image, zeroed and shuffled: three images
    encoded in all, and every answer the one a per-batch encoding of the same batches gives."""
    from vlm_core.evaluation.benchmark_eval import CONDITIONS, ImageFeatures, answer_benchmark

    model = load_vlm(_checkpoint(tiny_cfg, "mlp2x_gelu", tmp_path / "ckpt"))
    (prepared,) = prepare(BenchmarkEvalConfig(["pope"], root=str(bench_root), budgets={"pope": 8}))
    seen = []
    real = ImageFeatures.__call__

    def counting(self, questions):
        out = real(self, questions)
        seen.append(self.encoded)
        return out

    ImageFeatures.__call__ = counting
    try:
        answers = answer_benchmark(model, prepared, ["zeros", "shuffled"], 2, tmp_path / "answers.jsonl")
    finally:
        ImageFeatures.__call__ = real
    assert seen[-1] == 3 and len(seen) == 9  # 9 batches of 2, three images encoded once each
    qs = prepared.questions
    for name in ("image", "zeros", "shuffled"):
        cond = CONDITIONS[name]
        for start in range(0, len(qs), 2):
            index = list(range(start, start + 2))
            pixels = model.vision.preprocess([open_rgb(q.image) for q in cond.images(qs, index)])
            batch = build_prompt_batch(model, [qs[i].prompt for i in index])
            gen = model.generate(batch["input_ids"], batch["attention_mask"],
                                 image_features=cond.features(model.image_features(pixels)), max_new_tokens=8)
            batch_answers = [model.tokenizer.decode(row, skip_special_tokens=True).strip() for row in gen]
            assert [answers[name][qs[i].qid] for i in index] == batch_answers, (name, index)
