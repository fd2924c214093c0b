"""The ``seq2seq`` translator: a transformers encoder-decoder (MarianMT ``Helsinki-NLP/opus-mt-en-id``,
NLLB, ...) from a hub id at a pinned revision or a local folder (safetensors only), greedy and batched by sentence,
on CUDA when there is one.

    >>> from data_pipeline.translate.seq2seq import split_sentences
    >>> split_sentences('Hi. Bye.')
    ['Hi.', ' ', 'Bye.']
"""

from __future__ import annotations

import logging
import re
from typing import Any

from vlm_core.assets.hub import load_files, load_weights
from vlm_core.base.devices import pick_device
from vlm_core.base.errors import ConfigError

from .base import (
    _ALGORITHM_VERSION,
    Translation,
    TranslatorConfig,
    register_translator,
)

log = logging.getLogger(__name__)


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
