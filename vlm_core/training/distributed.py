"""Data parallelism for one training run: N processes (Ray Train workers, or any ``torch.distributed`` group: gloo on
CPU, NCCL on GPU) train one model and make the same update one process would.

How (``vlm_core.training.loop`` calls these): every rank walks the same global schedule of micro-batches (a pure
function of seed and epoch); each optimizer step's global batch (``batch_size × grad_accum`` samples) is split
across ranks by position (:func:`shard`: rank r takes samples r, r + N, …); the step's trainable tokens are summed
over all ranks first, each rank back-propagates its loss sum divided by that global count, and the gradients are
summed across ranks (:func:`reduce_gradients`: one flat all-reduce), so every rank holds the gradient of the global
batch's token-mean loss and applies the identical update. Validation is sharded the same way and its loss sums and
token counts reduced. A non-finite loss on any rank is made known to all (:func:`any_rank`) before anyone steps, so
every rank stops at the same step with no rank left waiting in a collective. Only rank 0 writes checkpoints and logs.

This is DDP's algorithm (an all-reduce of gradients after backward) without its wrapper: a rank whose share of a
short last step is empty still joins the all-reduce (the wrapper would wait for its backward), and the loss
normalisation is the global token count rather than DDP's mean over ranks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


@dataclass(frozen=True)
class World:
    """This process's place in the training run's process group (one process: rank 0 of 1)."""

    rank: int = 0
    size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def parallel(self) -> bool:
        return self.size > 1


def current_world() -> World:
    """The initialised ``torch.distributed`` group (Ray Train's ``TorchTrainer`` sets it up: gloo on CPU, NCCL on
    GPU), or a single process."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return World()
    return World(dist.get_rank(), dist.get_world_size())


def shard(items: Sequence[T], world: World) -> list[T]:
    """This rank's share of ``items``: positions rank, rank + N, … (every item on exactly one rank)."""
    return list(items[world.rank::world.size])


def _device() -> torch.device:
    """Where collectives run: NCCL needs CUDA tensors, gloo takes CPU ones."""
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def all_sum(values: Sequence[float], world: World) -> list[float]:
    """Each value summed over the ranks (float64, so counts and loss sums stay exact)."""
    if not world.parallel:
        return [float(v) for v in values]
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=_device())
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.cpu().tolist()


def any_rank(flag: bool, world: World) -> bool:
    """True on every rank when ``flag`` is true on any."""
    return bool(all_sum([1.0 if flag else 0.0], world)[0]) if world.parallel else flag


def reduce_gradients(params: Sequence[torch.nn.Parameter], world: World) -> None:
    """Sum every parameter's gradient over the ranks, in one flat all-reduce; a missing gradient (a rank with no
    sample in this step) counts as zeros."""
    if not world.parallel or not params:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads]).to(_device())
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    offset = 0
    for p, g in zip(params, grads):
        n = g.numel()
        p.grad = flat[offset:offset + n].view_as(g).to(g.device, g.dtype)
        offset += n
