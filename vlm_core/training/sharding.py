"""Sharded stage 2 (``train.sharding: fsdp``): the trainable model's weights, gradients and optimizer state are split
over the ranks of a data-parallel run (PyTorch FSDP2, ``fully_shard``), so an LLM whose fp32 weights + AdamW state do
not fit one GPU still trains; each rank holds 1/N of them and gathers one decoder layer at a time.

What is sharded: every decoder layer of the LLM is its own unit (gathered for its forward and its backward, freed
after); the rest of the model — embeddings, the (tied) LM head, the final norm and the projector — is the root unit,
gathered for the whole forward of the vision-language model (the projector's output is spliced into the LLM's
embeddings inside that forward). The frozen vision encoder is left out (``ignored_params``): every rank keeps its own
copy, as in data-parallel runs. On CUDA under bf16 autocast the units are gathered in bf16 and gradients reduced in
fp32 (``MixedPrecisionPolicy``); the master weights and AdamW state stay fp32 as in unsharded runs.

The update is the data-parallel one (:mod:`vlm_core.training.distributed`): each rank back-propagates its share's
loss sum divided by the global token count, and gradients are *summed* over ranks (FSDP's reduce-scatter with divide
factor 1). FSDP's collectives run inside every forward and backward, so the ranks keep in lockstep: a rank whose
share of a micro-batch is empty runs a zero-weight forward of one of that micro-batch's samples
(:func:`lockstep_batches` sizes the same padding for validation), and a non-finite loss is agreed on after each
forward, before anyone's backward.

Checkpoints stay what unsharded runs write (full safetensors, rank 0): :func:`full_weights` and
:func:`gather_optimizer_state` gather them (collectives: every rank calls them); resuming loads the weights before
sharding and the optimizer state with ``set_optimizer_state_dict``.

LoRA (``lm_tuning: lora``) is not sharded: its frozen base LLM in bf16 is what LoRA exists to fit on one GPU.

    pytest -q tests/test_distributed.py
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
from torch import nn

from ..config import TrainConfig
from .distributed import World

log = logging.getLogger(__name__)


def decoder_layers(lm: nn.Module) -> nn.ModuleList:
    """The LLM's stack of decoder layers (``model.layers`` of Llama / SmolLM2 / Qwen / Mistral in transformers)."""
    inner = getattr(lm, "model", None)
    layers = getattr(inner, "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise ValueError(f"train.sharding=fsdp: {type(lm).__name__} has no model.layers to shard; use "
                         f"train.sharding none")
    return layers


def is_sharded(model: nn.Module) -> bool:
    """Whether ``model`` was sharded by :func:`shard_model`."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def shard_model(model: nn.Module, cfg: TrainConfig, world: World, device: torch.device, gather_bf16: bool) -> bool:
    """Shard ``model`` (a VisionLanguageModel prepared for stage 2, on the CPU or ``device``) over ``world`` and move
    the shards to ``device``; ``gather_bf16``: gather weights in bf16 (CUDA under bf16 autocast). Returns False,
    leaving the model unsharded, when ``cfg.sharding`` is ``none`` or the run has one process."""
    if cfg.sharding != "fsdp":
        return False
    if not world.parallel:
        log.info("train.sharding=fsdp with one worker: nothing to shard, training unsharded")
        return False
    from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

    mp = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if gather_bf16
          else MixedPrecisionPolicy())
    for layer in decoder_layers(model.lm):
        fully_shard(layer, mp_policy=mp)
    fully_shard(model, mp_policy=mp, ignored_params=set(model.vision.parameters()))
    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.set_gradient_divide_factor(1.0)  # sum over ranks: the loss is already divided by global tokens
            module.set_force_sum_reduction_for_comms(True)  # a plain SUM (gloo has no PREMUL_SUM)
    model.to(device)
    log.info("train.sharding=fsdp: %d decoder layers + the root sharded over %d ranks (%s)",
             len(decoder_layers(model.lm)), world.size, "bf16 gather" if mp.param_dtype else "fp32")
    return True


def lockstep_batches(n: int, batch_size: int, world: World) -> int:
    """How many batches rank 0 — the rank with the most samples — makes of the first ``n`` samples sharded over
    ``world``: every rank of a sharded run runs that many forwards."""
    return math.ceil(math.ceil(n / world.size) / batch_size)


def _options():
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=True)


def full_weights(model: nn.Module) -> dict[str, torch.Tensor] | None:
    """A sharded model's full state dict on rank 0 (CPU tensors; empty on the other ranks; every rank calls it);
    None for an unsharded model, whose modules hold their whole weights."""
    if not is_sharded(model):
        return None
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(model, options=_options())


def gather_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """What a checkpoint keeps of the optimizer: a sharded model's full state keyed by parameter name, on rank 0
    (empty on the others; every rank calls it); an unsharded model's ``optimizer.state_dict()`` (keyed by position)."""
    if not is_sharded(model):
        return optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer, options=_options())


def restore_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Put :func:`gather_optimizer_state`'s output back, on a sharded model's shards or an unsharded one: either
    layout resumes either way (a data-parallel run's checkpoint resumed with fsdp, or back)."""
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    if not is_sharded(model):
        optimizer.load_state_dict(optimizer_state_by_index(state, names))
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(model, optimizer, optim_state_dict=optimizer_state_by_name(state, names),
                             options=StateDictOptions(full_state_dict=True))


def optimizer_state_by_name(state: dict[str, Any], names: list[str]) -> dict[str, Any]:
    """An optimizer state dict keyed by parameter name (:func:`gather_optimizer_state`'s layout for a sharded
    model); ``state`` may be either layout (``torch.optim``'s own keys parameters by position: ``names[i]`` is the
    i-th)."""
    if all(isinstance(p, str) for g in state["param_groups"] for p in g["params"]):
        return state
    return {"state": {names[i]: v for i, v in state["state"].items()},
            "param_groups": [{**g, "params": [names[i] for i in g["params"]]} for g in state["param_groups"]]}


def optimizer_state_by_index(state: dict[str, Any], names: list[str]) -> dict[str, Any]:
    """The inverse of :func:`optimizer_state_by_name`: ``torch.optim``'s own layout, from either."""
    if all(isinstance(p, int) for g in state["param_groups"] for p in g["params"]):
        return state
    index = {n: i for i, n in enumerate(names)}
    return {"state": {index[n]: v for n, v in state["state"].items()},
            "param_groups": [{**g, "params": [index[n] for n in g["params"]]} for g in state["param_groups"]]}


def grad_norm_value(norm: torch.Tensor) -> float:
    """``clip_grad_norm_``'s total norm as a number (a DTensor when the gradients are sharded)."""
    full = getattr(norm, "full_tensor", None)
    return float(full() if full is not None else norm)
