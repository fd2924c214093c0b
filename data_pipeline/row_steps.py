"""The per-row steps of ``data build``'s streaming pass, as Ray Data UDFs (plain Python, unit-testable): read and
validate a shard of the source, filter by image prefix (and decode each image), translate. A row that fails a step
gets a reason and the step's name (its ``stage`` column) and flows on, so one pass yields both the kept rows and
``rejected.jsonl``.

    >>> from data_pipeline.row_steps import reason_group
    >>> reason_group('image path 12 (x)')
    'image path N'
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from vlm_core.data.images import image_problem, resolve_image

from .records import Shard, read_shard, rows_to_batch
from .translate import TranslateBatch


def read_shards_batch(batch: dict[str, Any]) -> dict[str, list]:
    """``map_batches`` over shard descriptors → validated rows (rejections included, with a reason)."""
    rows = []
    for path, start, end, first in zip(batch["path"], batch["start"], batch["end"], batch["first_line"]):
        rows.extend(read_shard(Shard(str(path), int(start), int(end), int(first))))
    return rows_to_batch(rows)


class FilterBatch:
    """Image-prefix filter and, optionally, an image check; failing rows get a reason (never dropped here)."""

    def __init__(self, prefix: str, check_images: bool, image_root: str):
        self.prefix, self.check, self.root = prefix, check_images, Path(image_root)

    def _image_problem(self, rel: str) -> str | None:
        # decoded in full, as training will: truncated files fail here
        return image_problem(resolve_image(rel, self.root))

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        reasons, stages = list(batch["reason"]), list(batch["stage"])
        for i, image in enumerate(batch["image"]):
            if reasons[i]:
                continue
            if self.prefix and not str(image).startswith(self.prefix):
                reasons[i], stages[i] = f"image path not under {self.prefix!r}", "filter"
            elif self.check and (problem := self._image_problem(str(image))):
                reasons[i], stages[i] = problem, "image"
        batch = dict(batch)
        batch["reason"], batch["stage"] = reasons, stages
        return batch


def filter_batch(batch: dict[str, Any], prefix: str, check_images: bool, image_root: str) -> dict[str, Any]:
    """Task form of ``FilterBatch`` (fuses with the read task: no actor holding a CPU)."""
    return FilterBatch(prefix, check_images, image_root)(batch)


class TranslateStep:
    """Wraps ``translate.TranslateBatch``: failed translations become rejections with their reason."""

    def __init__(self, cfg_dict: dict, cache_dir: str):
        self.inner = TranslateBatch(cfg_dict, cache_dir)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        english = list(batch["conversations"])
        reasons, stages = list(batch["reason"]), list(batch["stage"])
        todo = [i for i, r in enumerate(reasons) if not r]  # rows rejected upstream pass through untouched
        conversations = list(english)
        if todo:
            out = self.inner({"conversations": [english[i] for i in todo]})
            for j, i in enumerate(todo):
                if out["translation_ok"][j]:
                    conversations[i] = out["conversations"][j]
                else:
                    reasons[i], stages[i] = f"translation failed: {out['translation_error'][j]}", "translate"
        result = dict(batch)
        result["conversations"], result["conversations_en"] = conversations, english
        result["reason"], result["stage"] = reasons, stages
        return result


def reason_group(reason: str) -> str:
    """A reason without its row-specific details (paths, positions, numbers), for counting by kind."""
    head = re.split(r" \(|: /", reason)[0]
    return re.sub(r"\d+(\.\d+)?", "N", head)
