"""The ``dictionary`` translator: offline word-by-word English → Indonesian with Debian's FreeDict
``dict-freedict-eng-ind`` (dictd format). Crude, but it needs nothing from the network; a text whose words are
mostly unknown *fails* (``min_coverage``) instead of coming back half English.

    >>> from data_pipeline.translate.dictionary import dictd_b64_decode
    >>> dictd_b64_decode('B')
    1
"""

from __future__ import annotations

import gzip
import logging
import re
from pathlib import Path

from vlm_core.base.errors import VlmSweepError
from vlm_core.base.hashing import file_sha256

from .base import (
    _ALGORITHM_VERSION,
    DICTIONARY_PACKAGE,
    Translation,
    TranslatorConfig,
    register_translator,
)

log = logging.getLogger(__name__)


DICTD_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_B64_VALUE = {c: i for i, c in enumerate(DICTD_B64)}
# A word: letters, optionally joined by apostrophes (``cat's``). Digits, punctuation and spaces are kept as is.
_WORD = re.compile(r"[^\W\d_]+(?:['’][^\W\d_]+)*")
_MAX_PHRASE_WORDS = 4
# Irregular English forms, tried only when the word itself is not a headword.
_IRREGULAR = {
    "am": "be", "is": "be", "are": "be", "was": "be", "were": "be", "been": "be", "being": "be",
    "has": "have", "had": "have", "having": "have", "does": "do", "did": "do", "done": "do",
    "men": "man", "women": "woman", "children": "child", "feet": "foot", "teeth": "tooth", "mice": "mouse",
}
# Regular suffixes (suffix, replacement), tried in order when the word is not a headword.
_SUFFIXES = (("'s", ""), ("’s", ""), ("ies", "y"), ("es", ""), ("s", ""), ("ied", "y"), ("ed", ""),
             ("ed", "e"), ("ing", ""), ("ing", "e"))


class DictionaryNotFoundError(VlmSweepError, FileNotFoundError):
    """The dictd files of the ``dictionary`` translator are missing; the message says how to get them."""


def dictd_b64_decode(s: str) -> int:
    """Decode a dictd index number (base 64, most significant digit first, alphabet ``DICTD_B64``)."""
    value = 0
    for ch in s:
        value = value * 64 + _B64_VALUE[ch]
    return value


def _index_key(word: str) -> str:
    """dictd index form: lowercase, letters/digits/spaces only (``Cat's`` → ``cats``)."""
    return "".join(ch for ch in word.lower() if ch.isalnum() or ch == " ")


def _first_translation(entry: str) -> str | None:
    """``headword /pron/ <pos>\\n1. terjemahan, lain\\ngloss`` → ``terjemahan``."""
    lines = entry.split("\n")
    if len(lines) < 2:
        return None
    line = re.sub(r"^\s*\d+\.\s*", "", lines[1])  # "1. anjing, asu" → "anjing, asu"
    line = re.sub(r"\s+\d+\.\s*$", "", line)  # "kucing 2." (FreeDict numbering glitch) → "kucing"
    first = re.split(r"[,;]", line, maxsplit=1)[0].strip()
    return first or None


def _entry_headword(entry: str) -> str:
    return re.split(r"\s+[/<]", entry.split("\n", 1)[0], maxsplit=1)[0].strip()


def _match_case(source: str, translation: str) -> str:
    if len(source) > 1 and source.isupper():
        return translation.upper()
    if source[:1].isupper():
        return translation[:1].upper() + translation[1:]
    return translation


@register_translator("dictionary")
class DictionaryTranslator:
    """Word-by-word translation with a dictd dictionary (FreeDict eng-ind), longest headword first.

    Words are looked up lowercased (then by their irregular / de-suffixed base form); multi-word headwords
    (``short story``) are matched greedily. Punctuation, digits and whitespace are kept. A text with fewer
    than ``min_coverage`` of its words found fails. The index is read on first use, once per instance.
    """

    def __init__(self, cfg: TranslatorConfig) -> None:
        self.prefix = cfg.dictionary
        self.min_coverage = cfg.min_coverage
        self.index_path = Path(cfg.dictionary + ".index")
        dict_path = Path(cfg.dictionary + ".dict.dz")
        if not dict_path.is_file() and Path(cfg.dictionary + ".dict").is_file():
            dict_path = Path(cfg.dictionary + ".dict")  # dictd also reads uncompressed dictionaries
        self.dict_path = dict_path
        for path in (self.index_path, self.dict_path):
            if not path.is_file():
                raise DictionaryNotFoundError(
                    f"dictionary file {path} not found (translate.dictionary={cfg.dictionary!r}); install it with "
                    f"`apt-get install {DICTIONARY_PACKAGE}` or pass `--translate.dictionary PREFIX` naming "
                    f"PREFIX.index and PREFIX.dict.dz")
        self._id: str | None = None
        self._entries: dict[str, list[tuple[int, int]]] | None = None
        self._data: bytes | None = None
        self._resolved: dict[str, str | None] = {}
        self._max_words = 1

    @property
    def id(self) -> str:
        if self._id is None:
            digest = file_sha256(self.index_path)[:16]
            self._id = f"dictionary/{_ALGORITHM_VERSION}:{digest}:min_coverage={self.min_coverage:g}"
        return self._id

    def _load(self) -> None:
        entries: dict[str, list[tuple[int, int]]] = {}
        with self.index_path.open(encoding="utf-8") as f:
            for line in f:
                parts = line.rstrip("\n").split("\t")
                if len(parts) != 3 or parts[0].startswith("00database"):
                    continue
                key = " ".join(_index_key(parts[0]).split())
                try:
                    span = (dictd_b64_decode(parts[1]), dictd_b64_decode(parts[2]))
                except KeyError:
                    continue
                entries.setdefault(key, []).append(span)
        opener = gzip.open if self.dict_path.suffix == ".dz" else open
        with opener(self.dict_path, "rb") as f:
            self._data = f.read()
        self._entries = entries
        self._max_words = min(_MAX_PHRASE_WORDS, max((k.count(" ") + 1 for k in entries), default=1))
        log.info("dictionary %s: %d headwords", self.prefix, len(entries))

    def lookup(self, key: str) -> str | None:
        """First translation of the headword ``key`` (index form), or None."""
        if self._entries is None:
            self._load()
        if key not in self._resolved:
            self._resolved[key] = self._resolve(key)
        return self._resolved[key]

    def _resolve(self, key: str) -> str | None:
        assert self._entries is not None and self._data is not None
        candidates = []
        for offset, length in self._entries.get(key, ()):
            entry = self._data[offset:offset + length].decode("utf-8", errors="replace")
            head = _entry_headword(entry)
            # Prefer the entry spelled exactly like the key ("man" over "Man", "in" over "in-").
            rank = 0 if head == key else 1 if head.lower() == key else 2
            candidates.append((rank, entry))
        for _, entry in sorted(candidates, key=lambda c: c[0]):
            translation = _first_translation(entry)
            if translation:
                return translation
        return None

    def lookup_word(self, word: str) -> str | None:
        """Translation of one word, trying its irregular / de-suffixed base forms when needed."""
        key = _index_key(word)
        found = self.lookup(key)
        if found is not None:
            return found
        lower = word.lower()
        if lower in _IRREGULAR:
            return self.lookup(_IRREGULAR[lower])
        for suffix, repl in _SUFFIXES:
            if lower.endswith(suffix) and len(lower) - len(suffix) >= 2:
                stem = lower[: -len(suffix)]
                for base in (stem + repl, stem[:-1] if len(stem) > 2 and stem[-1] == stem[-2] else None):
                    if base and (found := self.lookup(_index_key(base))) is not None:
                        return found
        return None

    def translate_one(self, text: str) -> Translation:
        if self._entries is None:
            self._load()
        words = list(_WORD.finditer(text))
        out: list[str] = []
        pos = found = i = 0
        unknown: list[str] = []
        while i < len(words):
            out.append(text[pos:words[i].start()])
            n, translation = self._longest_phrase(text, words, i)
            if translation is None:
                n, translation = 1, self.lookup_word(words[i].group())
            if translation is None:
                unknown.append(words[i].group())
                out.append(words[i].group())
            else:
                found += n
                out.append(_match_case(words[i].group(), translation))
            pos = words[i + n - 1].end()
            i += n
        out.append(text[pos:])
        coverage = found / len(words) if words else 1.0
        if coverage < self.min_coverage:
            return Translation.failure(
                f"coverage {coverage:.2f} < {self.min_coverage:.2f} ({found}/{len(words)} words found; "
                f"unknown: {', '.join(unknown[:5])}{', ...' if len(unknown) > 5 else ''})")
        return Translation.success("".join(out))

    def _longest_phrase(self, text: str, words: list[re.Match[str]], i: int) -> tuple[int, str | None]:
        """Greedy multi-word headword starting at word ``i`` (words separated by single spaces)."""
        for n in range(min(self._max_words, len(words) - i), 1, -1):
            gaps = (text[words[j].end():words[j + 1].start()] for j in range(i, i + n - 1))
            if all(g == " " for g in gaps):
                key = " ".join(_index_key(w.group()) for w in words[i:i + n])
                translation = self.lookup(key)
                if translation is not None:
                    return n, translation
        return 1, None

    def translate(self, texts: list[str]) -> list[Translation]:
        return [self.translate_one(t) for t in texts]
