"""Training samples: ShareGPT4V records → encoded tokens + pixel values, and the dynamic-padding collator.

A record is ``{"id", "image", "conversations": [{"from": "human"|"gpt", "value": ...}, ...]}``; ``image`` is a
path relative to ``image_root`` (or absolute). Text is encoded once, up front, so samples that cannot be
trained on are counted by reason (``dataset.skipped``) and logged, never dropped silently. Images are read
lazily. Batches are padded to their own longest sample (dynamic padding), never to ``max_length``.

    python -c "from vlm_core.data import read_records; print(len(read_records('corpus/sharegpt4v.jsonl')))"
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from PIL import Image

from .conversation import IGNORE_INDEX, ConversationFormatter, Encoded, FormatError

log = logging.getLogger(__name__)


def read_records(path: str | Path) -> list[dict]:
    """Read ShareGPT4V records from ``.json`` (a list), ``.jsonl`` or ``.parquet``."""
    path = Path(path)
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        rows = pq.read_table(path).to_pylist()
        for r in rows:  # flat Parquet columns keep conversations as JSON text
            if isinstance(r.get("conversations"), str):
                r["conversations"] = json.loads(r["conversations"])
        return rows
    if path.suffix == ".jsonl":
        out = []
        with path.open(encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if line.strip():
                    try:
                        out.append(json.loads(line))
                    except json.JSONDecodeError as e:
                        raise ValueError(f"{path}:{lineno}: not valid JSON ({e.msg}); fix or remove that line") from e
        return out
    with path.open(encoding="utf-8") as f:
        return json.load(f)


@dataclass
class Example:
    id: str
    image: str
    encoded: Encoded


class ConversationDataset(torch.utils.data.Dataset):
    """Encoded conversations with lazily loaded, preprocessed images."""

    def __init__(self, records: Iterable[dict], formatter: ConversationFormatter,
                 preprocess: Callable[[list[Image.Image]], torch.Tensor], image_root: str | Path | None = None,
                 for_generation: bool = False):
        self.formatter, self.preprocess = formatter, preprocess
        self.image_root = Path(image_root) if image_root else None
        self.examples: list[Example] = []
        self.skipped: Counter[str] = Counter()
        encode = formatter.encode_prompt if for_generation else formatter.encode
        for i, rec in enumerate(records):
            rid = str(rec.get("id", i))
            try:
                enc = encode(rec["conversations"])
            except (FormatError, KeyError) as e:
                reason = type(e).__name__ if isinstance(e, KeyError) else str(e).split(";")[0]
                self.skipped[reason] += 1
                log.warning("skipping record %s: %s", rid, e)
                continue
            self.examples.append(Example(rid, rec["image"], enc))
        if self.skipped:
            log.warning("skipped %d of %d records: %s", sum(self.skipped.values()),
                        len(self.examples) + sum(self.skipped.values()), dict(self.skipped))

    def __len__(self) -> int:
        return len(self.examples)

    def image_path(self, image: str) -> Path:
        p = Path(image)
        return p if p.is_absolute() or self.image_root is None else self.image_root / p

    def load_image(self, image: str) -> Image.Image:
        with Image.open(self.image_path(image)) as img:
            return img.convert("RGB")

    def __getitem__(self, i: int) -> dict[str, Any]:
        ex = self.examples[i]
        pixel_values = self.preprocess([self.load_image(ex.image)])[0]
        return {"id": ex.id, "input_ids": ex.encoded.input_ids, "labels": ex.encoded.labels,
                "pixel_values": pixel_values}

    def num_tokens(self, i: int, num_image_tokens: int) -> int:
        return len(self.examples[i].encoded.input_ids) - 1 + num_image_tokens


@dataclass
class Collator:
    """Pads a batch to its longest sample. ``padding_side='left'`` for generation."""

    pad_token_id: int
    padding_side: str = "right"

    def _pad(self, seq: list[int], value: int, n: int) -> list[int]:
        return [value] * n + seq if self.padding_side == "left" else seq + [value] * n

    def __call__(self, batch: list[dict[str, Any]]) -> dict[str, Any]:
        longest = max(len(b["input_ids"]) for b in batch)
        ids, labels, mask = [], [], []
        for b in batch:
            n = longest - len(b["input_ids"])
            ids.append(self._pad(list(b["input_ids"]), self.pad_token_id, n))
            labels.append(self._pad(list(b["labels"]), IGNORE_INDEX, n))
            mask.append(self._pad([1] * len(b["input_ids"]), 0, n))
        out = {"ids": [b["id"] for b in batch], "input_ids": torch.tensor(ids), "labels": torch.tensor(labels),
               "attention_mask": torch.tensor(mask)}
        if "pixel_values" in batch[0]:
            out["pixel_values"] = torch.stack([b["pixel_values"] for b in batch])
        return out


def is_validation(record_id: str, val_fraction: float, seed: int = 0) -> bool:
    """Stable train/val assignment by a hash of the record id (independent of order and corpus size)."""
    import hashlib

    h = hashlib.sha256(f"{seed}:{record_id}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64 < val_fraction


def split_records(records: list[dict], val_fraction: float, seed: int = 0) -> tuple[list[dict], list[dict]]:
    train, val = [], []
    for i, r in enumerate(records):
        (val if is_validation(str(r.get("id", i)), val_fraction, seed) else train).append(r)
    return train, val
