"""Checkpoints: safetensors weights + JSON, written atomically, verified by hash on load.

Layout of a checkpoint folder::

    vlm_config.json          the VLMConfig (how to rebuild the model and format its inputs)
    checkpoint.json          stage, step, epoch, metrics, sha256 of every weight file, and the projector's
                             layer selection (``projector_selection``: which hidden states it was trained on)
    projector.safetensors    the projector (every stage)
    lm/                      stage 2 only: the LLM + tokenizer as a save_pretrained folder (safetensors)
    training_state.pt        optimizer / scheduler / RNG / position, for exact resumption
                             (plain tensors and numbers; loaded with torch.load(weights_only=True))

Nothing needs the training code's pickles: ``load_vlm(path)`` uses only the JSON and safetensors files.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from ..base.errors import CheckpointError
from ..base.hashing import file_sha256
from ..base.outputs import atomic_dir
from ..config import VLMConfig
from ..model.lora import ADAPTER_DIR, is_lora, load_adapters, save_adapters
from ..model.projectors import selects_layers
from ..model.vlm import VisionLanguageModel

log = logging.getLogger(__name__)

VLM_CONFIG = "vlm_config.json"
CHECKPOINT_META = "checkpoint.json"
PROJECTOR_FILE = "projector.safetensors"
LM_DIR = "lm"
TRAINING_STATE = "training_state.pt"


def save_checkpoint(model, path: str | Path, *, stage: int, step: int, epoch: float,
                    metrics: dict[str, Any] | None = None, training_state: dict[str, Any] | None = None,
                    weights: dict[str, torch.Tensor] | None = None) -> Path:
    """Write a checkpoint folder atomically. Stage 1 saves the projector; stage 2 also the LLM + tokenizer, or with
    LoRA only the LLM's adapters (``lm_adapter/``). ``weights``: the model's full state dict when ``model`` itself
    holds shards (``vlm_core.training.sharding.full_weights``); the files are the same either way."""
    path = Path(path)
    with atomic_dir(path) as tmp:
        (tmp / VLM_CONFIG).write_text(model.cfg.to_json())
        projector_state = (model.projector.state_dict() if weights is None else
                           {k.removeprefix("projector."): v for k, v in weights.items() if k.startswith("projector.")})
        projector_state = {k: v.detach().contiguous().cpu() for k, v in projector_state.items()}
        save_file(projector_state, tmp / PROJECTOR_FILE, metadata={"projector": model.cfg.projector.name})
        lora = stage == 2 and is_lora(model.lm)
        if lora:  # the adapters alone: the base LLM is rebuilt from the config
            save_adapters(model, tmp / ADAPTER_DIR)
        elif stage == 2:
            lm_state = None
            if weights is not None:
                lm_state = {k.removeprefix("lm."): v for k, v in weights.items() if k.startswith("lm.")}
                if model.lm.config.tie_word_embeddings:
                    lm_state.pop("lm_head.weight", None)  # the input embeddings' (save_pretrained drops it too)
            model.lm.save_pretrained(tmp / LM_DIR, state_dict=lm_state, safe_serialization=True)
            model.tokenizer.save_pretrained(tmp / LM_DIR)
        files = {str(p.relative_to(tmp)): file_sha256(p) for p in sorted(tmp.rglob("*.safetensors"))}
        meta = {"format_version": 1, "stage": stage, "step": step, "epoch": epoch, "metrics": metrics or {},
                "files": files, "projector_selection": model.projector.selection(),
                "lm_tuning": "lora" if lora else "full" if stage == 2 else None}
        if training_state is not None:
            torch.save(training_state, tmp / TRAINING_STATE)
            meta["training_state_sha256"] = file_sha256(tmp / TRAINING_STATE)
        (tmp / CHECKPOINT_META).write_text(json.dumps(meta, indent=2, sort_keys=True))
    return path


def keep_newest_and_best(candidates, newest: Path, metric: str = "val_loss") -> Path:
    """Remove every checkpoint folder of ``candidates`` except ``newest`` and the best by ``metric`` (as recorded in
    its ``checkpoint.json``; a missing or unreadable value ranks as inf, NaN after everything; ties: the first).
    Returns the best. The one retention rule of the training loop's epochs and of a sweep trial's run folder."""
    def score(p: Path) -> tuple[bool, float]:
        try:
            value = json.loads((Path(p) / CHECKPOINT_META).read_text()).get("metrics", {}).get(metric)
        except (OSError, ValueError):
            value = None
        value = math.inf if value is None else float(value)
        return math.isnan(value), value

    candidates = [Path(p) for p in candidates]
    best = min(candidates, key=score) if candidates else newest
    for p in candidates:
        if p not in (newest, best):
            shutil.rmtree(p, ignore_errors=True)
    return best


def read_meta(path: str | Path, verify: bool = True) -> dict[str, Any]:
    """Checkpoint metadata; with ``verify`` every weight file's hash is checked against it."""
    path = Path(path)
    meta_file = path / CHECKPOINT_META
    if not meta_file.is_file():
        raise CheckpointError(f"{path}: not a checkpoint (no {CHECKPOINT_META}); was it written completely?")
    meta = json.loads(meta_file.read_text())
    if verify:
        for rel, digest in meta["files"].items():
            f = path / rel
            if not f.is_file():
                raise CheckpointError(f"{path}: {rel} is missing")
            if file_sha256(f) != digest:
                raise CheckpointError(f"{path}: {rel} does not match its recorded sha256 (corrupt or modified)")
    return meta


def newest_usable(candidates) -> Path | None:
    """The newest (by recorded step) of the ``candidates`` folders whose files match their recorded hashes; each
    corrupt, half-written or foreign one is skipped with a warning naming it. None when none is usable."""
    dated = []
    for c in map(Path, candidates):
        try:
            dated.append((int(json.loads((c / CHECKPOINT_META).read_text())["step"]), str(c)))
        except (OSError, ValueError, KeyError, TypeError) as e:
            log.warning("skipping checkpoint %s: no readable %s (%s)", c, CHECKPOINT_META, e)
    for _, c in sorted(dated, reverse=True):
        try:
            read_meta(c)
            return Path(c)
        except CheckpointError as e:
            log.warning("skipping checkpoint %s", e)
    return None


def resume_point(path: str | Path) -> Path:
    """What ``train --resume PATH`` continues from: PATH itself when it is a checkpoint, else the newest usable
    checkpoint under ``PATH`` or ``PATH/checkpoints`` (a run folder), skipping corrupt ones."""
    path = Path(path)
    if (path / CHECKPOINT_META).is_file():
        return path
    root = path / "checkpoints" if (path / "checkpoints").is_dir() else path
    found = newest_usable(p for p in sorted(root.glob("*")) if p.is_dir() and not p.name.startswith("."))
    if found is None:
        raise CheckpointError(f"{path}: no usable checkpoint to resume from (none, or all corrupt: see the "
                              f"warnings above); start the run again without --resume")
    return found


def load_vlm_config(path: str | Path, trust_remote_code: bool = False) -> VLMConfig:
    """The checkpoint's model config. A checkpoint cannot opt itself into running hub code: its own
    ``lm.trust_remote_code`` is ignored (with a warning) unless the caller passes ``trust_remote_code=True``."""
    path = Path(path)
    cfg = VLMConfig.from_dict(json.loads((path / VLM_CONFIG).read_text()))
    if cfg.lm.trust_remote_code and not trust_remote_code:
        log.warning("%s asks for lm.trust_remote_code; ignored (pass trust_remote_code=True to allow it)", path)
    cfg.lm.trust_remote_code = trust_remote_code
    if (path / LM_DIR / "config.json").is_file():
        cfg.lm.source = str((path / LM_DIR).resolve())  # stage 2: the fine-tuned LLM travels with it
        cfg.lm.tokenizer = cfg.lm.tokenizer_revision = None  # ... and so does its tokenizer
        cfg.lm.revision = None  # a local folder: no hub revision applies
    return cfg


def check_projector_selection(path: str | Path, projector=None) -> None:
    """Refuse a checkpoint whose projector was trained on other hidden states than ``projector`` selects.

    A checkpoint records ``projector.selection()``. One without the record was written before selections were
    recorded (scheme 1): for linear / MLP projectors the main feature was the same and it loads; a dense one
    (DCI then averaged ``hidden_states[1..L]``, SCI/STI picked ``round(k·L/G)``) is refused — loading its weights
    onto the new grouping would run silently on features it never saw. Without ``projector`` only that record's
    presence is checked (the sweep does so before any trial)."""
    path = Path(path)
    recorded = json.loads((path / CHECKPOINT_META).read_text()).get("projector_selection")
    name = json.loads((path / VLM_CONFIG).read_text()).get("projector", {}).get("name", "mlp2x_gelu")
    if recorded is None:
        if selects_layers(name):
            now = f"; this code selects {json.dumps(projector.selection())}" if projector is not None else ""
            raise CheckpointError(
                f"{path}: a {name} checkpoint written before layer selections were recorded (scheme 1: DCI groups "
                f"of hidden_states[1..L], SCI/STI layers round(k*L/G)){now}. Its weights do not fit the reference "
                f"grouping; train stage 1 of this config again (a new --out, or --stage all without --resume)")
        return
    if projector is not None:
        current = json.loads(json.dumps(projector.selection()))
        if recorded != current:
            raise CheckpointError(f"{path}: its projector was trained on the layer selection {json.dumps(recorded)}, "
                                  f"this model's is {json.dumps(current)}; load it with the config it was trained "
                                  f"with (its vlm_config.json), or train it again")


def load_projector(model, path: str | Path) -> None:
    check_projector_selection(path, model.projector)
    state = load_file(Path(path) / PROJECTOR_FILE)
    missing, unexpected = model.projector.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{path}: projector weights do not fit {model.cfg.projector.name} "
                              f"(missing {missing}, unexpected {unexpected})")


def load_vlm(path: str | Path, verify: bool = True, trust_remote_code: bool = False):
    """Rebuild a trained model from a checkpoint folder (safetensors + JSON only)."""
    read_meta(path, verify=verify)
    model = VisionLanguageModel.build(load_vlm_config(path, trust_remote_code))
    load_projector(model, path)
    if (Path(path) / ADAPTER_DIR).is_dir():  # LoRA: the base LLM from the config, its adapters from here
        load_adapters(model, Path(path) / ADAPTER_DIR)
    return model


def load_training_state(path: str | Path) -> dict[str, Any]:
    """Optimizer/scheduler/RNG state, hash-checked, loaded with ``weights_only=True`` (no arbitrary pickles)."""
    f = Path(path) / TRAINING_STATE
    meta = read_meta(path)
    if not f.is_file() or "training_state_sha256" not in meta:
        raise CheckpointError(f"{path}: no {TRAINING_STATE}; this checkpoint cannot resume training")
    if file_sha256(f) != meta["training_state_sha256"]:
        raise CheckpointError(f"{path}: {TRAINING_STATE} does not match its recorded sha256 (corrupt or modified)")
    return torch.load(f, weights_only=True, map_location="cpu")


def load_lm_weights(model, path: str | Path) -> None:
    """Load a stage-2 checkpoint's LLM weights (every safetensors shard; with LoRA its adapters) into ``model.lm``."""
    if (Path(path) / ADAPTER_DIR).is_dir():
        load_adapters(model, Path(path) / ADAPTER_DIR, trainable=True)
        return
    shards = sorted((Path(path) / LM_DIR).glob("*.safetensors"))
    if not shards:
        raise CheckpointError(f"{path}: no {LM_DIR}/*.safetensors; not a stage-2 checkpoint")
    state: dict[str, torch.Tensor] = {}
    for shard in shards:
        state.update(load_file(shard))
    missing, unexpected = model.lm.load_state_dict(state, strict=False)
    tied = {k for k in missing if model.lm.config.tie_word_embeddings and k.startswith("lm_head")}
    if set(missing) - tied or unexpected:
        raise CheckpointError(f"{path}: LLM weights do not fit (missing {sorted(set(missing) - tied)[:5]}, "
                              f"unexpected {sorted(unexpected)[:5]})")


def export_weights(src: str | Path, dst: str | Path) -> Path:
    """Publish a checkpoint's weights (not its training state) at ``dst``, hard-linked where possible."""
    src, dst = Path(src), Path(dst)

    def link_or_copy(a, b):
        try:
            os.link(a, b)
        except OSError:
            shutil.copy2(a, b)

    with atomic_dir(dst) as tmp:
        shutil.copytree(src, tmp, dirs_exist_ok=True, copy_function=link_or_copy,
                        ignore=shutil.ignore_patterns(TRAINING_STATE))
        meta = json.loads((tmp / CHECKPOINT_META).read_text())
        meta.pop("training_state_sha256", None)
        (tmp / CHECKPOINT_META).unlink()  # a hard link: never rewrite it in place
        (tmp / CHECKPOINT_META).write_text(json.dumps(meta, indent=2, sort_keys=True))
    return dst
