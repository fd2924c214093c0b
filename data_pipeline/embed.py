"""Sentence embeddings of the human turns (all-MiniLM-L6-v2, 384-d by default), as a Ray Data class UDF.

The English human turns are embedded even when the conversations are translated: MiniLM is an English
model, and clustering the source questions keeps the same rows in ``20kUmap`` with and without translation.

    python -c "from data_pipeline.embed import EmbedBatch; e = EmbedBatch(None, 32); print(e.dim)"
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


def resolve_model(model: str | None) -> str:
    if model:
        return model
    from vlm_core.assets import minilm_path

    return str(minilm_path())


def load_embedder(model: str | None, device: str | None = None):
    from sentence_transformers import SentenceTransformer

    if device is None:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    # weights only from safetensors (the packaged all-MiniLM-L6-v2 has them), never a pickle
    return SentenceTransformer(resolve_model(model), device=device, model_kwargs={"use_safetensors": True})


class EmbedBatch:
    """``map_batches`` UDF: adds an ``embedding`` column (float32, L2-normalised) for rows without a reason."""

    def __init__(self, model: str | None, batch_size: int, num_threads: int | None = None):
        if num_threads:
            import torch

            torch.set_num_threads(num_threads)
        self.model = load_embedder(model)
        self.batch_size = batch_size
        self.dim = self.model.get_embedding_dimension()

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        texts = [str(t) for t in batch["human_text"]]
        ok = np.array([not r for r in batch["reason"]], dtype=bool)
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if ok.any():
            emb = self.model.encode([t for t, k in zip(texts, ok) if k], batch_size=self.batch_size,
                                    normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
            out[ok] = emb.astype(np.float32)
        batch = dict(batch)
        batch["embedding"] = out
        return batch
