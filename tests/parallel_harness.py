"""Run one training (``vlm_core.training.loop.train``) in 1 process or N gloo processes on the sample corpus and collect
what each rank saw: per-step loss / LR / tokens / gradient norm, epoch metrics, final weights, checkpoints. Used by
tests/test_distributed.py (data parallel and FSDP against one process) and bench/parallel_equality.py (the figures).
A spawned rank ends as a Ray Train worker does, without the interpreter's teardown (:func:`spawned_rank` says why).

    pytest -q tests/test_distributed.py
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from vlm_core.base.errors import NonFiniteLoss
from vlm_core.config import TrainConfig, VLMConfig
from vlm_core.data.dataset import ConversationDataset, read_records
from vlm_core.model.vlm import VisionLanguageModel
from vlm_core.training.faults import Faults
from vlm_core.training.loop import train
from vlm_core.training.sharding import is_sharded


def datasets(model, corpus: Path, n_train: int = 12, n_val: int = 5):
    records = read_records(corpus / "sharegpt4v_sample.jsonl")
    make = lambda recs: ConversationDataset(recs, model.formatter, model.vision.preprocess, corpus / "images")  # noqa: E731
    return make(records[:n_train]), make(records[n_train:n_train + n_val])


def run_rank(rank: int, size: int, init_file: str, model_dict: dict, train_dict: dict, corpus: str, out: str,
         faults: dict | None, sizes: tuple[int, int] = (12, 5), resume: str | None = None,
         keep_at_step: int | None = None) -> None:
    """One rank (or the whole run when ``size`` is 1): train, then save what the test compares."""
    torch.set_num_threads(1)
    if size > 1:
        dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=size)
    try:
        model = VisionLanguageModel.build(VLMConfig.from_dict(model_dict))
        train_set, val_set = datasets(model, Path(corpus), *sizes)
        steps = []
        record = {"rank": rank}

        def on_step(r):
            steps.append({"step": r.step, "loss": r.loss, "lr": r.lr, "tokens": r.tokens, "grad_norm": r.grad_norm})
            if r.step == keep_at_step and rank == 0:  # train.checkpoint_every_steps wrote it; the epoch end prunes it
                shutil.copytree(Path(out) / "run-0" / "checkpoints" / "latest", Path(out) / "kept")

        try:
            result = train(model, TrainConfig.from_dict(train_dict), train_set, val_set, Path(out) / f"run-{rank}",
                           on_step=on_step,
                           faults=Faults(**faults) if faults else None, resume_from=resume)
            record.update(epochs=result.epoch_metrics, checkpoint=str(result.checkpoint), sharded=is_sharded(model))
        except NonFiniteLoss as e:
            record.update(non_finite=str(e), at_step=e.step)
        record["steps"] = steps
        if train_dict.get("sharding", "none") == "none":  # a sharded model's are in its checkpoints
            torch.save({k: v for k, v in model.state_dict().items() if k.startswith(("projector.", "lm."))},
                       Path(out) / f"weights-{rank}.pt")
        (Path(out) / f"record-{rank}.json").write_text(json.dumps(record))
    finally:
        if size > 1:
            dist.destroy_process_group()


def spawned_rank(rank: int, *args) -> None:
    """A rank of an N-process world (``mp.spawn``'s target): :func:`run_rank`, then, its records written and its output
    flushed, the process ends at once (``os._exit``), skipping the interpreter's teardown as Ray Train's ``ray.kill``
    of a worker does.

    Why: ``destroy_process_group`` leaves a gloo group's worker threads running while the group is still referenced,
    and after a sharded run it is (FSDP's DeviceMesh, held by the model and by torch.distributed.tensor's caches). Such
    a thread may still be releasing the last collective's tensors — rank 1 drops the checkpoint gather's output at
    once — which takes the GIL; a thread that waits for the GIL once the interpreter is finalizing is ended by Python
    (``pthread_exit``) inside a noexcept C++ destructor: std::terminate, SIGABRT ("terminate called without an active
    exception"). It took the rank that exits first (rank 1, while rank 0 writes the checkpoint) when that thread got
    no CPU in time: a loaded machine."""
    run_rank(rank, *args)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def train_world(size: int, tmp: Path, cfg: VLMConfig, tcfg: TrainConfig, corpus: Path, faults: dict | None = None,
           sizes: tuple[int, int] = (12, 5), resume: str | None = None, name: str | None = None,
           keep_at_step: int | None = None):
    out = tmp / (name or f"world{size}")
    out.mkdir(parents=True)
    args = (size, str(tmp / f"init-{name or size}"), cfg.to_dict(), tcfg.to_dict(), str(corpus), str(out), faults,
            sizes, resume, keep_at_step)
    if size == 1:
        threads = torch.get_num_threads()
        try:
            run_rank(0, *args)
        finally:
            torch.set_num_threads(threads)
    else:
        mp.spawn(spawned_rank, args=args, nprocs=size, join=True)
    records = [json.loads((out / f"record-{r}.json").read_text()) for r in range(size)]
    weights = [torch.load(out / f"weights-{r}.pt") for r in range(size) if (out / f"weights-{r}.pt").is_file()]
    return records, weights, out


def checkpoint_weights(ckpt: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    weights = {f"projector.{k}": v for k, v in load_file(ckpt / "projector.safetensors").items()}
    for f in sorted((ckpt / "lm").glob("*.safetensors")):
        weights.update({f"lm.{k}": v for k, v in load_file(f).items()})
    return weights
