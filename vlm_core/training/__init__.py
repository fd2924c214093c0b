"""One stage of one config: ``one_stage`` (build, load data, train, write the final checkpoint: what a Ray Train worker
calls), ``loop`` (the optimizer steps, epochs and exact resumption), ``batching``, ``precision``, ``validation``,
``schedules``, ``stages`` (what each stage trains), ``checkpoint``, ``distributed`` (data parallelism), ``sharding``
(FSDP) and ``faults`` (fault injection for tests)."""

from __future__ import annotations

from .checkpoint import load_vlm, save_checkpoint
from .loop import StepLog, TrainResult, train
from .one_stage import DataSpec, run_stage

__all__ = ["DataSpec", "StepLog", "TrainResult", "load_vlm", "run_stage", "save_checkpoint", "train"]
