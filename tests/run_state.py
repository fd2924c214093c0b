"""What two training runs must agree on when a test says they are "the same": every trained weight in their
checkpoints (the projector, the LLM's shards or its LoRA adapters) and the AdamW state that continues them
(``exp_avg``, ``exp_avg_sq``, ``step`` per parameter, from ``training_state.pt``; the layout is in
vlm_core/training/checkpoint.py), plus the per-step log. Helpers for the tests, not a test module.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

TRAINING_STATE = "training_state.pt"


def checkpoint_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """Every tensor of every weight file of a checkpoint folder, keyed ``file:tensor`` (``projector.safetensors``,
    ``lm/*.safetensors``, ``lm_adapter/adapter_model.safetensors``)."""
    path = Path(path)
    out = {}
    for f in sorted(path.rglob("*.safetensors")):
        for k, v in load_file(f).items():
            out[f"{f.relative_to(path)}:{k}"] = v
    assert out, f"{path} holds no weights"
    return out


def optimizer_moments(path: str | Path) -> dict[str, torch.Tensor]:
    """The AdamW state a checkpoint resumes with, loaded as the loop loads it (``weights_only=True``), keyed
    ``<parameter key>:<exp_avg|exp_avg_sq|step>``, plus the scheduler's position (``scheduler:last_epoch``)."""
    state = torch.load(Path(path) / TRAINING_STATE, weights_only=True, map_location="cpu")
    out = {}
    for key, moments in state["optimizer"]["state"].items():
        for name in ("exp_avg", "exp_avg_sq", "step"):
            out[f"{key}:{name}"] = torch.as_tensor(moments[name])
    assert out, f"{path}: the optimizer holds no state"
    out["scheduler:last_epoch"] = torch.tensor(state["scheduler"]["last_epoch"])
    return out


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """The largest absolute element difference between two tensor dicts with the same keys and shapes."""
    assert a.keys() == b.keys(), sorted(set(a) ^ set(b))[:5]
    worst = 0.0
    for k in a:
        assert a[k].shape == b[k].shape, k
        if a[k].numel():
            worst = max(worst, (a[k].double() - b[k].double()).abs().max().item())
    return worst


def assert_identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], what: str) -> None:
    """Bit for bit (``torch.equal``), naming the first tensor that differs and by how much."""
    assert a.keys() == b.keys(), f"{what}: different tensors {sorted(set(a) ^ set(b))[:5]}"
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, (f"{what}: {len(differ)} of {len(a)} tensors differ (first {differ[0]}); largest "
                        f"difference {max_difference(a, b):.3g}")


def step_log(run_dir: str | Path) -> list[dict]:
    """``metrics.jsonl``: one record per optimizer step (step, epoch, loss, lr, grad_norm, tokens, seconds)."""
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines() if line]


def same_steps(a: list[dict], b: list[dict], keys=("step", "epoch", "loss", "lr", "grad_norm", "tokens")) -> None:
    """Two step logs agree exactly on what was trained at every step (the wall time aside)."""
    a, b = [{k: r[k] for k in keys} for r in a], [{k: r[k] for k in keys} for r in b]
    assert len(a) == len(b), f"{len(a)} steps against {len(b)}"
    for x, y in zip(a, b):
        assert x == y, f"the step logs part at step {x['step']}: {x} against {y}"


def same_epochs(a: list[dict], b: list[dict], keys=("epoch", "step", "train_loss", "val_loss", "lr")) -> None:
    """Two runs' per-epoch results (``TrainResult.epoch_metrics``, or what a trial reported) agree exactly."""
    a, b = [{k: r[k] for k in keys if k in r} for r in a], [{k: r[k] for k in keys if k in r} for r in b]
    assert len(a) == len(b), f"{len(a)} epochs against {len(b)}"
    for x, y in zip(a, b):
        assert x == y, f"the runs part at epoch {x.get('epoch')}: {x} against {y}"
