"""Successful translations kept in append-only JSONL shards (one per process), so reruns translate only
what is new; failures are never cached.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from pathlib import Path

from vlm_core.base.hashing import text_digest

from .base import (
    Translation,
    Translator,
)

log = logging.getLogger(__name__)


class TranslationCache:
    """Successful translations keyed by ``sha256(translator_id + "\\0" + text)``, in append-only JSONL shards.

    ``folder`` may be shared by several processes (Ray actors): each appends only to its own shard
    ``shard-<pid>-<uuid>.jsonl`` and, when created, reads every shard there (a truncated last line, left by a
    killed process, is skipped). Entries written by other processes after that are not seen until the next
    run. Failures are never cached, so a rerun retries them.
    """

    def __init__(self, folder: str | Path, translator_id: str) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.translator_id = translator_id
        self._entries: dict[str, str] = {}
        self._shard: Path | None = None
        self._pid: int | None = None
        self._read_shards()

    def key(self, text: str) -> str:
        return text_digest(f"{self.translator_id}\0{text}")

    def __len__(self) -> int:
        return len(self._entries)

    def _read_shards(self) -> None:
        skipped = 0
        for shard in sorted(self.folder.glob("shard-*.jsonl")):
            with shard.open(encoding="utf-8", errors="replace") as f:
                for line in f:
                    try:
                        item = json.loads(line)
                        key, text = item["key"], item["text"]
                    except (json.JSONDecodeError, KeyError, TypeError):
                        skipped += 1
                        continue
                    if isinstance(key, str) and isinstance(text, str):
                        self._entries[key] = text
        if skipped:
            log.warning("translation cache %s: skipped %d unreadable line(s)", self.folder, skipped)

    def get_many(self, texts: list[str]) -> dict[str, Translation]:
        """Cached translations of ``texts`` (hits only)."""
        hits: dict[str, Translation] = {}
        for text in texts:
            cached = self._entries.get(self.key(text))
            if cached is not None:
                hits[text] = Translation.success(cached)
        return hits

    def put_many(self, items: dict[str, Translation]) -> None:
        """Store the successful ones of ``items`` (source text → translation); one append + flush."""
        lines = []
        for source, result in items.items():
            if not result.ok or result.text is None:
                continue
            key = self.key(source)
            if self._entries.get(key) == result.text:
                continue
            self._entries[key] = result.text
            lines.append(json.dumps({"key": key, "text": result.text}, ensure_ascii=False) + "\n")
        if not lines:
            return
        with self._shard_path().open("a", encoding="utf-8") as f:
            f.write("".join(lines))
            f.flush()

    def _shard_path(self) -> Path:
        if self._shard is None or self._pid != os.getpid():  # a forked child gets a shard of its own
            self._pid = os.getpid()
            self._shard = self.folder / f"shard-{self._pid}-{uuid.uuid4().hex[:12]}.jsonl"
        return self._shard


def translate_cached(texts: list[str], translator: Translator,
                     cache: TranslationCache | None) -> dict[str, Translation]:
    """Translation of every distinct text, from the cache when possible, the rest in one ``translate`` call."""
    unique = list(dict.fromkeys(texts))
    results = cache.get_many(unique) if cache is not None else {}
    todo = [t for t in unique if t not in results]
    if todo:
        translated = translator.translate(todo)
        if len(translated) != len(todo):
            raise RuntimeError(
                f"translator {translator.id} returned {len(translated)} results for {len(todo)} texts")
        fresh = dict(zip(todo, translated))
        if cache is not None:
            cache.put_many(fresh)
        results.update(fresh)
    return results
