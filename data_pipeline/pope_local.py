"""A small POPE of the sample corpus's photographs: yes/no object-existence questions in POPE's published format.

POPE (Li et al. 2023, "Evaluating Object Hallucination in Large Vision-Language Models"; AoiDragon/POPE) asks
"Is there a {object} in the image?" about objects an image holds (yes) and an equal number it does not (no), the
negatives drawn three ways, one file each:

- ``random``: any object of the vocabulary the image does not hold;
- ``popular``: the objects the most images hold, that this one does not;
- ``adversarial``: the objects that co-occur most often with this image's objects, that it does not hold.

Here the objects of each photograph are written by hand (:data:`OBJECTS`: the sample corpus's scikit-image and
scikit-learn photos), up to three positives an image, as many negatives; the photos are also in the training data
(as most of POPE's COCO val2014 images are in train2017, which ShareGPT4V's COCO rows use). The files are
``OUT/pope/coco_pope_{adversarial,popular,random}.json``, one object a line (``question_id``, ``image`` relative to
``OUT/images``, ``text``, ``label``): what ``vlm-sweep eval --benchmark pope --benchmark-files pope=OUT/pope
--benchmark-images pope=OUT/images`` reads.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

OBJECTS: dict[str, tuple[str, ...]] = {
    "astronaut": ("person", "flag", "helmet"),
    "camera": ("person", "camera", "tripod"),
    "chelsea": ("cat",),
    "coffee": ("cup", "spoon", "table"),
    "coins": ("coin",),
    "horse": ("horse",),
    "moon": ("moon",),
    "page": ("page",),
    "rocket": ("rocket", "tower"),
    "hubble_deep_field": ("galaxy",),
    "clock": ("clock",),
    "logo": ("snake",),
    "china": ("temple", "tree"),
    "flower": ("flower", "leaf"),
}
"""The objects each photograph holds (photo name as in ``data_pipeline.sample_corpus``: ``photo-NAME`` records)."""
SPLITS = ("adversarial", "popular", "random")
QUESTION = "Is there a {} in the image?"
POSITIVES_PER_IMAGE = 3


def photo_images(train_file: Path) -> dict[str, str]:
    """Photo name → its image path (relative to the corpus's ``images/``), from the corpus's training records."""
    out = {}
    for line in Path(train_file).read_text(encoding="utf-8").splitlines():
        rec = json.loads(line)
        name = rec["id"].removeprefix("photo-")
        if rec["id"].startswith("photo-") and name in OBJECTS:
            out[name] = rec["image"]
    return out


def negatives(split: str, held: tuple[str, ...], n: int, vocabulary: list[str], popularity: Counter,
              cooccurrence: dict[str, Counter], rng: random.Random) -> list[str]:
    """``n`` objects the image does not hold, drawn as POPE's ``split`` draws them (ties broken by name)."""
    absent = [o for o in vocabulary if o not in held]
    if split == "random":
        return rng.sample(absent, min(n, len(absent)))
    if split == "popular":
        ranked = sorted(absent, key=lambda o: (-popularity[o], o))
    else:
        together = Counter()
        for o in held:
            together.update(cooccurrence[o])
        ranked = sorted(absent, key=lambda o: (-together[o], -popularity[o], o))
    return ranked[:n]


def write_pope_set(corpus: str | Path, images: dict[str, str], seed: int = 0) -> dict[str, int]:
    """Write ``corpus/pope/coco_pope_{split}.json`` about the photographs ``images`` names (photo name → image path
    under ``corpus/images``: :func:`photo_images`); returns questions per split."""
    corpus = Path(corpus)
    held = {name: OBJECTS[name] for name in sorted(images)}
    vocabulary = sorted({o for objs in held.values() for o in objs})
    popularity = Counter(o for objs in held.values() for o in objs)
    cooccurrence: dict[str, Counter] = {o: Counter() for o in vocabulary}
    for objs in held.values():
        for o in objs:
            cooccurrence[o].update(x for x in objs if x != o)
    folder = corpus / "pope"
    folder.mkdir(parents=True, exist_ok=True)
    counts = {}
    for split in SPLITS:
        rng = random.Random(f"{seed}-{split}")
        rows = []
        for name, objs in held.items():
            positives = list(objs[:POSITIVES_PER_IMAGE])
            for obj, label in [(o, "yes") for o in positives] + [
                    (o, "no") for o in negatives(split, objs, len(positives), vocabulary, popularity, cooccurrence,
                                                 rng)]:
                rows.append({"question_id": len(rows) + 1, "image": images[name], "text": QUESTION.format(obj),
                             "label": label})
        (folder / f"coco_pope_{split}.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
        counts[split] = len(rows)
    return counts
