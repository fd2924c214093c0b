"""Training samples: ShareGPT4V records → encoded tokens + pixel values, and the dynamic-padding collator.

A record is ``{"id", "image", "conversations": [{"from": "human"|"gpt", "value": ...}, ...]}``; ``image`` is a
path relative to ``image_root`` (or absolute). Text is encoded once, up front, so samples that cannot be
trained on are counted by reason (``dataset.skipped``) and logged, never dropped silently. Images are read
lazily. Batches are padded to their own longest sample (dynamic padding), never to ``max_length``.
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

from ..base.errors import DataError, FormatError
from ..base.hashing import unit_interval
from ..model.conversation import IGNORE_INDEX, ConversationFormatter, Encoded
from .images import ImageError, open_rgb, resolve_image

log = logging.getLogger(__name__)


def read_records(path: str | Path) -> list[dict]:
    """Read ShareGPT4V records from ``.json`` (a list), ``.jsonl`` or ``.parquet``.

    A file that is not valid JSON / UTF-8, or does not hold records, raises ``DataError`` naming the file and the
    line; ``data build`` is the tolerant path (it quarantines bad rows into rejected.jsonl instead)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file; pass a .jsonl / .json / .parquet file of records")
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            rows = pq.read_table(path).to_pylist()
        except Exception as e:  # noqa: BLE001 - pyarrow raises several types for a bad file
            raise DataError(f"{path}: not a readable Parquet file ({e}); rebuild it with `vlm-sweep data build`") from e
        for r in rows:  # flat Parquet columns keep conversations as JSON text
            if isinstance(r.get("conversations"), str):
                r["conversations"] = json.loads(r["conversations"])
        return rows
    if path.suffix == ".jsonl":
        out = []
        with path.open("rb") as f:
            for lineno, raw in enumerate(f, 1):
                try:
                    line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
                except UnicodeDecodeError as e:
                    raise DataError(f"{path}:{lineno}: not UTF-8 (byte {e.start}); re-encode the file as UTF-8 or "
                                    f"remove that line") from e
                if line.strip():
                    try:
                        out.append(json.loads(line))
                    except json.JSONDecodeError as e:
                        raise DataError(f"{path}:{lineno}: not valid JSON ({e.msg}); fix or remove that line") from e
        return _records(out, path)
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 (byte {e.start}); re-encode the file as UTF-8") from e
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: not valid JSON ({e.msg}; truncated?); fix the file, or convert it to "
                        f".jsonl so that one bad record does not spoil the rest") from e
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
    return _records(data, path)


def _records(rows: list, path: Path) -> list[dict]:
    bad = [i for i, r in enumerate(rows, 1) if not isinstance(r, dict)]
    if bad:
        raise DataError(f"{path}: record {bad[0]} (of {len(bad)} such) is a {type(rows[bad[0] - 1]).__name__}, not "
                        f"an object with id / image / conversations")
    return rows


@dataclass
class Example:
    id: str
    image: str
    encoded: Encoded


class ConversationDataset(torch.utils.data.Dataset):
    """Encoded conversations with lazily loaded, preprocessed images."""

    def __init__(self, records: Iterable[dict], formatter: ConversationFormatter,
                 preprocess: Callable[[list[Image.Image]], torch.Tensor], image_root: str | Path | None = None,
                 for_generation: bool = False, features=None):
        self.formatter, self.preprocess = formatter, preprocess
        self.features = features  # a vlm_core.data.feature_cache.FeatureCache: items carry image_features, not pixels
        self.image_root = Path(image_root) if image_root else None
        self.examples: list[Example] = []
        self.skipped: Counter[str] = Counter()
        self.cut: Counter[str] = Counter()  # samples kept with trailing turns cut off: {"samples", "turns"}
        encode = formatter.encode_prompt if for_generation else formatter.encode
        for i, rec in enumerate(records):
            rid = str(rec.get("id", i)) if isinstance(rec, dict) else str(i)
            try:
                if not isinstance(rec, dict):
                    raise FormatError(f"not an object with id / image / conversations ({type(rec).__name__})")
                missing = [k for k in ("image", "conversations") if not rec.get(k)]
                if missing:
                    raise FormatError(f"missing {' and '.join(missing)}")
                enc = encode(rec["conversations"])
            except FormatError as e:
                reason = str(e).split(";")[0]
                self.skipped[reason] += 1
                log.warning("skipping record %s: %s", rid, e)
                continue
            self.examples.append(Example(rid, rec["image"], enc))
            if enc.turns_dropped:
                self.cut.update(samples=1, turns=enc.turns_dropped)
        if self.skipped:
            log.warning("skipped %d of %d records: %s", sum(self.skipped.values()),
                        len(self.examples) + sum(self.skipped.values()), dict(self.skipped))
        if self.cut:
            log.warning("%d of %d samples are longer than format.max_length=%d and were cut to whole turns (%d "
                        "answers cut off)", self.cut["samples"], len(self.examples), formatter.cfg.max_length,
                        self.cut["turns"])

    def __len__(self) -> int:
        return len(self.examples)

    def image_path(self, image: str) -> Path:
        return resolve_image(image, self.image_root)

    def load_image(self, image: str) -> Image.Image:
        """RGB, first frame, upright (``vlm_core.data.images.open_rgb``); ``ImageError`` names the file and the fix."""
        return open_rgb(self.image_path(image))

    def __getitem__(self, i: int) -> dict[str, Any]:
        ex = self.examples[i]
        if self.features is not None:
            return {"id": ex.id, "input_ids": ex.encoded.input_ids, "labels": ex.encoded.labels,
                    "image_features": self.features.get(ex.image)}
        try:
            image = self.load_image(ex.image)
        except ImageError as e:
            raise DataError(f"record {ex.id}: {e}") from e
        pixel_values = self.preprocess([image])[0]
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
        for key in ("pixel_values", "image_features"):
            if key in batch[0]:
                out[key] = torch.stack([b[key] for b in batch])
        return out


def is_validation(record_id: str, val_fraction: float, seed: int = 0) -> bool:
    """Stable train/val assignment by a hash of the record id (independent of order and corpus size)."""
    return unit_interval(seed, record_id) < val_fraction


def split_records(records: list[dict], val_fraction: float, seed: int = 0) -> tuple[list[dict], list[dict]]:
    train, val = [], []
    for i, r in enumerate(records):
        (val if is_validation(str(r.get("id", i)), val_fraction, seed) else train).append(r)
    return train, val
