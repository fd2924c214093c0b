"""Where a model comes from: a hub id at a pinned revision, a local folder, or an assets folder holding both.

Every ``from_pretrained`` of the project (weights, config, tokenizer, image processor; vision encoder, LLM,
embedder, translator) goes through :func:`resolve`, so a pinned ``revision`` reaches all of them, and through
:func:`load_weights` for weights, which are read from safetensors only (a ``pytorch_model.bin`` is a pickle that
can run code when loaded; ``vlm-sweep assets convert`` turns a pickle-only folder into a safetensors one).

An *assets folder* (``vlm-sweep assets download --preset paper --to DIR``) holds every hub model a preset uses,
fetched once at its pinned revision, as ``DIR/<owner>--<name>/<revision>/``. Point a run at it with
``--assets DIR`` (``sweep``, ``data build``: they rewrite the configs they send to Ray workers) or
``VLM_SWEEP_ASSETS=DIR`` (read by :func:`resolve` in the process that loads, e.g. ``train``, ``chat``, and as the
default of ``--assets``): a hub id whose pinned copy is there loads from it, so a cluster's trial workers never
each download the models from the hub.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..base.errors import ModelSourceError

log = logging.getLogger(__name__)

ASSETS_ENV = "VLM_SWEEP_ASSETS"
"""Environment variable naming an assets folder (read where models load; the default of ``--assets``)."""
ASSETS_MANIFEST = "assets.json"
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
PICKLED_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json", "model.ckpt", "tf_model.h5")

# The hub repositories the presets and the documented translator use, each pinned to a commit that holds
# safetensors weights. (Commit ids: see the comment on each line; ``vlm-sweep assets download`` fetches these.)
TINYCLIP = "wkcn/TinyCLIP-ViT-40M-32-Text-19M-LAION400M"
LLAMA32_1B = "alpindale/Llama-3.2-1B-Instruct"
MINILM = "sentence-transformers/all-MiniLM-L6-v2"
OPUS_MT_EN_ID = "Helsinki-NLP/opus-mt-en-id"
PINNED_REVISIONS: dict[str, str] = {
    # 95ec819 "Adding `safetensors` variant of this model (#2)", the head of main: model.safetensors (337 MB).
    # Before it (688ce44 "model ckpt", b85bc5a, f221fb4) the repo held pytorch_model.bin only.
    TINYCLIP: "95ec8197b3f2fe7f747865c61ca556cf0768b2f7",
    # f92201d "Upload folder using huggingface_hub": model.safetensors (2.47 GB), config, tokenizer, template.
    LLAMA32_1B: "f92201d8185818a9d079b3b52efdab4b68bdd17f",
    # ce0dbbf "Delete onnx/model.onnx", on main after #53 added model.safetensors (90.9 MB).
    MINILM: "ce0dbbfefc15629ec53a6bf960220076679cef83",
    # main holds only pytorch_model.bin + tf_model.h5; the conversion bot's open PR #2 (head 916d091 when
    # checked) adds model.safetensors (291 MB). Pinned by its ref: no full commit id was at hand offline.
    OPUS_MT_EN_ID: "refs/pr/2",
}
"""hub id → the commit the presets and the documented translator command pin."""


def is_local(source: str) -> bool:
    """A path (``./x``, ``/x``, ``~/x`` or anything that exists) rather than a hub id."""
    return source.startswith((".", "/", "~")) or Path(source).expanduser().exists()


def check_model_source(source: str, what: str, marker: tuple[str, ...] = ("config.json",)) -> None:
    """Fail early, by name, on a local path that does not hold a model (hub ids are left to :func:`resolve`)."""
    if is_local(source) and not any((Path(source).expanduser() / m).is_file() for m in marker):
        raise ModelSourceError(
            f"{what} {source!r}: no {' or '.join(marker)} there. Pass a folder written by save_pretrained (or by "
            f"`vlm-sweep assets download` / `assets convert`), a hub id (on a machine with hub access), or 'tiny'.")


def assets_dir(explicit: str | None = None) -> Path | None:
    """The assets folder in force: ``explicit``, else ``$VLM_SWEEP_ASSETS``, else none."""
    value = explicit or os.environ.get(ASSETS_ENV)
    return Path(value).expanduser() if value else None


def asset_folder(root: str | Path, repo_id: str, revision: str | None) -> Path:
    """Where ``repo_id`` at ``revision`` lives inside an assets folder."""
    return Path(root) / repo_id.replace("/", "--") / (revision or "main").replace("/", "--")


@dataclass(frozen=True)
class Resolved:
    """What to pass to ``from_pretrained``: a folder or hub id, plus ``revision`` for a hub id."""

    path: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    hub_id: str | None = None
    revision: str | None = None


def resolve(source: str, revision: str | None, what: str, assets: str | None = None,
            marker: tuple[str, ...] = ("config.json",)) -> Resolved:
    """``source`` (hub id or folder) at ``revision`` → where to load it from.

    A local folder is used as it is (``revision`` does not apply to it). A hub id loads from the assets folder
    when it holds that revision, else from the hub (or transformers' cache) at ``revision``; an unpinned hub id
    is allowed but logged, since ``main`` can change under a running study."""
    if is_local(source):
        check_model_source(source, what, marker)
        return Resolved(str(Path(source).expanduser()))
    if not HUB_ID.match(source):
        raise ModelSourceError(f"{what} {source!r} is neither a local folder nor a hub id (owner/name)")
    root = assets_dir(assets)
    local = _assets_copy(root, source, revision, what) if root is not None else None
    if local is not None:
        return Resolved(str(local), hub_id=source, revision=revision)
    if revision is None:
        log.warning("%s: hub id %s has no pinned revision; set %s.revision to a commit id so that every trial "
                    "loads the same files", what, source, what.rsplit(".", 1)[0])
    return Resolved(source, {"revision": revision} if revision else {}, hub_id=source, revision=revision)


def _assets_copy(root: Path, source: str, revision: str | None, what: str) -> Path | None:
    """The assets folder's copy of hub id ``source`` at ``revision``, or None (said: it loads from the hub)."""
    local = asset_folder(root, source, revision)
    if local.is_dir():
        return local
    log.warning("%s: %s@%s is not in the assets folder %s; loading it from the hub", what, source,
                revision or "main", root)
    return None


def localize(source: str, revision: str | None, assets: str | None, what: str = "model") -> str:
    """``source`` itself, or the assets folder's copy of it at ``revision`` when there is one (the sweep rewrites
    trial configs with this, so a trial names the exact folder it loaded)."""
    if assets is None or is_local(source) or not HUB_ID.match(source):
        return source
    local = _assets_copy(Path(assets).expanduser().resolve(), source, revision, what)
    return str(local) if local is not None else source


def pickled_only(folder: str | Path) -> list[str]:
    """The pickled weight files of a folder that has no safetensors (empty when it has them, or none at all)."""
    folder = Path(folder)
    if not folder.is_dir() or any(folder.glob("*.safetensors")):
        return []
    return sorted(p.name for p in folder.iterdir() if p.name in PICKLED_WEIGHTS or re.match(
        r"pytorch_model-\d+-of-\d+\.bin$", p.name))


def convert_hint(source: str) -> str:
    return (f"vlm-sweep does not load pickled weights (pytorch_model.bin can run code when loaded). Convert the "
            f"folder once: `vlm-sweep assets convert {source} {source.rstrip('/')}-safetensors` (reads the pickle "
            f"with weights_only=True), or pin a revision that has safetensors")


def _unreachable(what: str, r: Resolved, e: OSError) -> ModelSourceError:
    reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
    return ModelSourceError(
        f"{what} {r.hub_id}@{r.revision or 'main'} cannot be loaded from the hub or its local cache ({reason}); "
        f"check that this revision has safetensors weights; on a machine without hub access fetch it once with "
        f"`vlm-sweep assets download` and pass --assets DIR (or {ASSETS_ENV}=DIR), or pass a local folder")


def load_weights(cls, source: str, revision: str | None, what: str, assets: str | None = None, **kwargs):
    """``cls.from_pretrained`` of ``source`` at ``revision``, weights from safetensors only."""
    r = resolve(source, revision, what, assets)
    if pickled_only(r.path):
        raise ModelSourceError(f"{what} {source!r} has only {', '.join(pickled_only(r.path))}, no safetensors "
                               f"weights. {convert_hint(r.path)}")
    try:
        return cls.from_pretrained(r.path, use_safetensors=True, **r.kwargs, **kwargs)
    except OSError as e:
        from_hub = bool(r.hub_id) and r.path == r.hub_id
        if "safetensors" in str(e) and not from_hub:
            raise ModelSourceError(f"{what} {source!r} has no safetensors weights. {convert_hint(r.path)}") from e
        if from_hub:  # offline, a revision without safetensors, or one not cached: transformers cannot tell them apart
            raise _unreachable(what, r, e) from e
        raise


def load_files(cls, source: str, revision: str | None, what: str, assets: str | None = None,
               marker: tuple[str, ...] = ("config.json",), **kwargs):
    """``cls.from_pretrained`` for what is not weights (tokenizer, image processor, config) at ``revision``."""
    r = resolve(source, revision, what, assets, marker)
    try:
        return cls.from_pretrained(r.path, **r.kwargs, **kwargs)
    except OSError as e:
        if r.hub_id and r.path == r.hub_id and not isinstance(e, ModelSourceError):
            raise _unreachable(what, r, e) from e
        raise


def default_revision(source: str | None, revision: str | None) -> str | None:
    """``revision``, else the project's pin for a hub id it pins (``PINNED_REVISIONS``), else None."""
    return revision if revision is not None or source is None else PINNED_REVISIONS.get(source)
