"""Hub downloads (``vlm-sweep assets download``): every hub model a preset uses (vision encoder, LLM, its tokenizer
when separate, the embedder, and the documented translator), each at its pinned revision, without pickled / TF /
Flax / ONNX weights, into ``DIR/<owner>--<name>/<revision>/`` with a manifest ``DIR/assets.json``. Point runs at
it with ``--assets DIR`` or ``VLM_SWEEP_ASSETS=DIR`` (see ``vlm_core/assets/hub.py``).

    vlm-sweep assets download --preset paper --to DIR     # the preset's hub models (+ translator) into DIR
    vlm-sweep assets download --preset paper --to DIR --no-translator
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..base.errors import AssetError
from ..base.outputs import atomic_write_text
from ..config import VLMConfig
from .convert import SAFETENSORS_INDEX, is_weight_file
from .hub import ASSETS_MANIFEST, HUB_ID, MINILM, OPUS_MT_EN_ID, PINNED_REVISIONS, asset_folder, is_local

log = logging.getLogger(__name__)

# What a download fetches: safetensors weights, configs, tokenizer / processor files, chat templates; never
# pickled, TF, Flax, ONNX or other weights.
ALLOW_PATTERNS = ["*.safetensors", "*.json", "*.txt", "*.model", "*.spm", "*.jinja", "*.tiktoken",
                  "tokenizer*", "vocab*", "merges*"]
IGNORE_PATTERNS = ["*.bin", "*.bin.index.json", "*.h5", "*.h5.index.json", "*.msgpack", "*.msgpack.index.json",
                   "*.onnx", "*.ckpt*", "*.pt", "*.pth", "*.pkl", "*.ot", "*.tflite", "onnx/*", "openvino/*"]
EMBEDDER_ROLE = "embed.model"
TRANSLATOR_ROLE = "translate.model"


@dataclass
class HubAsset:
    """One hub repository at one revision, and which config fields use it."""

    repo_id: str
    """``owner/name`` on the hub."""
    revision: str | None
    """Commit (or branch / tag) fetched; None means the hub's default branch."""
    roles: list[str] = field(default_factory=list)
    """The config fields that name it, e.g. ``vision.source``, ``lm.tokenizer``, ``translate.model``."""

    @property
    def label(self) -> str:
        return f"{self.repo_id}@{self.revision or 'main'}"


def model_assets(cfg: VLMConfig, translator: bool = True) -> list[HubAsset]:
    """Every hub model ``cfg`` (a preset's model config) uses (vision encoder, LLM, its tokenizer when it is a
    separate hub id), the embedder, and with ``translator`` the documented en→id translator; each once, at its
    pinned revision."""
    wanted = [(cfg.vision.source, cfg.vision.revision, "vision.source"),
              (cfg.lm.source, cfg.lm.revision, "lm.source")]
    if cfg.lm.tokenizer:
        wanted.append((cfg.lm.tokenizer, cfg.lm.tokenizer_revision, "lm.tokenizer"))
    wanted.append((MINILM, PINNED_REVISIONS[MINILM], EMBEDDER_ROLE))
    if translator:
        wanted.append((OPUS_MT_EN_ID, PINNED_REVISIONS[OPUS_MT_EN_ID], TRANSLATOR_ROLE))
    assets: dict[tuple[str, str | None], HubAsset] = {}
    for source, revision, role in wanted:
        if not HUB_ID.match(source) or is_local(source):  # tiny / smollm2 / a local folder: nothing to fetch
            continue
        assets.setdefault((source, revision), HubAsset(source, revision)).roles.append(role)
    return list(assets.values())


def _one_line(text: str, limit: int = 300) -> str:
    return " ".join(str(text).split())[:limit]


def _hub_error(e: Exception, asset: HubAsset, endpoint: str) -> AssetError:
    """One line naming what could not be fetched, from where, and why."""
    from huggingface_hub import constants
    from huggingface_hub.errors import (
        GatedRepoError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    what = f"assets download: cannot fetch {asset.label} ({', '.join(asset.roles)}) from {endpoint}"
    cause = e.__cause__ if e.__cause__ is not None else e
    if isinstance(e, OfflineModeIsEnabled) or isinstance(cause, OfflineModeIsEnabled) or constants.HF_HUB_OFFLINE:
        return AssetError(f"{what}: HF_HUB_OFFLINE is set; unset it (and TRANSFORMERS_OFFLINE) to download")
    if isinstance(e, GatedRepoError):
        return AssetError(f"{what}: the repository is gated; accept its terms on the hub and set HF_TOKEN")
    if isinstance(e, RevisionNotFoundError):
        return AssetError(f"{what}: no such revision; fix the pinned revision (vlm_core/assets/hub.py "
                          f"PINNED_REVISIONS)")
    if isinstance(e, RepositoryNotFoundError):
        return AssetError(f"{what}: no such repository (or it is private: set HF_TOKEN)")
    return AssetError(f"{what}: {type(cause).__name__}: {_one_line(cause)}. Run it where the hub is reachable "
                      f"(HF_ENDPOINT, proxy settings), then copy the assets folder to the cluster")


def _has_safetensors(folder: Path) -> bool:
    index = folder / SAFETENSORS_INDEX
    if index.is_file():
        try:
            shards = set(json.loads(index.read_text())["weight_map"].values())
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError):
            return False
        return bool(shards) and all((folder / s).is_file() for s in shards)
    return any(folder.glob("*.safetensors"))


def _listing(folder: Path) -> list[dict[str, Any]]:
    return [{"path": p.relative_to(folder).as_posix(), "size": p.stat().st_size} for p in sorted(folder.rglob("*"))
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)]


def _complete(root: Path, entry: dict[str, Any]) -> bool:
    """True when a manifest entry's folder still holds every listed file at its recorded size."""
    folder = root / entry.get("folder", "")
    try:
        return folder.is_dir() and all((folder / f["path"]).is_file() and (folder / f["path"]).stat().st_size
                                       == f["size"] for f in entry["files"])
    except (KeyError, TypeError):
        return False


def _network_errors() -> tuple[type[BaseException], ...]:
    """The HTTP client errors huggingface_hub lets through (its client library changed across versions)."""
    errors: list[type[BaseException]] = []
    for module, name in (("httpx2", "HTTPError"), ("httpx", "HTTPError"), ("requests", "RequestException")):
        try:
            errors.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):
            continue
    return tuple(errors)


def download_assets(preset: str, model: VLMConfig, to: str | Path, translator: bool = True) -> dict[str, Any]:
    """Fetch every hub model of ``model``, preset ``preset``'s model config (see :func:`model_assets`), into the assets
    folder ``to``.

    Per model: one metadata request (no retries, bounded by ``HF_HUB_ETAG_TIMEOUT``, so an unreachable hub fails
    at once, naming the model and the endpoint; a revision without safetensors weights is refused before anything
    is fetched), then ``snapshot_download`` into a ``.partial`` sibling of ``hub.asset_folder(to, repo_id,
    revision)``, renamed into place once it holds safetensors weights. Models already there, complete, per
    ``to/assets.json``, are not fetched again. Writes ``to/assets.json`` atomically and returns it."""
    from huggingface_hub import HfApi, constants, snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled

    hub_errors = (HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled) + _network_errors()
    root = Path(to).expanduser()
    assets = model_assets(model, translator)
    root.mkdir(parents=True, exist_ok=True)
    manifest_path = root / ASSETS_MANIFEST
    previous: dict[tuple[str, str], dict] = {}
    if manifest_path.is_file():
        try:
            previous = {(m["repo_id"], m["revision"]): m for m in json.loads(manifest_path.read_text())["models"]}
        except (json.JSONDecodeError, KeyError, TypeError):
            log.warning("assets download: %s is unreadable; fetching everything again", manifest_path)
    endpoint = constants.ENDPOINT
    api = HfApi(endpoint=endpoint)
    entries: dict[tuple[str, str], dict] = {k: m for k, m in previous.items() if _complete(root, m)}
    for asset in assets:
        key = (asset.repo_id, asset.revision or "main")
        final = asset_folder(root, asset.repo_id, asset.revision)
        if key in entries:
            entries[key]["roles"] = asset.roles
            print(f"{asset.label}: already in {final}", flush=True)
            continue
        partial = final.with_name(final.name + ".partial")
        print(f"{asset.label}: fetching from {endpoint} into {final}", flush=True)
        try:
            # bounded (HF_HUB_ETAG_TIMEOUT, 10 s): an unanswering endpoint fails in seconds, not never
            info = api.model_info(asset.repo_id, revision=asset.revision, timeout=constants.HF_HUB_ETAG_TIMEOUT)
            names = sorted(s.rfilename for s in info.siblings or [])
            if not any(n.endswith(".safetensors") for n in names):
                raise AssetError(_no_safetensors(asset, [n for n in names if is_weight_file(n)]))
            snapshot_download(asset.repo_id, revision=asset.revision, local_dir=partial, endpoint=endpoint,
                              allow_patterns=ALLOW_PATTERNS, ignore_patterns=IGNORE_PATTERNS)
        except hub_errors as e:
            raise _hub_error(e, asset, endpoint) from e
        if not _has_safetensors(partial):
            raise AssetError(_no_safetensors(asset, [f["path"] for f in _listing(partial)]))
        if final.exists():
            shutil.rmtree(final)  # an incomplete earlier copy the manifest does not vouch for
        os.replace(partial, final)
        files = _listing(final)
        entries[key] = {"repo_id": asset.repo_id, "revision": asset.revision or "main", "commit": info.sha,
                        "folder": final.relative_to(root).as_posix(), "roles": asset.roles, "files": files,
                        "bytes": sum(f["size"] for f in files)}
        # after each model: a later failure keeps what was fetched
        atomic_write_text(manifest_path, json.dumps(_manifest(preset, endpoint, entries), indent=2) + "\n")
    manifest = _manifest(preset, endpoint, entries)
    atomic_write_text(manifest_path, json.dumps(manifest, indent=2) + "\n")
    return manifest


def _manifest(preset: str, endpoint: str, entries: dict[tuple[str, str], dict]) -> dict[str, Any]:
    return {"preset": preset, "endpoint": endpoint,
            "models": sorted(entries.values(), key=lambda m: (m["repo_id"], m["revision"]))}


def _no_safetensors(asset: HubAsset, got: list[str]) -> str:
    return (f"assets download: {asset.label} ({', '.join(asset.roles)}) has no safetensors weights at that "
            f"revision (it has: {', '.join(got) or 'no weights'}); pin a revision that has them (e.g. the hub's "
            f"safetensors conversion, refs/pr/N), or fetch its pytorch_model.bin yourself, run `vlm-sweep assets "
            f"convert SRC DST` and point {asset.roles[0]} at DST")
