"""Multiple-choice benchmarks: ScienceQA-IMG (the option letter) and MMBench dev-en (circular evaluation).

- **ScienceQA-IMG test** — lmms-eval ``tasks/scienceqa/utils.py``: ``sqa_doc_to_text`` (default format:
  ``Context: {hint}\\n`` when there is a hint, the question, the options as ``A. …`` lines, then "Answer with the
  option's letter from the given choices directly.") and ``sqa_process_results`` (right when the stripped output is
  the letter, in any case, or starts with an upper-case letter and a period and that letter is the answer).
- **MMBench dev-en** — lmms-eval ``mmbench_en_dev_static`` (``tasks/mmbench/en_utils.py`` ``mmbench_doc_to_text``;
  ``mmbench_evals.py`` ``MMBench_Evaluator.eval_sub_data`` / ``eval_result`` with ``eval_method="static"``): a row
  with ``index`` ≥ 1,000,000 is a copy of question ``index % 1,000,000`` with its options rotated; a question
  scores 1 only when every copy is answered right. Each answer is read first as lmms-eval's evaluator does without
  GPT (``can_infer``: a lone option letter, or the one option whose text the answer contains; a wrong reading fails
  the question at once), then, for answers that gave no reading, by ``_task_utils/mcq_extract.py``
  (``extract_mcq_answer``). Nothing calls a remote API. ``accuracy`` is lmms-eval's ``overall_acc × 100``.
"""

from __future__ import annotations

import csv
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from .base import BENCHMARKS, Benchmark, InlineImage, Question, Scored, load_json, need, rate

SQA_FILE = "problems.json"
SQA_INSTRUCTION = "Answer with the option's letter from the given choices directly."
LETTERS = "ABCDEFGH"


def sqa_prompt(hint: str, question: str, choices: Sequence[str]) -> str:
    options = "\n".join(f"{LETTERS[i]}. {c}" for i, c in enumerate(choices))
    context = f"Context: {hint}\n" if hint else ""
    return f"{context}{question}\n{options}\n{SQA_INSTRUCTION}"


def read_scienceqa(bench: Benchmark, folder: Path, images: Path) -> list[Question]:
    """ScienceQA's ``problems.json`` (problem id → ``question``, ``choices``, ``answer`` index, ``hint``, ``image``,
    ``split``): the test problems with an image (ScienceQA-IMG test, 2,017 questions); images
    ``images/test/{pid}/image.png``."""
    path = folder / SQA_FILE
    data = load_json(bench, path)
    if not isinstance(data, Mapping):
        raise bench.missing_file(path, "not an object of problem id → problem")
    out = []
    for pid, p in data.items():
        need(bench, path, f"problem {pid}", p, ("question", "choices", "answer", "split", "image"))
        if p["split"] != "test" or not p["image"]:
            continue
        if not 0 <= int(p["answer"]) < len(p["choices"]):
            raise bench.missing_file(path, f"problem {pid}: answer {p['answer']} is not an index of its choices")
        out.append(Question(str(pid), sqa_prompt(p.get("hint") or "", p["question"], p["choices"]),
                            LETTERS[int(p["answer"])], images / "test" / str(pid) / str(p["image"])))
    return out


def sqa_correct(prediction: str, letter: str) -> bool:
    """lmms-eval ``sqa_process_results``."""
    pred = prediction.strip()
    if pred.lower() == letter.lower():
        return True
    return len(pred) >= 2 and pred[0].isupper() and pred[1] == "." and pred[0].lower() == letter.lower()


def score_scienceqa(questions: Sequence[Question], predictions: Mapping[str, str]) -> Scored:
    verdicts = {q.qid: {"correct": sqa_correct(predictions[q.qid], q.target), "read": predictions[q.qid].strip()}
                for q in questions if q.qid in predictions}
    return Scored({"accuracy": rate([v["correct"] for v in verdicts.values()]), "n": len(verdicts)}, verdicts)


BENCHMARKS.add("scienceqa-img", Benchmark(
    name="scienceqa-img", reproduces="lmms-eval scienceqa_img (tasks/scienceqa/utils.py sqa_doc_to_text, "
                                     "sqa_process_results)",
    publisher="https://github.com/lupantech/ScienceQA (data/scienceqa/problems.json, images/test/)",
    files="scienceqa", file_names=(SQA_FILE,), images="scienceqa/images", read=read_scienceqa,
    score=score_scienceqa, max_new_tokens=16, headline="accuracy", instruction=SQA_INSTRUCTION))


MMBENCH_FILES = ("mmbench_dev_20230712.tsv", "MMBench_DEV_EN.tsv")
MMBENCH_OPTIONS_HEADER = "There are several options:"
COPY_OFFSET = 1_000_000


def _present(value: str | None) -> bool:
    """A TSV cell pandas would not read as missing (empty) and that is not the text "nan"."""
    return value is not None and value != "" and value != "nan"


def mmbench_prompt(row: Mapping[str, str]) -> str:
    """lmms-eval ``mmbench_doc_to_text`` with ``create_options_prompt``: ``{hint} {question} {options}`` (no hint:
    ``{question} {options}``), options "There are several options:" then ``A. …`` lines, then the instruction."""
    options = "\n".join([MMBENCH_OPTIONS_HEADER] + [f"{k}. {row[k]}" for k in "ABCDE" if _present(row.get(k))])
    query = f"{row['question']} {options}"
    if _present(row.get("hint")):
        query = f"{row['hint']} {query}"
    return f"{query}\n{SQA_INSTRUCTION}"


def read_mmbench(bench: Benchmark, folder: Path, images: Path) -> list[Question]:
    """MMBench's dev TSV (``index``, ``question``, ``hint``, ``A``–``D``, ``answer``, ``category``, base64
    ``image``); a row with ``index`` ≥ 1,000,000 is a rotated copy of question ``index % 1,000,000``. An image cell
    of 64 characters or fewer is no image but the ``index`` of the row that holds it (VLMEvalKit's TSVs, as its
    ``ImageBaseDataset`` resolves them); an empty one takes question ``index % 1,000,000``'s."""
    path = next((folder / f for f in MMBENCH_FILES if (folder / f).is_file()), folder / MMBENCH_FILES[0])
    if not path.is_file():
        raise bench.missing_file(path)
    csv.field_size_limit(sys.maxsize)  # base64 images are longer than csv's default field limit
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    def number(text: str, n: int, what: str) -> int:
        try:
            return int(float(text))
        except ValueError:
            raise bench.missing_file(path, f"line {n}: {what} {text!r} is not a number") from None

    indices = []
    for n, row in enumerate(rows, 2):
        need(bench, path, f"line {n}", row, ("index", "question", "A", "B", "answer", "image"))
        indices.append(number(row["index"], n, "index"))
    images_by_index = {i: row["image"] for i, row in zip(indices, rows) if len(row["image"]) > 64}
    out = []
    for n, (index, row) in enumerate(zip(indices, rows), 2):
        cell = row["image"].strip()
        if len(cell) > 64:
            image = cell
        elif cell:  # the index of the row holding the image
            image = images_by_index.get(number(cell, n, "image reference"))
        else:
            image = images_by_index.get(index % COPY_OFFSET)
        if image is None:
            raise bench.missing_file(path, f"line {n}: no image for index {index} (image cell {cell!r})")
        choices = {k: row[k] for k in "ABCD" if _present(row.get(k))}
        out.append(Question(str(index), mmbench_prompt(row), row["answer"].strip(), InlineImage(image),
                            group=str(index % COPY_OFFSET),
                            meta={"category": row.get("category", ""), "choices": choices,
                                  "copy": index >= COPY_OFFSET}))
    return out


def can_infer_option(answer: str, choices: str = "ABCDE") -> str | None:
    """``MMBench_Evaluator.can_infer_option``: a lone option letter among the answer's words (unless an "A" in a
    longer answer may be the article), else a letter in exactly one of the forms ``A.`` ``A,`` ``A:`` ``A)``
    ``A).`` ``(A)`` ``(A).`` ``:A`` ``:A,`` ``:A.`` ``:A)`` ``:A).``."""
    words = answer.split()
    if sum(c in words for c in choices) == 1 and not ("A" in words and len(words) > 3):
        return next(c for c in choices if c in words)
    for prefix, suffix in (("", "."), ("", ","), ("", ":"), ("", ")"), ("", ")."), ("(", ")"), ("(", ")."),
                           (":", ""), (":", ","), (":", "."), (":", ")"), (":", ").")):
        found = [c for c in choices if prefix + c + suffix in words]
        if len(found) == 1:
            return found[0]
    return None


def can_infer_text(answer: str, choices: Mapping[str, str]) -> str | None:
    """``MMBench_Evaluator.can_infer_text``: the one option whose (lower-cased) text the answer contains."""
    found = [k for k, text in choices.items() if str(text).lower() in answer.lower()]
    return found[0] if len(found) == 1 else None


_PRIORITY = {"start": 10, "end": 9, "phrase": 7, "parentheses": 6, "period": 5, "colon": 4, "right_paren": 3,
             "space": 2, "fallback": 0}
_ANSWER_PHRASES = ("the answer is", "answer is", "the correct answer is", "correct answer is", "the best answer is",
                   "best answer is", "the correct option is", "correct option is", "the best option is",
                   "best option is", "the choice is", "choice is", "the correct choice is", "correct choice is",
                   "i choose", "i select", "i pick", "my answer is", "my choice is")


def extract_mcq_answer(response: str, choices: Sequence[str]) -> str:
    """lmms-eval ``_task_utils/mcq_extract.py`` ``extract_mcq_answer`` (English answer phrases): every form a
    letter appears in — ``(A)``, ``A.``, ``A:``, ``A)``, ``A `` , after an answer phrase, standalone at the start
    or the end, else anywhere — is a candidate; the highest-priority form wins, the later position within a form.
    ``""`` when none."""
    if not response or not response.strip():
        return ""
    text = response.strip()
    for ch in ",.!?;:'\"":
        text = text.strip(ch)
    text = f" {text} "
    found: list[tuple[str, int, str]] = []
    for form, pattern in (("parentheses", "({})"), ("period", "{}."), ("colon", "{}:"), ("right_paren", "{})"),
                          ("space", "{} ")):
        found += [(c, text.rfind(pattern.format(c)), form) for c in choices if pattern.format(c) in text]
    lower = text.lower()
    for phrase in _ANSWER_PHRASES:
        at = lower.find(phrase)
        if at != -1:
            found += [(c, text.find(c, at + len(phrase)), "phrase") for c in choices
                      if text.find(c, at + len(phrase)) != -1]
    bare = text.strip()
    found += [(c, 0, "start") for c in choices if bare.startswith(c) and (len(bare) == 1 or not bare[1].isalpha())]
    found += [(c, len(text) - 1, "end") for c in choices
              if bare.endswith(c) and (len(bare) == 1 or not bare[-2].isalpha())]
    if not found:
        found = [(c, text.rfind(c), "fallback") for c in choices if c in text]
    if not found:
        return ""
    return max(found, key=lambda f: (_PRIORITY[f[2]], f[1]))[0]


def mmbench_read(prediction: str, choices: Mapping[str, str]) -> tuple[str | None, str]:
    """An answer's option letter and how it was read: ``can_infer`` (option, then text), else the static
    extraction; ``(None, "none")`` when neither reads a letter."""
    pred = prediction.strip()
    letter = can_infer_option(pred) or can_infer_text(pred, dict(choices))
    if letter:
        return letter, "can_infer"
    letter = extract_mcq_answer(pred, sorted(choices))
    return (letter, "mcq_extract") if letter else (None, "none")


def score_mmbench(questions: Sequence[Question], predictions: Mapping[str, str]) -> Scored:
    """``eval_sub_data`` per question with all its copies answered; a question with a copy unanswered is left out
    and counted (``incomplete``)."""
    verdicts = {}
    for q in questions:
        if q.qid in predictions:
            letter, how = mmbench_read(predictions[q.qid], q.meta["choices"])
            verdicts[q.qid] = {"correct": letter == q.target, "read": letter, "how": how}
    groups: dict[str, list[Question]] = {}
    for q in questions:
        groups.setdefault(q.group, []).append(q)
    hits: dict[str, bool] = {}
    incomplete = 0
    for key, qs in groups.items():
        if all(q.qid in verdicts for q in qs):
            hits[key] = all(verdicts[q.qid]["correct"] for q in qs)
        else:
            incomplete += any(q.qid in verdicts for q in qs)
    metrics = {"accuracy": 100.0 * rate(list(hits.values())), "n": len(hits), "incomplete": incomplete,
               "copies": rate([len(groups[k]) for k in hits]) if hits else 0.0}
    main = {q.group: q.meta.get("category", "") for q in questions if not q.meta.get("copy")}
    for cat in sorted({c for c in main.values() if c}):
        metrics[f"{cat}.accuracy"] = 100.0 * rate([hits[k] for k, c in main.items() if c == cat and k in hits])
    return Scored(metrics, verdicts)


BENCHMARKS.add("mmbench-en-dev", Benchmark(
    name="mmbench-en-dev", reproduces="lmms-eval mmbench_en_dev_static (tasks/mmbench/en_utils.py, mmbench_evals.py "
                                      "eval_sub_data with static_only, _task_utils/mcq_extract.py)",
    publisher="https://github.com/open-compass/MMBench (mmbench_dev_20230712.tsv)",
    files="mmbench", file_names=MMBENCH_FILES, images="", read=read_mmbench, score=score_mmbench,
    max_new_tokens=32, headline="accuracy", instruction=SQA_INSTRUCTION,
    notes="lmms-eval's budget is 1024 tokens; 32 here: the answer is an option letter"))
