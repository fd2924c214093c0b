"""Learning-rate schedules by registered name (``train.scheduler``; both warm up linearly from 0)."""

from __future__ import annotations

import math
from typing import Callable

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from ..base.registry import Registry
from ..config import choices


def _linear(warmup: int, total: int) -> Callable[[int], float]:
    def f(step: int) -> float:
        if step < warmup:
            return step / max(1, warmup)
        return max(0.0, (total - step) / max(1, total - warmup))
    return f


def _cosine(warmup: int, total: int) -> Callable[[int], float]:
    def f(step: int) -> float:
        if step < warmup:
            return step / max(1, warmup)
        progress = (step - warmup) / max(1, total - warmup)
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress))))
    return f


SCHEDULES: Registry[Callable[[int, int], Callable[[int], float]]] = Registry.implementing(choices.SCHEDULER)
SCHEDULES.add("linear", _linear)
SCHEDULES.add("cosine", _cosine)


def available_schedules() -> list[str]:
    return SCHEDULES.names()


def build_scheduler(name: str, optimizer: Optimizer, total_steps: int, warmup_ratio: float) -> LambdaLR:
    schedule = SCHEDULES[name]
    warmup = math.ceil(warmup_ratio * total_steps)
    return LambdaLR(optimizer, schedule(warmup, total_steps))
