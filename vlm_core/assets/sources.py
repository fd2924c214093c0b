"""Where a model's weights come from, decided in one place.

A config names each model's ``source`` (``vision.source``, ``lm.source``, ``lm.tokenizer``) as one of four kinds:

* ``tiny`` — no weights: a seeded random init of the sizes the config gives (tests and smoke runs);
* a *packaged* name — weights a package ships, converted once into the asset cache; which names a field accepts is
  the model's to say (``smollm2`` for the LLM, ``packaged`` for the EfficientNet-Lite0 encoder);
* a local folder — a ``save_pretrained`` folder (or a packaged model's converted folder);
* a hub id — ``owner/name`` at ``revision``, from an assets folder when one holds it (``vlm_core.assets.hub``).

:func:`model_source` classifies a source once; :meth:`ModelSource.load` turns it into a loaded model or a seeded
random one, :meth:`ModelSource.load_files` loads what is not weights (tokenizer, config, image processor), and
:meth:`ModelSource.fingerprint` says what identifies the weights (the feature cache's key).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import torch

from ..base.errors import ModelSourceError
from .hub import HUB_ID, is_local, load_files, load_weights

M = TypeVar("M")
RANDOM = "tiny"
"""The source that means "no weights: a seeded random init"."""
Kind = Literal["random", "packaged", "folder", "hub"]


@dataclass(frozen=True)
class ModelSource:
    """A config's ``source`` (+ ``revision``), classified."""

    kind: Kind
    source: str
    """The config's value."""
    revision: str | None
    """The hub revision (``hub`` only; a folder or packaged model has none)."""
    what: str
    """The config field, for messages (``lm.source``)."""
    packaged: Callable[[], Path] | None = field(default=None, compare=False, repr=False)
    """``packaged``: the converted folder, built once on first use."""

    @property
    def is_random(self) -> bool:
        return self.kind == "random"

    def path(self) -> str:
        """What ``from_pretrained`` reads: the folder, or the hub id (a random source has none)."""
        if self.kind == "random":
            raise ModelSourceError(f"{self.what} {self.source!r} is a random init: it has no files to load")
        if self.kind == "packaged":
            return str(self.packaged())
        return str(Path(self.source).expanduser()) if self.kind == "folder" else self.source

    def load(self, cls: Any, *, random: Callable[[], M], seed: int = 0, **kwargs) -> M:
        """The model: ``random()`` under ``seed`` (the caller's RNG untouched) for ``tiny``, else
        ``cls.from_pretrained`` of the folder or hub id at its revision, weights from safetensors only (``kwargs``
        go to it)."""
        if self.kind == "random":
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                return random()
        return load_weights(cls, self.path(), self.revision, self.what, **kwargs)

    def load_files(self, cls: Any, marker: tuple[str, ...] = ("config.json",), **kwargs):
        """``cls.from_pretrained`` for what is not weights (tokenizer, config, image processor)."""
        return load_files(cls, self.path(), self.revision, self.what, marker=marker, **kwargs)

    def fingerprint(self) -> dict[str, Any]:
        """What identifies the weights beyond the config: nothing for a seeded init, the package for a packaged
        model (its pinned version ships them), a folder's files (name, size, mtime), a hub id at its revision."""
        if self.kind == "random":
            return {"tiny": True}
        if self.kind == "packaged":
            return {"packaged": self.source}
        if self.kind == "folder":
            folder = Path(self.source).expanduser()
            if not folder.is_dir():
                raise ModelSourceError(f"{self.what} {self.source!r}: no such folder")
            files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in (".safetensors", ".json"))
            return {"files": [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in files]}
        return {"hub_id": self.source, "revision": self.revision}  # a pinned commit names the weights exactly


def model_source(source: str, revision: str | None, what: str,
                 packaged: Mapping[str, Callable[[], Path]] | None = None) -> ModelSource:
    """Classify ``source``: ``tiny``, one of the ``packaged`` names this field accepts, a local folder, or a hub
    id; anything else raises ``ModelSourceError`` naming the field and the choices."""
    packaged = packaged or {}
    if source == RANDOM:
        return ModelSource("random", source, None, what)
    if source in packaged:
        return ModelSource("packaged", source, None, what, packaged[source])
    if is_local(source):
        return ModelSource("folder", source, None, what)
    if HUB_ID.match(source):
        return ModelSource("hub", source, revision, what)
    names = ", ".join(repr(n) for n in [RANDOM, *packaged])
    raise ModelSourceError(f"{what} {source!r} is neither {names}, a local folder nor a hub id (owner/name)")
