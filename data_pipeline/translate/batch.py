"""``TranslateBatch``: the Ray Data ``map_batches`` class UDF around a translator, its cache and
``translate_conversations`` (plain Python, no Ray import, so it is unit-testable).
"""

from __future__ import annotations

import json
from typing import Any

from .base import (
    TranslatorConfig,
    build_translator,
)
from .cache import TranslationCache
from .conversations import translate_conversations


class TranslateBatch:
    """map_batches UDF: batch (dict of numpy/lists) with a 'conversations' column holding JSON strings → same
    batch with 'conversations' replaced by the translated JSON (or unchanged when failed) plus
    'translation_ok' (bool) and 'translation_error' (str, '' when ok) columns.

    Plain Python (no Ray import), so it is unit-testable; use it with
    ``ds.map_batches(TranslateBatch, fn_constructor_args=(cfg.to_dict(), cache_dir),
    compute=ray.data.ActorPoolStrategy(size=n))``.
    """

    def __init__(self, cfg_dict: dict, cache_dir: str | None) -> None:
        self.cfg = TranslatorConfig.from_dict(cfg_dict)
        self.translator = build_translator(self.cfg)
        self.cache = TranslationCache(cache_dir, self.translator.id) if cache_dir else None

    def __call__(self, batch: dict) -> dict:
        import numpy as np

        raw = _as_list(batch["conversations"])
        parsed: list[Any] = []
        parse_errors: dict[int, str] = {}
        for i, value in enumerate(raw):
            try:
                parsed.append(json.loads(value) if isinstance(value, (str, bytes)) else _as_list(value))
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                parsed.append(None)
                parse_errors[i] = f"conversations is not valid JSON: {exc}"
        ok_rows = [i for i in range(len(raw)) if i not in parse_errors]
        outcomes = dict(zip(ok_rows, translate_conversations([parsed[i] for i in ok_rows], self.translator,
                                                             self.cache)))
        convs, oks, errors = [], [], []
        for i, value in enumerate(raw):
            translated, reason = outcomes.get(i, (None, parse_errors.get(i)))
            convs.append(value if translated is None else json.dumps(translated, ensure_ascii=False))
            oks.append(translated is not None)
            errors.append("" if translated is not None else (reason or "translation failed"))
        out = dict(batch)
        out["conversations"] = convs
        out["translation_ok"] = np.asarray(oks, dtype=bool)
        out["translation_error"] = errors
        return out


def _as_list(value: Any) -> list:
    return value.tolist() if hasattr(value, "tolist") else list(value)
