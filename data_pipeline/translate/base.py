"""What a translator is: its config (``TranslatorConfig``, the ``--translate.*`` flags), its result
(``Translation``: the text or the reason it failed), the ``Translator`` protocol and the registry of named
translators (``TRANSLATORS``; ``none``, ``dictionary`` and ``seq2seq`` register themselves in their modules).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any, Callable, Protocol, runtime_checkable

from vlm_core.assets.hub import default_revision
from vlm_core.base.registry import Registry
from vlm_core.config import check_field, from_dict

log = logging.getLogger(__name__)


DEFAULT_DICTIONARY = "/usr/share/dictd/freedict-eng-ind"
DICTIONARY_PACKAGE = "dict-freedict-eng-ind"
# Bump when a translator's algorithm changes, so that cached translations of the old one are not reused.
_ALGORITHM_VERSION = "v1"


@dataclass
class TranslatorConfig:
    """Which translator turns the English conversations into Indonesian, and its settings."""

    name: str = "none"
    """Registered translator: ``none`` (keep English), ``dictionary`` (offline FreeDict word-by-word) or
    ``seq2seq`` (MarianMT / NLLB model)."""
    model: str | None = None
    """``seq2seq`` only: hub id or local folder, e.g. ``Helsinki-NLP/opus-mt-en-id`` or an NLLB checkpoint. Its
    weights must be safetensors (``vlm-sweep assets convert SRC DST`` converts a pickle-only folder)."""
    revision: str | None = None
    """``seq2seq`` only: hub commit (or branch / tag) of ``model``, passed to the tokenizer's and the weights'
    ``from_pretrained``; ignored for a local folder; unset for ``Helsinki-NLP/opus-mt-en-id``: the project's pin
    (``vlm_core.assets.hub.PINNED_REVISIONS``, the safetensors conversion). A hub id loads from ``assets`` (or
    ``$VLM_SWEEP_ASSETS``) when that assets folder holds this revision."""
    assets: str | None = None
    """``seq2seq`` only: an assets folder (``vlm-sweep assets download``) to load a hub ``model`` from; set by
    ``data build --assets``. Where the files come from is not part of the translation cache key: the hub id and
    revision are."""
    src_lang: str | None = None
    """``seq2seq`` only: source language code for tokenizers that need one (NLLB: ``eng_Latn``); None for
    Marian."""
    tgt_lang: str | None = None
    """``seq2seq`` only: target language token forced as the first generated token (NLLB: ``ind_Latn``);
    None for Marian."""
    dictionary: str = DEFAULT_DICTIONARY
    """``dictionary`` only: dictd files prefix, i.e. ``PREFIX.index`` and ``PREFIX.dict.dz`` (Debian package
    ``dict-freedict-eng-ind``)."""
    min_coverage: float = 0.5
    """``dictionary`` only: fraction of a text's words that must be in the dictionary, else the text fails."""
    batch_size: int = 16
    """``seq2seq`` only: sentences per generation batch."""
    max_new_tokens: int = 256
    """``seq2seq`` only: generation limit per sentence; an output that reaches it fails as truncated."""

    def __post_init__(self) -> None:
        check_translator(self.name)
        check_field(self.name != "seq2seq" or bool(self.model), "translate.model",
               "seq2seq needs a hub id or local folder, e.g. Helsinki-NLP/opus-mt-en-id")
        for name in ("model", "revision", "src_lang", "tgt_lang"):
            value = getattr(self, name)
            check_field(value is None or (isinstance(value, str) and value.strip() == value and bool(value)),
                   f"translate.{name}", "must be None or a non-empty string without surrounding spaces")
        check_field(bool(self.dictionary), "translate.dictionary", "must be a dictd files prefix")
        check_field(0.0 <= self.min_coverage <= 1.0, "translate.min_coverage", f"{self.min_coverage} is not in [0, 1]")
        check_field(self.batch_size >= 1, "translate.batch_size", "must be >= 1")
        check_field(self.max_new_tokens >= 1, "translate.max_new_tokens", "must be >= 1")

        self.revision = default_revision(self.model, self.revision)  # a hub id the project pins gets its pin

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TranslatorConfig":
        return from_dict(cls, d)


@dataclass
class Translation:
    """The outcome of translating one text."""

    text: str | None
    """The translation; None when it failed."""
    ok: bool
    """True when ``text`` is a translation."""
    reason: str | None = None
    """Why it failed (None when ok)."""

    @classmethod
    def success(cls, text: str) -> "Translation":
        return cls(text=text, ok=True, reason=None)

    @classmethod
    def failure(cls, reason: str) -> "Translation":
        return cls(text=None, ok=False, reason=reason)


@runtime_checkable
class Translator(Protocol):
    id: str
    """Stable identity used in cache keys: changes whenever the output for a given input could change."""

    def translate(self, texts: list[str]) -> list[Translation]:
        """One ``Translation`` per input text, in order."""
        ...


TranslatorFactory = Callable[[TranslatorConfig], Translator]
TRANSLATORS: Registry[TranslatorFactory] = Registry("translate.name", "translator")
register_translator = TRANSLATORS.register


def available_translators() -> list[str]:
    return TRANSLATORS.names()


def check_translator(name: str) -> None:
    check_field(name in TRANSLATORS, "translate.name", f"{name!r} is not one of {', '.join(TRANSLATORS.names())}")


def build_translator(cfg: TranslatorConfig) -> Translator:
    """The registered translator ``cfg.name``, built from ``cfg`` (checked when the config was made, and again here:
    a field set after that is checked too)."""
    check_translator(cfg.name)
    translator = TRANSLATORS[cfg.name](cfg)
    log.info("translator %s", translator.id)
    return translator
