"""Open-answer benchmarks: VQAv2 and TextVQA (soft accuracy over ten human answers), GQA and xGQA (exact match).

- **VQAv2 val** — lmms-eval ``tasks/vqav2/utils.py`` (``vqav2_process_results``): prediction and each human answer
  have newlines / tabs turned to spaces and are stripped, then go through ``EvalAIAnswerProcessor``'s
  ``process_punctuation`` and ``process_digit_article`` only (not its full ``__call__``: no lower-casing before
  the punctuation rule, commas and "?" not dropped first); for each answer left out, ``min(1, matches among the
  other nine / 3)``, averaged. ``accuracy`` on lmms-eval's 0–1 scale, and per answer type (yes/no, number, other).
- **TextVQA val** — lmms-eval ``tasks/textvqa/utils.py`` (``textvqa_process_results``): the full
  ``EvalAIAnswerProcessor`` (``answers.vqa_normalise``) on both sides, the same leave-one-out; the question
  capitalised (``str.capitalize``), OCR tokens off (lmms-eval's default).
- **GQA testdev-balanced** — lmms-eval ``tasks/gqa/gqa.yaml``: the ``exact_match`` metric with ``ignore_case`` and
  ``ignore_punctuation`` (``api/metrics.py`` ``exact_match_hf_evaluate``) on the stripped prediction
  (``api/task.py`` strips generations): lower-cased, every ``string.punctuation`` character deleted, then equal.
- **xGQA Indonesian** — the same GQA rule on xGQA's Indonesian translation of testdev-balanced questions
  (answers stay English) and, side by side, on the same questions' English originals from xGQA's ``en`` file:
  ``accuracy`` (Indonesian), ``en.accuracy`` and ``gap`` (English minus Indonesian) per checkpoint. The short-answer
  instruction stays English (GQA's prompt, as a model would be asked with lmms-eval); not an lmms-eval task.
"""

from __future__ import annotations

import statistics
import string
from collections.abc import Mapping, Sequence
from pathlib import Path

from ..answers import SHORT_ANSWER_INSTRUCTION, process_digit_article, process_punctuation, vqa_normalise
from .base import BENCHMARKS, Benchmark, Question, Scored, load_json, need, rate, subset

VQAV2_QUESTIONS = "v2_OpenEnded_mscoco_val2014_questions.json"
VQAV2_ANSWERS = "v2_mscoco_val2014_annotations.json"
TEXTVQA_FILE = "TextVQA_0.5.1_val.json"
GQA_FILE = "testdev_balanced_questions.json"
XGQA_FILE = "testdev_balanced_questions_{lang}.json"


def short_answer_prompt(question: str) -> str:
    """lmms-eval's ``{question}{post_prompt}`` with the default post prompt (VQAv2, GQA, TextVQA)."""
    return f"{question}\n{SHORT_ANSWER_INSTRUCTION}"


def vqav2_normalise(text: str) -> str:
    """lmms-eval ``vqav2_process_results``' normalisation (see the module docstring)."""
    return process_digit_article(process_punctuation(text.replace("\n", " ").replace("\t", " ").strip()))


def soft_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """The VQA accuracy of normalised strings: per human answer left out, ``min(1, matches among the rest / 3)``,
    averaged (a prediction given by 2 of 10 humans: (2 × 1/3 + 8 × 2/3) / 10 = 0.6)."""
    return statistics.mean(min(1.0, sum(a == prediction for j, a in enumerate(answers) if j != i) / 3)
                           for i in range(len(answers)))


def read_vqav2(bench: Benchmark, folder: Path, images: Path) -> list[Question]:
    """The official questions and annotations JSON; images ``COCO_val2014_{image_id:012d}.jpg``."""
    qpath, apath = folder / VQAV2_QUESTIONS, folder / VQAV2_ANSWERS
    questions, annotations = load_json(bench, qpath), load_json(bench, apath)
    need(bench, qpath, "the file", questions, ("questions",))
    need(bench, apath, "the file", annotations, ("annotations",))
    by_id = {}
    for i, a in enumerate(annotations["annotations"]):
        need(bench, apath, f"annotations[{i}]", a, ("question_id", "answers"))
        by_id[a["question_id"]] = a
    out = []
    for i, q in enumerate(questions["questions"]):
        need(bench, qpath, f"questions[{i}]", q, ("question_id", "image_id", "question"))
        if q["question_id"] not in by_id:
            raise bench.missing_file(apath, f"no annotation for question_id {q['question_id']} of {qpath.name}")
        ann = by_id[q["question_id"]]
        answers = [a["answer"] if isinstance(a, Mapping) else str(a) for a in ann["answers"]]
        out.append(Question(str(q["question_id"]), short_answer_prompt(q["question"]), answers,
                            images / f"COCO_val2014_{int(q['image_id']):012d}.jpg",
                            meta={"answer_type": ann.get("answer_type", "")}))
    return out


def _soft_scorer(normalise):
    def score(questions: Sequence[Question], predictions: Mapping[str, str]) -> Scored:
        verdicts = {}
        for q in questions:
            if q.qid in predictions:
                read = normalise(predictions[q.qid])
                acc = soft_accuracy(read, [normalise(a) for a in q.target])
                verdicts[q.qid] = {"correct": acc, "read": read}
        metrics = {"accuracy": rate([v["correct"] for v in verdicts.values()]), "n": len(verdicts)}
        kinds = sorted({q.meta.get("answer_type", "") for q in questions} - {""})
        for kind in kinds:
            metrics[f"{kind}.accuracy"] = rate([verdicts[q.qid]["correct"] for q in questions
                                                if q.qid in verdicts and q.meta.get("answer_type") == kind])
        return Scored(metrics, verdicts)
    return score


score_vqav2 = _soft_scorer(vqav2_normalise)
score_textvqa = _soft_scorer(vqa_normalise)


BENCHMARKS.add("vqav2", Benchmark(
    name="vqav2", reproduces="lmms-eval vqav2_val (tasks/vqav2/utils.py vqav2_process_results)",
    publisher="https://visualqa.org/download.html (v2 val questions + annotations), images: COCO val2014",
    files="vqav2", file_names=(VQAV2_QUESTIONS, VQAV2_ANSWERS), images="coco/val2014", read=read_vqav2,
    score=score_vqav2, max_new_tokens=16, headline="accuracy", instruction=SHORT_ANSWER_INSTRUCTION))


def read_textvqa(bench: Benchmark, folder: Path, images: Path) -> list[Question]:
    """``TextVQA_0.5.1_val.json`` (``data``: ``question_id``, ``question``, ``image_id``, ``answers``); images
    ``train_images/{image_id}.jpg`` (TextVQA's val images ship in its train folder)."""
    path = folder / TEXTVQA_FILE
    data = load_json(bench, path)
    need(bench, path, "the file", data, ("data",))
    out = []
    for i, q in enumerate(data["data"]):
        need(bench, path, f"data[{i}]", q, ("question_id", "question", "image_id", "answers"))
        out.append(Question(str(q["question_id"]), short_answer_prompt(str(q["question"]).capitalize()),
                            [str(a) for a in q["answers"]], images / f"{q['image_id']}.jpg"))
    return out


BENCHMARKS.add("textvqa", Benchmark(
    name="textvqa", reproduces="lmms-eval textvqa_val (tasks/textvqa/utils.py textvqa_doc_to_text, "
                               "textvqa_process_results)",
    publisher="https://textvqa.org/dataset (TextVQA 0.5.1 val JSON + train_val_images)",
    files="textvqa", file_names=(TEXTVQA_FILE,), images="textvqa/train_images", read=read_textvqa,
    score=score_textvqa, max_new_tokens=32, headline="accuracy", instruction=SHORT_ANSWER_INSTRUCTION,
    notes="lmms-eval sets no token budget (the model's default, 1024 for llava_hf); 32 here: a longer answer cannot "
          "match a short human answer after normalisation"))


_NO_PUNCTUATION = str.maketrans("", "", string.punctuation)


def gqa_normalise(text: str) -> str:
    """lmms-eval's ``exact_match`` with ``ignore_case`` and ``ignore_punctuation`` on a stripped generation."""
    return text.strip().lower().translate(_NO_PUNCTUATION)


def _gqa_questions(bench: Benchmark, path: Path, images: Path, prefix: str = "", lang: str = "") -> list[Question]:
    data = load_json(bench, path)
    if not isinstance(data, Mapping):
        raise bench.missing_file(path, "not an object of question id → question (GQA's questions format)")
    out = []
    for qid, q in data.items():
        need(bench, path, f"question {qid}", q, ("imageId", "question", "answer"))
        out.append(Question(f"{prefix}{qid}", short_answer_prompt(str(q["question"])), str(q["answer"]),
                            images / f"{q['imageId']}.jpg", meta={"lang": lang} if lang else {}))
    return out


def read_gqa(bench: Benchmark, folder: Path, images: Path) -> list[Question]:
    """``testdev_balanced_questions.json`` (question id → ``imageId``, ``question``, ``answer``, ...); images
    ``{imageId}.jpg``."""
    return _gqa_questions(bench, folder / GQA_FILE, images)


def score_gqa(questions: Sequence[Question], predictions: Mapping[str, str]) -> Scored:
    verdicts = {q.qid: {"correct": gqa_normalise(predictions[q.qid]) == gqa_normalise(q.target),
                        "read": gqa_normalise(predictions[q.qid])} for q in questions if q.qid in predictions}
    return Scored({"accuracy": rate([v["correct"] for v in verdicts.values()]), "n": len(verdicts)}, verdicts)


BENCHMARKS.add("gqa", Benchmark(
    name="gqa", reproduces="lmms-eval gqa (tasks/gqa/gqa.yaml: exact_match, ignore_case, ignore_punctuation; "
                           "api/metrics.py exact_match_hf_evaluate)",
    publisher="https://cs.stanford.edu/people/dorarad/gqa/download.html (questions1.2 testdev_balanced, images)",
    files="gqa", file_names=(GQA_FILE,), images="gqa/images", read=read_gqa, score=score_gqa, max_new_tokens=16,
    headline="accuracy", instruction=SHORT_ANSWER_INSTRUCTION))


def read_xgqa(bench: Benchmark, folder: Path, images: Path) -> list[Question]:
    """xGQA's ``testdev_balanced_questions_id.json`` and ``..._en.json`` (GQA's format; ``data/zero_shot/`` of
    adapter-hub/xGQA); question ids ``id/QID`` and ``en/QID``; images GQA's."""
    ind = _gqa_questions(bench, folder / XGQA_FILE.format(lang="id"), images, "id/", "id")
    eng = _gqa_questions(bench, folder / XGQA_FILE.format(lang="en"), images, "en/", "en")
    english = {q.qid[3:] for q in eng}
    lost = [q.qid[3:] for q in ind if q.qid[3:] not in english]
    if lost:
        raise bench.missing_file(folder / XGQA_FILE.format(lang="en"),
                                 f"{len(lost)} Indonesian questions have no English original (e.g. {lost[0]})")
    # an Indonesian question and its English original are kept (and subset) together
    return [Question(q.qid, q.prompt, q.target, q.image, group=q.qid[3:], meta=q.meta) for q in ind + eng]


def pick_xgqa(questions: Sequence[Question], limit: int | None, seed: int = 0) -> list[Question]:
    """``--limit N``: N Indonesian questions, each with its English original (2N asked)."""
    return subset(questions, None if limit is None else 2 * limit, seed)


def score_xgqa(questions: Sequence[Question], predictions: Mapping[str, str]) -> Scored:
    scored = score_gqa(questions, predictions)
    by_lang = {lang: rate([scored.verdicts[q.qid]["correct"] for q in questions
                           if q.qid in scored.verdicts and q.meta["lang"] == lang]) for lang in ("id", "en")}
    metrics = {"accuracy": by_lang["id"], "en.accuracy": by_lang["en"], "gap": by_lang["en"] - by_lang["id"],
               "n": sum(q.meta["lang"] == "id" for q in questions if q.qid in scored.verdicts)}
    return Scored(metrics, scored.verdicts)


BENCHMARKS.add("xgqa-id", Benchmark(
    name="xgqa-id", reproduces="GQA's rule (lmms-eval gqa) on xGQA (Pfeiffer et al. 2022) Indonesian and English",
    publisher="https://github.com/adapter-hub/xGQA (data/zero_shot/), images: GQA's",
    files="xgqa", file_names=(XGQA_FILE.format(lang="id"), XGQA_FILE.format(lang="en")), images="gqa/images",
    read=read_xgqa, score=score_xgqa, max_new_tokens=16, headline="accuracy", beside=("en.accuracy", "gap"),
    instruction=SHORT_ANSWER_INSTRUCTION, pick=pick_xgqa,
    notes="not an lmms-eval task; the instruction stays English as in GQA's prompt"))
