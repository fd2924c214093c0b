"""Tiny benchmark folders in each benchmark's published layout, images drawn on the fly (tests only)."""

from __future__ import annotations

import base64
import csv
import io
import json
from pathlib import Path

from PIL import Image


def image(path: Path, colour=(200, 30, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (32, 24), colour).save(path)
    return path


def pope(root: Path, rows: dict[str, list[tuple[int, str, str, str]]]) -> Path:
    """``root/pope/coco_pope_{split}.json`` (question_id, image, text, label) and the COCO images they name."""
    for split, items in rows.items():
        path = root / "pope" / f"coco_pope_{split}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps({"question_id": qid, "image": img, "text": text, "label": label}) + "\n"
                                for qid, img, text, label in items))
        for _, img, _, _ in items:
            image(root / "coco" / "val2014" / img)
    return root


def vqav2(root: Path, items: list[tuple[int, int, str, list[str], str]]) -> Path:
    """(question_id, image_id, question, ten answers, answer_type) → the official questions + annotations JSON."""
    folder = root / "vqav2"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "v2_OpenEnded_mscoco_val2014_questions.json").write_text(json.dumps({"questions": [
        {"question_id": q, "image_id": i, "question": text} for q, i, text, _, _ in items]}))
    (folder / "v2_mscoco_val2014_annotations.json").write_text(json.dumps({"annotations": [
        {"question_id": q, "image_id": i, "answer_type": kind,
         "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": j + 1} for j, a in enumerate(answers)]}
        for q, i, _, answers, kind in items]}))
    for _, i, _, _, _ in items:
        image(root / "coco" / "val2014" / f"COCO_val2014_{i:012d}.jpg")
    return root


def gqa(root: Path, items: dict[str, tuple[str, str, str]], name="gqa/testdev_balanced_questions.json") -> Path:
    """question id → (imageId, question, answer) in GQA's questions format."""
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({qid: {"imageId": img, "question": q, "answer": a, "fullAnswer": a, "types": {}}
                                for qid, (img, q, a) in items.items()}))
    for img, _, _ in items.values():
        image(root / "gqa" / "images" / f"{img}.jpg")
    return root


def textvqa(root: Path, items: list[tuple[int, str, str, list[str]]]) -> Path:
    folder = root / "textvqa"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "TextVQA_0.5.1_val.json").write_text(json.dumps({"dataset_type": "val", "data": [
        {"question_id": q, "question": text, "image_id": img, "answers": answers, "ocr_tokens": []}
        for q, img, text, answers in items]}))
    for _, img, _, _ in items:
        image(root / "textvqa" / "train_images" / f"{img}.jpg")
    return root


def scienceqa(root: Path, problems: dict[str, dict]) -> Path:
    folder = root / "scienceqa"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "problems.json").write_text(json.dumps(problems))
    for pid, p in problems.items():
        if p.get("image") and p.get("split") == "test":
            image(folder / "images" / "test" / pid / p["image"])
    return root


def mme(root: Path, categories: dict[str, dict[str, list[tuple[str, str]]]], split_folders=()) -> Path:
    """category → image stem → its (question, Yes|No) lines; every MME category folder is made (the reader
    needs all 14), and the ones in ``split_folders`` use the ``images/`` + ``questions_answers_YN/`` layout."""
    from vlm_core.evaluation.benchmarks.yes_no import MME_COGNITION, MME_PERCEPTION, MME_RELEASE

    base = root / "mme" / MME_RELEASE
    for category in MME_PERCEPTION + MME_COGNITION:
        cat = base / category
        cat.mkdir(parents=True, exist_ok=True)
        qa_dir, img_dir = (cat / "questions_answers_YN", cat / "images") if category in split_folders else (cat, cat)
        for stem, lines in categories.get(category, {}).items():
            qa_dir.mkdir(parents=True, exist_ok=True)
            (qa_dir / f"{stem}.txt").write_text("".join(f"{q}\t{a}\n" for q, a in lines))
            image(img_dir / f"{stem}.jpg")
    return root


def png_base64(colour=(10, 200, 10)) -> str:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), colour).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def mmbench(root: Path, rows: list[dict]) -> Path:
    """MMBench's dev TSV; rows without an ``image`` get a small PNG (copies may leave it out, as the TSV does)."""
    folder = root / "mmbench"
    folder.mkdir(parents=True, exist_ok=True)
    fields = ["index", "question", "hint", "A", "B", "C", "D", "answer", "category", "image", "source",
              "l2-category", "split"]
    with open(folder / "mmbench_dev_20230712.tsv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fields, delimiter="\t")
        writer.writeheader()
        for r in rows:
            writer.writerow({k: r.get(k, "") for k in fields} | {"image": r.get("image", png_base64())})
    return root


def predictions(path: Path, answers: dict[str, str]) -> Path:
    path.write_text("".join(json.dumps({"question_id": k, "prediction": v}) + "\n" for k, v in answers.items()))
    return path
