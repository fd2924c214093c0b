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

    python -c "from data_pipeline.translate import TranslatorConfig, build_translator as b; \\
print(b(TranslatorConfig(name='dictionary')).translate(['A red cat sits on the table.']))"
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import logging
import os
import re
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol, runtime_checkable

from vlm_core.config import IMAGE_MARKER, ConfigError, check_field, from_dict
from vlm_core.devices import pick_device
from vlm_core.errors import VlmSweepError
from vlm_core.hashing import file_sha256, text_digest
from vlm_core.hub import default_revision, load_files, load_weights
from vlm_core.registry import Registry

log = logging.getLogger(__name__)

DEFAULT_DICTIONARY = "/usr/share/dictd/freedict-eng-ind"
DICTIONARY_PACKAGE = "dict-freedict-eng-ind"
# Bump when a translator's algorithm changes, so that cached translations of the old one are not reused.
_ALGORITHM_VERSION = "v1"



# --------------------------------------------------------------------------------------------------- config


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
    (``vlm_core.hub.PINNED_REVISIONS``, the safetensors conversion). A hub id loads from ``assets`` (or
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


# ------------------------------------------------------------------------------------------ translator API


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


# ---------------------------------------------------------------------------------------------------- none


@register_translator("none")
class NoTranslator:
    """Keeps the English: the explicit choice not to translate."""

    id = "none"

    def __init__(self, cfg: TranslatorConfig | None = None) -> None:
        pass

    def translate(self, texts: list[str]) -> list[Translation]:
        return [Translation.success(t) for t in texts]


# ---------------------------------------------------------------------------------------------- dictionary

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


# ------------------------------------------------------------------------------------------------ seq2seq

# Sentence boundary: end punctuation, whitespace, then something that starts a sentence.
_SENTENCE_BREAK = re.compile(r"(?<=[.!?])(\s+)(?=[\"'“(\[]?[A-Z0-9])")


def split_sentences(text: str) -> list[str]:
    """``[sentence, separator, sentence, ...]``: joining the list gives ``text`` back."""
    return _SENTENCE_BREAK.split(text)


@register_translator("seq2seq")
class Seq2SeqTranslator:
    """A transformers encoder-decoder (MarianMT, NLLB, ...) run greedily in batches of sentences.

    Each text is split into sentences (these models are trained on sentences). A sentence whose input is
    longer than the model accepts, whose output is empty or reaches ``max_new_tokens``, or whose batch raised,
    fails, and so does its text.
    """

    def __init__(self, cfg: TranslatorConfig) -> None:
        from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

        assert cfg.model is not None  # checked by TranslatorConfig
        self.cfg = cfg
        self.id = (f"seq2seq/{_ALGORITHM_VERSION}:{cfg.model}@{cfg.revision or ''}"
                   f":{cfg.src_lang or ''}>{cfg.tgt_lang or ''}:max_new_tokens={cfg.max_new_tokens}")
        self.device = pick_device()
        # weights first: a pickle-only folder is refused (naming `vlm-sweep assets convert`) before anything else
        self.model = load_weights(AutoModelForSeq2SeqLM, cfg.model, cfg.revision, "translate.model", cfg.assets,
                                  trust_remote_code=False).to(self.device)
        self.tokenizer = load_files(AutoTokenizer, cfg.model, cfg.revision, "translate.model", cfg.assets,
                                    trust_remote_code=False)
        self.model.eval()
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if cfg.src_lang:
            self._token_id(cfg.src_lang, "translate.src_lang")
            self.tokenizer.src_lang = cfg.src_lang  # NLLB: sets the source language prefix token
        self.forced_bos_token_id = self._token_id(cfg.tgt_lang, "translate.tgt_lang") if cfg.tgt_lang else None
        self.eos_ids = self._eos_ids()
        self.max_input_tokens = self._max_input_tokens()
        log.info("seq2seq translator %s on %s", cfg.model, self.device)

    def _token_id(self, token: str, field_name: str) -> int:
        token_id = self.tokenizer.convert_tokens_to_ids(token)
        if token_id is None or (token_id == self.tokenizer.unk_token_id and token != self.tokenizer.unk_token):
            raise ConfigError(f"{field_name}: {token!r} is not a token of {self.cfg.model}'s tokenizer "
                              f"(NLLB codes look like 'eng_Latn', 'ind_Latn')")
        return int(token_id)

    def _eos_ids(self) -> set[int]:
        ids: set[int] = set()
        for value in (self.model.generation_config.eos_token_id, self.model.config.eos_token_id,
                      self.tokenizer.eos_token_id):
            if value is not None:
                ids.update(value if isinstance(value, (list, tuple)) else [value])
        return ids

    def _max_input_tokens(self) -> int:
        """The model's input limit (tokenizers without one report a huge ``model_max_length``)."""
        limits = [getattr(self.model.config, "max_position_embeddings", None), self.tokenizer.model_max_length]
        return min([int(x) for x in limits if isinstance(x, int) and 0 < x < 10**9], default=10**9)

    def translate(self, texts: list[str]) -> list[Translation]:
        pieces = [split_sentences(t) for t in texts]
        sentences = sorted({s.strip() for p in pieces for s in p[0::2] if s.strip()}, key=len)
        done: dict[str, Translation] = {}
        for start in range(0, len(sentences), self.cfg.batch_size):
            batch = sentences[start:start + self.cfg.batch_size]
            done.update(zip(batch, self._translate_batch(batch)))
        return [self._assemble(p, done) for p in pieces]

    @staticmethod
    def _assemble(pieces: list[str], done: dict[str, Translation]) -> Translation:
        out = []
        for k, piece in enumerate(pieces):
            core = piece.strip()
            if k % 2 == 1 or not core:  # separator or blank
                out.append(piece)
                continue
            result = done[core]
            if not result.ok:
                where = f" (sentence {core[:60]!r})" if len(pieces) > 1 else ""
                return Translation.failure(f"{result.reason}{where}")
            lead = piece[: len(piece) - len(piece.lstrip())]
            trail = piece[len(piece.rstrip()):]
            out.append(lead + (result.text or "") + trail)
        return Translation.success("".join(out))

    def _translate_batch(self, batch: list[str]) -> list[Translation]:
        try:
            return self._generate(batch)
        except Exception as exc:  # a failing batch fails its sentences, never the whole dataset job
            log.warning("seq2seq batch of %d failed: %s", len(batch), exc)
            return [Translation.failure(f"{type(exc).__name__}: {exc}") for _ in batch]

    def _generate(self, batch: list[str]) -> list[Translation]:
        import torch

        lengths = [len(ids) for ids in self.tokenizer(batch)["input_ids"]]
        results: list[Translation | None] = [
            Translation.failure(f"input of {n} tokens exceeds the model's {self.max_input_tokens}")
            if n > self.max_input_tokens else None for n in lengths]
        todo = [i for i, r in enumerate(results) if r is None]
        if not todo:
            return [r for r in results if r is not None]
        enc = self.tokenizer([batch[i] for i in todo], return_tensors="pt", padding=True).to(self.device)
        kwargs: dict[str, Any] = dict(max_new_tokens=self.cfg.max_new_tokens, num_beams=1, do_sample=False)
        if self.forced_bos_token_id is not None:
            kwargs["forced_bos_token_id"] = self.forced_bos_token_id
        with torch.inference_mode():
            out = self.model.generate(**enc, **kwargs).cpu()
        for row, i in zip(out.tolist(), todo):
            results[i] = self._decode(row[1:])  # row[0] is the decoder start token
        return [r for r in results if r is not None]

    def _decode(self, generated: list[int]) -> Translation:
        stop = next((k for k, tok in enumerate(generated) if tok in self.eos_ids), None)
        steps = len(generated) if stop is None else stop + 1
        if steps >= self.cfg.max_new_tokens:
            return Translation.failure(f"output truncated at max_new_tokens={self.cfg.max_new_tokens}")
        text = self.tokenizer.decode(generated[:steps], skip_special_tokens=True).strip()
        return Translation.success(text) if text else Translation.failure("empty output")


# -------------------------------------------------------------------------------------------------- cache


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


# ------------------------------------------------------------------------------------------ conversations

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


# ------------------------------------------------------------------------------------------- Ray Data UDF


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
