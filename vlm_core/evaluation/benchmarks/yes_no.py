"""Yes/no benchmarks: POPE (object hallucination) and MME (perception and cognition, two questions an image).

POPE is read under two rules, both reported and named:

- ``llava`` — LLaVA's ``llava/eval/eval_pope.py`` (``eval_pope``): keep the first sentence (text before the first
  ``.``), drop commas, split on spaces; any of the words ``No`` / ``not`` / ``no`` reads as no, anything else as
  yes. Accuracy, precision, recall, F1 over yes as the positive class; ``yes_ratio`` = share of predictions read
  as yes. The script scores each split on its own (``adversarial.f1``, ...); papers in LLaVA-1.5's line report the
  mean of the three splits' F1, which is the headline here (``f1``, ``accuracy``, ... : the mean over the splits
  read of each split's value; ``pooled.*`` pools the questions instead). It reads "Yes." as yes.
- ``lmms_eval`` — lmms-eval's ``tasks/pope/utils.py`` (``pope_process_results`` and the ``pope_aggregate_*``):
  right only when ``prediction.lower().strip()`` *is* the label, so "Yes." scores 0; precision and recall count
  only literal yes / no; its ``pope_yes_ratio`` is the share of *ground-truth* yes (kept as ``lmms_eval.gt_yes_ratio``,
  with ``lmms_eval.yes_ratio`` the share of literal yes predictions beside it).

Per split (adversarial / popular / random: ``adversarial.f1``, ...); lmms-eval's own numbers (``lmms_eval.*``) pool
the splits read, as its ``pope`` task pools its 9,000 questions. A split file that is absent is named in a warning
and ``splits`` counts those read (3 for the published set).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

from ..answers import SHORT_ANSWER_INSTRUCTION
from .base import BENCHMARKS, Benchmark, Question, Scored, load_jsonl, need, rate

log = logging.getLogger(__name__)

POPE_SPLITS = ("adversarial", "popular", "random")
POPE_FILE = "coco_pope_{split}.json"


def pope_question_text(question: str) -> str:
    """lmms-eval ``pope_doc_to_text``: the stripped question, then the short-answer instruction after a newline."""
    return f"{question.strip()}\n{SHORT_ANSWER_INSTRUCTION}"


def read_pope(bench: Benchmark, folder: Path, images: Path) -> list[Question]:
    """``coco_pope_{adversarial,popular,random}.json`` (one object a line: ``question_id``, ``image``, ``text``,
    ``label``); every split file present is read, at least one must be. Question ids: ``SPLIT/question_id``."""
    paths = {s: folder / POPE_FILE.format(split=s) for s in POPE_SPLITS}
    if not any(p.is_file() for p in paths.values()):
        raise bench.missing_file(folder / POPE_FILE.format(split="{adversarial,popular,random}"), "no split file found")
    if absent := [s for s, p in paths.items() if not p.is_file()]:
        log.warning("pope: no %s under %s; the headline is the mean over the other splits only",
                    ", ".join(POPE_FILE.format(split=s) for s in absent), folder)
    out = []
    for split, path in paths.items():
        if not path.is_file():
            continue
        for n, row in load_jsonl(bench, path):
            need(bench, path, f"line {n}", row, ("question_id", "image", "text", "label"))
            label = str(row["label"]).lower().strip()
            if label not in ("yes", "no"):
                raise bench.missing_file(path, f"line {n}: label {row['label']!r} is neither yes nor no")
            out.append(Question(f"{split}/{row['question_id']}", pope_question_text(str(row["text"])), label,
                                images / str(row["image"]), meta={"split": split}))
    return out


def llava_pope_read(prediction: str) -> str:
    """LLaVA ``eval_pope``: the first sentence, commas dropped, split on spaces; "No" / "not" / "no" → no, else yes."""
    text = prediction.split(".")[0] if "." in prediction else prediction
    words = text.replace(",", "").split(" ")
    return "no" if ("No" in words or "not" in words or "no" in words) else "yes"


def lmms_eval_pope_read(prediction: str) -> str:
    """lmms-eval ``pope_process_results``: the lower-cased, stripped prediction (right only if it is the label)."""
    return prediction.lower().strip()


def _pope_metrics(reads: Sequence[str], labels: Sequence[str]) -> dict[str, float]:
    """Accuracy, precision, recall, F1 with yes as the positive class (a reading that is neither yes nor no is a
    wrong answer and neither a positive nor a negative prediction, as lmms-eval's aggregates count it), and the
    share of yes readings. A zero denominator gives 0, as lmms-eval (LLaVA's script would divide by zero)."""
    tp = sum(r == "yes" and g == "yes" for r, g in zip(reads, labels))
    fp = sum(r == "yes" and g == "no" for r, g in zip(reads, labels))
    fn = sum(r == "no" and g == "yes" for r, g in zip(reads, labels))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    return {"accuracy": rate([r == g for r, g in zip(reads, labels)]), "precision": precision, "recall": recall,
            "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
            "yes_ratio": rate([r == "yes" for r in reads])}


def score_pope(questions: Sequence[Question], predictions: Mapping[str, str]) -> Scored:
    asked = [q for q in questions if q.qid in predictions]
    metrics: dict[str, float] = {}
    splits = sorted({q.meta["split"] for q in asked})
    for split in [None, *splits]:
        part = [q for q in asked if split is None or q.meta["split"] == split]
        labels = [q.target for q in part]
        prefix = f"{split}." if split else "pooled."
        llava = _pope_metrics([llava_pope_read(predictions[q.qid]) for q in part], labels)
        lmms = _pope_metrics([lmms_eval_pope_read(predictions[q.qid]) for q in part], labels)
        lmms["gt_yes_ratio"] = rate([g == "yes" for g in labels])
        lmms["unanswered"] = rate([lmms_eval_pope_read(predictions[q.qid]) not in ("yes", "no") for q in part])
        metrics |= {f"{prefix}{k}": v for k, v in llava.items()}
        metrics |= {f"{split + '.' if split else ''}lmms_eval.{k}": v for k, v in lmms.items()}
    for k in ("accuracy", "precision", "recall", "f1", "yes_ratio"):  # the headline: the splits' mean
        metrics[k] = sum(metrics[f"{s}.{k}"] for s in splits) / len(splits) if splits else 0.0
    metrics["splits"] = len(splits)
    metrics["n"] = len(asked)
    verdicts = {}
    for q in asked:
        read = llava_pope_read(predictions[q.qid])
        verdicts[q.qid] = {"correct": read == q.target, "read": read,
                           "lmms_eval_correct": lmms_eval_pope_read(predictions[q.qid]) == q.target}
    return Scored(metrics, verdicts)


BENCHMARKS.add("pope", Benchmark(
    name="pope", reproduces="lmms-eval pope (tasks/pope/utils.py pope_process_results, pope_aggregate_*); LLaVA "
                            "llava/eval/eval_pope.py eval_pope",
    publisher="https://github.com/AoiDragon/POPE (output/coco/), images: COCO val2014 (cocodataset.org)",
    files="pope", file_names=tuple(POPE_FILE.format(split=s) for s in POPE_SPLITS), images="coco/val2014",
    read=read_pope, score=score_pope, max_new_tokens=128, headline="f1", beside=("yes_ratio",),
    instruction=SHORT_ANSWER_INSTRUCTION))


MME_PERCEPTION = ("existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark", "artwork",
                  "OCR")
MME_COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")
MME_RELEASE = "MME_Benchmark_release_version"
MME_YES_NO = " Please answer yes or no."
IMAGE_SUFFIXES = (".jpg", ".png", ".jpeg", ".JPG", ".PNG")


def mme_question_text(question: str) -> str:
    """lmms-eval ``mme_doc_to_text`` with its default post prompt: " Please answer yes or no." replaced by the
    short-answer instruction after a newline."""
    return f"{question.strip().replace(MME_YES_NO, '')}\n{SHORT_ANSWER_INSTRUCTION}"


def read_mme(bench: Benchmark, folder: Path, images: Path) -> list[Question]:
    """MME's release folder: one folder a category; each image's two ``question<TAB>Yes|No`` lines in a ``.txt`` of
    the same name, beside the image or in ``questions_answers_YN/`` with the images in ``images/``."""
    root = folder / MME_RELEASE if (folder / MME_RELEASE).is_dir() else folder
    out = []
    for category in MME_PERCEPTION + MME_COGNITION:
        cat = root / category
        if not cat.is_dir():
            raise bench.missing_file(cat, "category folder not found")
        qa_dir, img_dir = ((cat / "questions_answers_YN", cat / "images") if (cat / "questions_answers_YN").is_dir()
                           else (cat, cat))
        for txt in sorted(qa_dir.glob("*.txt")):
            lines = [ln for ln in txt.read_text(encoding="utf-8").splitlines() if ln.strip()]
            image = next((img_dir / (txt.stem + s) for s in IMAGE_SUFFIXES if (img_dir / (txt.stem + s)).is_file()),
                         img_dir / (txt.stem + ".jpg"))
            for i, line in enumerate(lines):
                parts = line.split("\t")
                answer = parts[-1].lower().strip().replace(".", "") if len(parts) >= 2 else ""
                if answer not in ("yes", "no"):
                    raise bench.missing_file(txt, f"line {i + 1} is not 'question<TAB>Yes|No'")
                out.append(Question(f"{category}/{txt.stem}/{i}", mme_question_text(parts[0]), answer, image,
                                    group=f"{category}/{txt.stem}", meta={"category": category}))
    return out


def mme_read(prediction: str) -> str:
    """lmms-eval ``parse_pred_ans`` (from Otter): lower-cased, stripped, periods dropped; "yes" / "no" as is, "y" /
    "n" alone, else yes / no when it occurs in the first four characters (yes first), else "other"."""
    text = prediction.lower().strip().replace(".", "")
    if text in ("yes", "no"):
        return text
    if len(text) == 1:
        return {"y": "yes", "n": "no"}.get(text, "other")
    return "yes" if "yes" in text[:4] else "no" if "no" in text[:4] else "other"


def score_mme(questions: Sequence[Question], predictions: Mapping[str, str]) -> Scored:
    """lmms-eval ``mme_aggregate_results``: per image, acc = mean × 100 and acc+ = 100 when both are right; a
    category's score is the mean over its images of acc + acc+; perception and cognition sum their categories.
    An image with a question unanswered is left out and counted (``incomplete_pairs``)."""
    verdicts = {q.qid: {"correct": mme_read(predictions[q.qid]) == q.target, "read": mme_read(predictions[q.qid])}
                for q in questions if q.qid in predictions}
    pairs: dict[str, list[Question]] = {}
    for q in questions:
        pairs.setdefault(q.group, []).append(q)
    by_cat: dict[str, list[tuple[float, float]]] = {}
    incomplete = 0
    for qs in pairs.values():
        if not all(q.qid in verdicts for q in qs):
            incomplete += any(q.qid in verdicts for q in qs)
            continue
        right = [verdicts[q.qid]["correct"] for q in qs]
        by_cat.setdefault(qs[0].meta["category"], []).append((sum(right) / len(right) * 100.0, 100.0 * all(right)))
    metrics: dict[str, float] = {}
    for cat, scores in by_cat.items():
        metrics[f"{cat}.acc"] = sum(a for a, _ in scores) / len(scores)
        metrics[f"{cat}.acc_plus"] = sum(p for _, p in scores) / len(scores)
        metrics[f"{cat}.score"] = metrics[f"{cat}.acc"] + metrics[f"{cat}.acc_plus"]
    metrics["perception"] = sum(metrics.get(f"{c}.score", 0.0) for c in MME_PERCEPTION)
    metrics["cognition"] = sum(metrics.get(f"{c}.score", 0.0) for c in MME_COGNITION)
    metrics["n"], metrics["incomplete_pairs"] = len(verdicts), incomplete
    return Scored(metrics, verdicts)


BENCHMARKS.add("mme", Benchmark(
    name="mme", reproduces="lmms-eval mme (tasks/mme/utils.py mme_doc_to_text, parse_pred_ans, mme_aggregate_results)",
    publisher="https://github.com/BradyFU/Awesome-Multimodal-Large-Language-Models (MME, on request)",
    files="mme", file_names=(MME_RELEASE,), images="", read=read_mme, score=score_mme, max_new_tokens=16,
    headline="perception", beside=("cognition",), instruction=SHORT_ANSWER_INSTRUCTION))
