"""Translating ShareGPT4V conversations: every turn line by line, the ``<image>`` marker and the line
structure kept, the whole conversation failed when any of its pieces failed (the English is never a fallback).
"""

from __future__ import annotations

import re
from typing import Any

from vlm_core.config import IMAGE_MARKER

from .base import (
    Translation,
    Translator,
)
from .cache import TranslationCache, translate_cached

_SEGMENT = re.compile(f"({re.escape(IMAGE_MARKER)}|\n)")


def _segments(value: str) -> list[str]:
    """Split a turn into the marker, newlines and text pieces; only the pieces' stripped cores get translated."""
    return [s for s in _SEGMENT.split(value) if s]


def _is_text(segment: str) -> bool:
    return segment not in (IMAGE_MARKER, "\n") and bool(segment.strip())


def _turn_problem(turn: Any) -> str | None:
    if not isinstance(turn, dict):
        return f"is a {type(turn).__name__}, not a mapping"
    if not isinstance(turn.get("value"), str):
        return "has no string 'value'"
    return None


def translate_conversations(convs: list[list[dict]], translator: Translator,
                            cache: TranslationCache | None = None) -> list[tuple[list[dict] | None, str | None]]:
    """Translate every turn of every conversation; ``(translated, None)`` or ``(None, reason)`` per conversation.

    The ``<image>`` marker and the newlines are kept exactly; each line between them is translated on its own
    (leading/trailing spaces kept). All distinct lines of the batch go to the translator in one call. A
    conversation fails as a whole when any of its lines failed; the English is never used as a fallback.
    """
    problems: list[str | None] = []
    texts: list[str] = []
    for conv in convs:
        problem = None
        if not isinstance(conv, list) or not conv:
            problem = "conversation is not a non-empty list of turns"
        else:
            for t, turn in enumerate(conv):
                if (issue := _turn_problem(turn)) is not None:
                    problem = f"turn {t} {issue}"
                    break
                texts.extend(s.strip() for s in _segments(turn["value"]) if _is_text(s))
        problems.append(problem)
    results = translate_cached(texts, translator, cache) if texts else {}
    return [(None, problem) if problem else _rebuild(conv, results) for conv, problem in zip(convs, problems)]


def _rebuild(conv: list[dict], results: dict[str, Translation]) -> tuple[list[dict] | None, str | None]:
    out = []
    for t, turn in enumerate(conv):
        pieces = []
        for segment in _segments(turn["value"]):
            if not _is_text(segment):
                pieces.append(segment)
                continue
            result = results[segment.strip()]
            if not result.ok or result.text is None:
                who = turn.get("from", "?")
                return None, f"turn {t} ({who}): {result.reason or 'translation failed'}"
            lead = segment[: len(segment) - len(segment.lstrip())]
            trail = segment[len(segment.rstrip()):]
            pieces.append(lead + result.text + trail)
        out.append({**turn, "value": "".join(pieces)})
    return out, None
