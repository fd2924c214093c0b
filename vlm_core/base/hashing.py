"""Hashes, each written once: of a file's bytes (checkpoints, sources, dictionaries), of a JSON-able value (cache
keys, trial identities) and of a seeded id (train / val split, sampling order). The formulas are stable: cache
keys, Train run names and splits made before stay valid.

    >>> from vlm_core.base.hashing import json_digest
    >>> json_digest({'a': 1}, 10)
    'f9d86028c6'
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

CHUNK = 1 << 22


def file_sha256(path: str | Path) -> str:
    """sha256 hex digest of a file's bytes, read in 4 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def json_digest(value: Any, length: int | None = None) -> str:
    """sha256 hex digest of ``value`` as canonical JSON (sorted keys; non-JSON values by ``str``), cut to
    ``length`` characters."""
    digest = hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()
    return digest[:length] if length else digest


def text_digest(text: str, length: int | None = None) -> str:
    """sha256 hex digest of a UTF-8 string, cut to ``length`` characters."""
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    return digest[:length] if length else digest


def seeded_digest(seed: int, key: str) -> bytes:
    """sha256 of ``"{seed}:{key}"``: a seeded, order-independent pseudo-random value per id."""
    return hashlib.sha256(f"{seed}:{key}".encode()).digest()


def unit_interval(seed: int, key: str) -> float:
    """``seeded_digest`` as a number in [0, 1) (its first 8 bytes, big-endian)."""
    return int.from_bytes(seeded_digest(seed, key)[:8], "big") / 2**64
