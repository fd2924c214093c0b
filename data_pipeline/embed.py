"""Sentence embeddings of the records' text (all-MiniLM-L6-v2, 384-d by default), as a Ray Data class UDF.

What is embedded is ``--embed.text``: ``human`` (the human turns: the study's choice, the default),
``assistant`` (the assistant turns) or ``both`` (human turns, a newline, assistant turns); the ``<image>``
marker is removed in every case. ShareGPT4V's caption files ask one of ~10 fixed prompts in every human
turn, so ``human`` clusters the prompt templates there, not the content: ``data build`` measures how repeated
the embedded texts are and warns (see ``build.repetition_stats``). all-MiniLM-L6-v2 reads at most 256 word
pieces (about 1,000 characters of English); a longer text is embedded from its first 256 (``both`` puts the
human turns first, so the prompt is always read and the end of a long caption may not be).

The English turns are embedded even when the conversations are translated: MiniLM is an English model, and
clustering the source texts keeps the same rows in ``20kUmap`` with and without translation.

Besides ``embedding``, each row gets ``embed_hash``: a 64-bit BLAKE2b hash of exactly the text embedded, from
which the driver counts distinct and most common embedded texts without holding the texts.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import numpy as np

from vlm_core.assets.hub import resolve
from vlm_core.assets.packaged import minilm_path
from vlm_core.base.devices import pick_device

log = logging.getLogger(__name__)

EMBED_TEXTS = ("human", "assistant", "both")
"""Choices of ``--embed.text``."""
TEXT_LABELS = {"human": "human turns", "assistant": "assistant turns", "both": "human + assistant turns"}
"""How each choice is named in the manifest, the plot title and the warning."""
DEFAULT_MODEL_NAME = "all-MiniLM-L6-v2"
ST_MARKER = ("modules.json", "config.json")  # what makes a folder a sentence-transformers (or HF) model


def resolve_model(model: str | None) -> str:
    """``model`` itself, or the packaged all-MiniLM-L6-v2 folder when it is None."""
    if model:
        return model

    return str(minilm_path())


def model_label(model: str | None) -> str:
    """A short name for titles: the hub id's or folder's last part; the packaged default is all-MiniLM-L6-v2."""
    return Path(model.rstrip("/")).name if model else DEFAULT_MODEL_NAME


def embedded_text(human: str, assistant: str, text: str) -> str:
    """The text embedded for a row under ``--embed.text`` = ``text``."""
    if text == "human":
        return human
    if text == "assistant":
        return assistant
    if text == "both":
        return f"{human}\n{assistant}"
    raise ValueError(f"embed.text: {text!r} is not one of {', '.join(EMBED_TEXTS)}")


def text_hash(text: str) -> int:
    """Signed 64-bit BLAKE2b of ``text`` (collisions: ~n²/2⁶⁵, about 3e-8 at a million distinct texts)."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little", signed=True)


def load_embedder(model: str | None, device: str | None = None, revision: str | None = None):
    """A ``SentenceTransformer``: the packaged MiniLM (``model`` None), a folder, or a hub id at ``revision``.

    A hub id goes through ``vlm_core.assets.hub.resolve`` (an assets folder's copy at that revision when
    ``$VLM_SWEEP_ASSETS`` holds one; ``data build`` rewrites the id to that folder before the actors start)."""
    from sentence_transformers import SentenceTransformer

    if device is None:
        device = str(pick_device())
    r = resolve(resolve_model(model), revision if model else None, "embed.model", marker=ST_MARKER)
    # weights only from safetensors (the packaged all-MiniLM-L6-v2 has them), never a pickle
    return SentenceTransformer(r.path, device=device, revision=r.kwargs.get("revision"),
                               model_kwargs={"use_safetensors": True})


class EmbedBatch:
    """``map_batches`` UDF: adds ``embedding`` (float32, L2-normalised) and ``embed_hash`` (int64) columns; rows
    with a reason (rejected upstream) get zeros.

    Reads ``human_text`` and/or ``assistant_text`` as ``text`` needs (``human``: only ``human_text``)."""

    def __init__(self, model: str | None, batch_size: int, num_threads: int | None = None, text: str = "human",
                 revision: str | None = None):
        if text not in EMBED_TEXTS:
            raise ValueError(f"embed.text: {text!r} is not one of {', '.join(EMBED_TEXTS)}")
        if num_threads:
            import torch

            torch.set_num_threads(num_threads)
        self.model = load_embedder(model, revision=revision)
        self.batch_size = batch_size
        self.text = text
        self.dim = self.model.get_embedding_dimension()

    def texts(self, batch: dict[str, Any]) -> list[str]:
        n = len(batch["reason"])
        human = batch["human_text"] if self.text != "assistant" else [""] * n
        assistant = batch["assistant_text"] if self.text != "human" else [""] * n
        return [embedded_text(str(h), str(a), self.text) for h, a in zip(human, assistant)]

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        texts = self.texts(batch)
        ok = np.array([not r for r in batch["reason"]], dtype=bool)
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        hashes = np.zeros(len(texts), dtype=np.int64)
        if ok.any():
            chosen = [t for t, k in zip(texts, ok) if k]
            emb = self.model.encode(chosen, batch_size=self.batch_size,
                                    normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
            out[ok] = emb.astype(np.float32)
            hashes[ok] = [text_hash(t) for t in chosen]
        batch = dict(batch)
        batch["embedding"] = out
        batch["embed_hash"] = hashes
        return batch
