"""``process_docs`` for ``lmms_eval_pope_local.yaml`` (lmms-eval loads it by path: ``!function
lmms_eval_pope_local.process_docs``): the official POPE file's rows → the fields lmms-eval's POPE functions read.

Official POPE (AoiDragon/POPE ``output/coco/coco_pope_*.json``): ``question_id``, ``image`` (a COCO val2014 file
name), ``text``, ``label``. lmms-eval's ``tasks/pope/utils.py`` reads ``question``, ``answer``, ``question_id`` and
``image`` as a PIL image (``pope_doc_to_visual`` calls ``doc["image"].convert("RGB")``).
"""

from __future__ import annotations

import os

import datasets


def process_docs(dataset: datasets.Dataset) -> datasets.Dataset:
    """Rename ``text`` / ``label`` to ``question`` / ``answer``; ``image`` becomes an image read from
    ``$POPE_IMAGES/<image>`` (or from ``image`` as a path when ``POPE_IMAGES`` is unset)."""
    root = os.environ.get("POPE_IMAGES", "")
    dataset = dataset.rename_columns({"text": "question", "label": "answer"})
    dataset = dataset.map(lambda doc: {"image": os.path.join(root, doc["image"])})
    return dataset.cast_column("image", datasets.Image())
