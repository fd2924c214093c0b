"""Pickle → safetensors (``vlm-sweep assets convert SRC DST``): vlm-sweep loads weights from safetensors only (a
``pytorch_model.bin`` is a pickle, which can run code when loaded). A local folder with only pickled weights
(``pytorch_model.bin``, or shards + ``pytorch_model.bin.index.json``) is read once with
``torch.load(weights_only=True)`` (tensors only: a pickle that would run code is refused unrun) and written as
``model.safetensors`` (or shards + ``model.safetensors.index.json``) with its config, generation config,
tokenizer and processor files, to a new folder, atomically.

    vlm-sweep assets convert models/opus-mt-en-id models/opus-mt-en-id-st
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path
from typing import Any

from ..base.errors import AssetError
from ..base.outputs import atomic_dir

log = logging.getLogger(__name__)

SINGLE_PICKLE = "pytorch_model.bin"
PICKLE_INDEX = "pytorch_model.bin.index.json"
PICKLE_SHARD = re.compile(r"^pytorch_model-(\d+)-of-(\d+)\.bin$")
SAFETENSORS_INDEX = "model.safetensors.index.json"
# Files never copied into a converted folder: weights of any framework (pickles above all) and their indexes.
WEIGHT_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".h5", ".msgpack", ".onnx", ".ot", ".tflite",
                   ".safetensors", ".gguf", ".npz", ".joblib")
WEIGHT_INDEXES = (".bin.index.json", ".h5.index.json", ".msgpack.index.json", ".safetensors.index.json")


def is_weight_file(name: str) -> bool:
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


def load_pickle(path: Path) -> dict[str, Any]:
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
        if any(part.startswith(".") for part in rel.parts) or not path.is_file() or is_weight_file(path.name):
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
            state, n_cloned = _unshared(load_pickle(path))
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
