"""The sample corpus's POPE set: POPE's construction (positives an image holds; as many negatives drawn at random,
by popularity and by co-occurrence) on the hand-written objects of its photographs, read by the POPE benchmark.

    .venv/bin/python -m pytest -q tests/test_pope_local.py
"""

from __future__ import annotations

import json
import random
from collections import Counter

from data_pipeline.pope_local import OBJECTS, SPLITS, negatives, photo_images, write_pope_set
from tests import benchmark_files as bf
from vlm_core.evaluation.benchmarks import BENCHMARKS, locate


def _corpus(tmp_path):
    rows = [{"id": f"photo-{name}", "image": f"coco/train2017/{k:012d}.jpg", "conversations": []}
            for k, name in enumerate(OBJECTS)] + [{"id": "easyvqa-1", "image": "x.jpg", "conversations": []}]
    (tmp_path / "sharegpt4v_sample.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    for r in rows[:-1]:
        bf.image(tmp_path / "images" / r["image"])
    return tmp_path


def test_negatives_follow_popes_three_strategies():
    vocabulary = ["cat", "dog", "person", "tripod", "camera", "flag"]
    popularity = Counter({"person": 5, "dog": 3, "cat": 2, "camera": 1, "tripod": 1, "flag": 1})
    cooccurrence = {o: Counter() for o in vocabulary}
    cooccurrence["person"].update({"camera": 4, "tripod": 2, "dog": 1})
    held = ("person",)
    rng = random.Random(0)
    assert negatives("popular", held, 2, vocabulary, popularity, cooccurrence, rng) == ["dog", "cat"]
    assert negatives("adversarial", held, 2, vocabulary, popularity, cooccurrence, rng) == ["camera", "tripod"]
    drawn = negatives("random", held, 3, vocabulary, popularity, cooccurrence, rng)
    assert len(set(drawn)) == 3 and "person" not in drawn


def test_the_pope_set_is_balanced_and_read_by_the_pope_benchmark(tmp_path):
    corpus = _corpus(tmp_path)
    counts = write_pope_set(corpus, photo_images(corpus / "sharegpt4v_sample.jsonl"))
    positives = sum(min(len(o), 3) for o in OBJECTS.values())
    assert counts == {s: 2 * positives for s in SPLITS}
    bench = BENCHMARKS["pope"]
    folder, images = locate(bench, None, {"pope": str(corpus / "pope")}, {"pope": str(corpus / "images")})
    questions = bench.read(bench, folder, images)
    assert len(questions) == 3 * 2 * positives and all(q.image.is_file() for q in questions)
    by_image: dict = {}
    for q in questions:
        by_image.setdefault((q.meta["split"], q.image.name), Counter())[q.target] += 1
        obj = q.prompt.split("Is there a ")[1].split(" in the image?")[0]
        name = list(OBJECTS)[int(q.image.stem)]
        assert (obj in OBJECTS[name]) == (q.target == "yes"), (name, obj, q.target)
    assert all(c["yes"] == c["no"] for c in by_image.values())  # as many negatives as positives, every image
    again = tmp_path / "again"
    again.mkdir()
    _corpus(again)
    write_pope_set(again, photo_images(again / "sharegpt4v_sample.jsonl"))
    assert all((again / "pope" / f"coco_pope_{s}.json").read_text() == (corpus / "pope" / f"coco_pope_{s}.json")
               .read_text() for s in SPLITS)  # deterministic
