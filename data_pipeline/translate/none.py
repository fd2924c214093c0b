"""The ``none`` translator: the explicit choice not to translate (texts come back unchanged).
"""

from __future__ import annotations

from .base import (
    Translation,
    TranslatorConfig,
    register_translator,
)


@register_translator("none")
class NoTranslator:
    """Keeps the English: the explicit choice not to translate."""

    id = "none"

    def __init__(self, cfg: TranslatorConfig | None = None) -> None:
        pass

    def translate(self, texts: list[str]) -> list[Translation]:
        return [Translation.success(t) for t in texts]
