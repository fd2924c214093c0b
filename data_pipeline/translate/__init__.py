"""English → Indonesian translation of ShareGPT4V conversations, with pluggable translators.

Registered translators (``build_translator(TranslatorConfig(name=...))``):

* ``none``: the explicit no-translation choice; texts come back unchanged.
* ``dictionary``: offline word-by-word translation with Debian's FreeDict ``dict-freedict-eng-ind`` (dictd
  format). Crude, but it needs nothing from the network; a text whose words are mostly unknown *fails*
  (``min_coverage``) instead of coming back half English.
* ``seq2seq``: a transformers encoder-decoder (MarianMT ``Helsinki-NLP/opus-mt-en-id``, NLLB, ...) from a hub
  id or a local folder, greedy and batched, on CUDA when there is one.

A failed translation is always reported as a failure (``Translation.ok`` is False, with a reason); the English
text is never passed off as the translation. ``translate_conversations`` keeps the ``<image>`` marker and the
line structure of every turn, and fails the whole conversation when any of its pieces failed.
``TranslationCache`` keeps successful translations in append-only JSONL shards (one per process) so reruns
translate only what is new; ``TranslateBatch`` is the Ray Data ``map_batches`` class UDF.

One module per idea: ``base`` (config, result, protocol, registry), ``none``, ``dictionary`` and ``seq2seq`` (one
translator each, registered on import), ``cache``, ``conversations`` (turns → lines → back), ``batch`` (the UDF).
"""

from __future__ import annotations

# the translators register themselves on import, so TranslatorConfig can check a name against all of them
from . import dictionary, none, seq2seq  # noqa: F401
from .base import (
    DEFAULT_DICTIONARY,
    DICTIONARY_PACKAGE,
    TRANSLATORS,
    Translation,
    Translator,
    TranslatorConfig,
    available_translators,
    build_translator,
    check_translator,
    register_translator,
)
from .batch import TranslateBatch
from .cache import TranslationCache, translate_cached
from .conversations import translate_conversations
from .dictionary import DictionaryNotFoundError, DictionaryTranslator, dictd_b64_decode
from .none import NoTranslator
from .seq2seq import Seq2SeqTranslator, split_sentences

__all__ = ["DEFAULT_DICTIONARY", "DICTIONARY_PACKAGE", "TRANSLATORS", "DictionaryNotFoundError", "DictionaryTranslator",
           "NoTranslator", "Seq2SeqTranslator", "TranslateBatch", "Translation", "TranslationCache", "Translator",
           "TranslatorConfig", "available_translators", "build_translator", "check_translator", "dictd_b64_decode",
           "register_translator", "split_sentences", "translate_cached", "translate_conversations"]
