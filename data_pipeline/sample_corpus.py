"""The embedded default corpus: ShareGPT4V-format conversations built only from packaged assets.

* easy-vqa (synthetic shapes with questions and one-word answers): multi-turn conversations, most under
  ``coco/train2017/`` and some under ``sam/`` so that the COCO filter has work to do; the ``<image>`` marker
  is put before or after the first question, as in ShareGPT4V;
* real photos from scikit-image and scikit-learn with captions written here (``coco/train2017/``);
* a held-out evaluation file from easy-vqa's *test* split: one question per record, equal shares of yes/no,
  colour and shape questions (``coco/val2017/``).

Output::

    OUT/sharegpt4v_sample.jsonl     training source (ShareGPT4V records)
    OUT/eval_easyvqa.jsonl          held-out questions with their answers
    OUT/images/...                  the images, at the paths the records name
    OUT/pope/coco_pope_*.json       yes/no object questions on the photos, in POPE's format (``pope_local``)

    vlm-sweep data sample-corpus --out corpus
"""

from __future__ import annotations

import json
import random
from collections import defaultdict
from pathlib import Path

from PIL import Image

from vlm_core.config import IMAGE_MARKER
from vlm_core.evaluation.benchmarks.easy_vqa import EVAL_FILE, question_type

from .pope_local import photo_images, write_pope_set

TRAIN_FILE = "sharegpt4v_sample.jsonl"

# scikit-image photos that ship inside the package, with captions written for this corpus.
PHOTOS: dict[str, str] = {
    "astronaut": "An astronaut in a white spacesuit poses in front of an American flag, holding a helmet.",
    "camera": "A black-and-white photo of a man with a camera on a tripod in a park.",
    "chelsea": "A tabby cat with orange and grey fur sits and looks to the side.",
    "coffee": "A cup of coffee with latte art on a saucer, next to a spoon, on a wooden table.",
    "coins": "Rows of old coins laid out on a dark background, photographed in greyscale.",
    "horse": "A black silhouette of a horse standing on a white background.",
    "moon": "A greyscale close-up of the cratered surface of the moon.",
    "page": "A scanned page of printed text, slightly uneven in lighting.",
    "rocket": "A rocket on its launch pad under a blue sky, next to a service tower.",
    "text": "Handwritten and printed words on a grey background.",
    "hubble_deep_field": "A deep field image of space full of distant galaxies of many colours.",
    "immunohistochemistry": "A microscope image of tissue stained brown and blue.",
    "clock": "A greyscale photo of a wall clock with a round face and hands.",
    "logo": "The scikit-image logo: a stylised snake in blue and yellow.",
}
# scikit-learn's two sample photos (load_sample_images), with captions written here.
SKLEARN_PHOTOS: dict[str, str] = {
    "china.jpg": "A Chinese temple with a curved tiled roof among green trees under a clear sky.",
    "flower.jpg": "A close-up of a pink flower with a yellow centre against dark leaves.",
}
PHOTO_QUESTIONS = ("Describe the image briefly.", "What do you see in this picture?", "What is shown here?")


def easy_vqa_by_image(split: str) -> tuple[dict[int, list[tuple[str, str]]], dict[int, str]]:
    """``{image_id: [(question, answer), ...]}`` and ``{image_id: png path}`` for an easy-vqa split."""
    import easy_vqa

    questions = easy_vqa.get_train_questions() if split == "train" else easy_vqa.get_test_questions()
    paths = easy_vqa.get_train_image_paths() if split == "train" else easy_vqa.get_test_image_paths()
    qa: dict[int, list[tuple[str, str]]] = defaultdict(list)
    for text, ans, image_id in zip(*questions):
        qa[image_id].append((text[:1].upper() + text[1:], ans))
    return qa, paths


def _save_jpeg(src: Image.Image, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    src.convert("RGB").save(dst, format="JPEG", quality=95)


def _first_turn(question: str, rng: random.Random) -> str:
    return f"{IMAGE_MARKER}\n{question}" if rng.random() < 0.7 else f"{question}\n{IMAGE_MARKER}"


def eval_questions(qa: dict[int, list[tuple[str, str]]], n: int, rng: random.Random) -> list[tuple[int, str, str]]:
    """``n`` held-out (image id, question, answer), equal shares of yes/no, colour and shape questions.

    easy-vqa's test split is 3/4 yes/no, where a text-only model already scores about half; colour and shape
    questions are what need the image, so the file holds as many of them as of yes/no (remainder: yes/no)."""
    by_type: dict[str, list[tuple[int, str, str]]] = defaultdict(list)
    for image_id in sorted(qa):
        for q, a in qa[image_id]:
            by_type[question_type(a)].append((image_id, q, a))
    types = sorted(by_type, key=lambda t: t != "yes/no")  # yes/no first: it takes the remainder
    chosen = []
    for k, t in enumerate(types):
        share = n // len(types) + (n % len(types) if k == 0 else 0)
        chosen += rng.sample(by_type[t], min(share, len(by_type[t])))
    return sorted(chosen)


def write_sample_corpus(out: str | Path, n_train_images: int = 600, n_eval_questions: int = 300,
                        non_coco_fraction: float = 0.1, turns_per_image: int = 3, seed: int = 0) -> dict:
    """Write the corpus; returns counts. Deterministic for a given ``seed``."""
    out = Path(out)
    images = out / "images"
    rng = random.Random(seed)
    records: list[dict] = []

    qa, paths = easy_vqa_by_image("train")
    chosen = sorted(rng.sample(sorted(qa), min(n_train_images, len(qa))))
    n_non_coco = 0
    for image_id in chosen:
        pairs = qa[image_id][:]
        rng.shuffle(pairs)
        pairs = pairs[:turns_per_image]
        non_coco = rng.random() < non_coco_fraction
        rel = f"sam/images/sa_{image_id:08d}.jpg" if non_coco else f"coco/train2017/{image_id:012d}.jpg"
        n_non_coco += non_coco
        with Image.open(paths[image_id]) as img:
            _save_jpeg(img, images / rel)
        conv = []
        for k, (q, a) in enumerate(pairs):
            conv.append({"from": "human", "value": _first_turn(q, rng) if k == 0 else q})
            conv.append({"from": "gpt", "value": a})
        records.append({"id": f"easyvqa-{image_id}", "image": rel, "conversations": conv})

    from skimage import data as skdata

    n_photos = 0
    for k, (name, caption) in enumerate(PHOTOS.items()):
        try:
            arr = getattr(skdata, name)()
        except Exception:  # noqa: BLE001 - a photo missing from this scikit-image build is skipped, counted
            continue
        rel = f"coco/train2017/{900_000_000 + k:012d}.jpg"
        _save_jpeg(Image.fromarray(arr), images / rel)
        records.append({"id": f"photo-{name}", "image": rel,
                        "conversations": [{"from": "human", "value": _first_turn(rng.choice(PHOTO_QUESTIONS), rng)},
                                          {"from": "gpt", "value": caption}]})
        n_photos += 1

    from sklearn.datasets import load_sample_images

    bunch = load_sample_images()
    for k, (fname, arr) in enumerate(zip(bunch.filenames, bunch.images)):
        name = Path(fname).name
        if name not in SKLEARN_PHOTOS:
            continue
        rel = f"coco/train2017/{900_000_100 + k:012d}.jpg"
        _save_jpeg(Image.fromarray(arr), images / rel)
        records.append({"id": f"photo-{Path(name).stem}", "image": rel,
                        "conversations": [{"from": "human", "value": _first_turn(rng.choice(PHOTO_QUESTIONS), rng)},
                                          {"from": "gpt", "value": SKLEARN_PHOTOS[name]}]})
        n_photos += 1

    qa_test, paths_test = easy_vqa_by_image("test")
    eval_rows = []
    for image_id, q, a in eval_questions(qa_test, n_eval_questions, rng):
        rel = f"coco/val2017/{image_id:012d}.jpg"
        if not (images / rel).exists():
            with Image.open(paths_test[image_id]) as img:
                _save_jpeg(img, images / rel)
        eval_rows.append({"id": f"easyvqa-test-{image_id}-{len(eval_rows)}", "image": rel, "answer": a,
                          "conversations": [{"from": "human", "value": f"{IMAGE_MARKER}\n{q}"},
                                            {"from": "gpt", "value": a}]})

    out.mkdir(parents=True, exist_ok=True)
    for name, rows in ((TRAIN_FILE, records), (EVAL_FILE, eval_rows)):
        with (out / name).open("w", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
    pope = write_pope_set(out, photo_images(out / TRAIN_FILE), seed=seed)
    return {"records": len(records), "easy_vqa": len(chosen), "photos": n_photos, "non_coco": n_non_coco,
            "pope_questions": pope,
            "eval_questions": len(eval_rows), "train_file": str(out / TRAIN_FILE),
            "eval_file": str(out / EVAL_FILE), "image_root": str(images)}


def write_small_variants(corpus: str | Path, out: str | Path, names: tuple[str, ...] = ("10kRandom", "20kUmap"),
                         val_fraction: float = 0.2) -> Path:
    """The corpus's COCO rows as the named variants in ``data build``'s layout (``out/<name>/train-00000.parquet``,
    ``val-00000.parquet``), without Ray Data, UMAP or sampling: the same rows in each, for benchmarks that time the
    sweep and not the data."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from vlm_core.data.dataset import read_records, split_records

    recs = [r for r in read_records(Path(corpus) / TRAIN_FILE) if r["image"].startswith("coco/")]
    for name in names:
        (Path(out) / name).mkdir(parents=True, exist_ok=True)
        for split, rows in zip(("train", "val"), split_records(recs, val_fraction)):
            pq.write_table(pa.table({"id": [r["id"] for r in rows], "image": [r["image"] for r in rows],
                                     "conversations": [json.dumps(r["conversations"]) for r in rows]}),
                           Path(out) / name / f"{split}-00000.parquet")
    return Path(out)
