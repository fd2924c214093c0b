"""Data-parallel training in vlm_core: two gloo processes train one model and make the update one process makes at
the same global batch (per-step loss and LR, validation loss, final weights), and a non-finite loss on one rank
alone stops both at the same step with no hang. Plain ``torch.distributed`` here; Ray Train's workers run the same
loop (tests/test_sweep.py).

    pytest -q tests/test_distributed.py
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from vlm_core.config import TrainConfig, VLMConfig
from vlm_core.data import ConversationDataset, read_records
from vlm_core.distributed import World, all_sum, any_rank, reduce_gradients, shard
from vlm_core.faults import Faults
from vlm_core.model import VisionLanguageModel
from vlm_core.training import NonFiniteLoss, train

TOL = 1e-5  # relative: the same sums in another order (float32 reduction across two processes)


def _datasets(model, corpus: Path, n_train: int = 12, n_val: int = 5):
    records = read_records(corpus / "sharegpt4v_sample.jsonl")
    make = lambda recs: ConversationDataset(recs, model.formatter, model.vision.preprocess, corpus / "images")  # noqa: E731
    return make(records[:n_train]), make(records[n_train:n_train + n_val])


def _run(rank: int, size: int, init_file: str, model_dict: dict, train_dict: dict, corpus: str, out: str,
         faults: dict | None) -> None:
    """One rank (or the whole run when ``size`` is 1): train, then save what the test compares."""
    torch.set_num_threads(1)
    if size > 1:
        dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=size)
    try:
        model = VisionLanguageModel.build(VLMConfig.from_dict(model_dict))
        train_set, val_set = _datasets(model, Path(corpus))
        steps = []
        record = {"rank": rank}
        try:
            result = train(model, TrainConfig.from_dict(train_dict), train_set, val_set, Path(out) / f"run-{rank}",
                           on_step=lambda r: steps.append({"step": r.step, "loss": r.loss, "lr": r.lr,
                                                           "tokens": r.tokens}),
                           faults=Faults(**faults) if faults else None)
            record.update(epochs=result.epoch_metrics, checkpoint=str(result.checkpoint))
        except NonFiniteLoss as e:
            record.update(non_finite=str(e), at_step=e.step)
        record["steps"] = steps
        torch.save({k: v for k, v in model.state_dict().items() if k.startswith(("projector.", "lm."))},
                   Path(out) / f"weights-{rank}.pt")
        (Path(out) / f"record-{rank}.json").write_text(json.dumps(record))
    finally:
        if size > 1:
            dist.destroy_process_group()


def _train(size: int, tmp: Path, cfg: VLMConfig, tcfg: TrainConfig, corpus: Path, faults: dict | None = None):
    out = tmp / f"world{size}"
    out.mkdir()
    args = (size, str(tmp / f"init-{size}"), cfg.to_dict(), tcfg.to_dict(), str(corpus), str(out), faults)
    if size == 1:
        threads = torch.get_num_threads()
        try:
            _run(0, *args)
        finally:
            torch.set_num_threads(threads)
    else:
        mp.spawn(_run, args=args, nprocs=size, join=True)
    records = [json.loads((out / f"record-{r}.json").read_text()) for r in range(size)]
    weights = [torch.load(out / f"weights-{r}.pt") for r in range(size)]
    return records, weights, out


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= TOL * max(1.0, abs(a), abs(b))


@pytest.mark.parametrize("stage", [1, 2])
def test_two_workers_make_the_update_of_one_at_the_same_global_batch(stage, tiny_cfg, corpus, tmp_path):
    # 12 samples, micro-batches of 3 (odd: the ranks get 2 and 1), 2 per step: 2 optimizer steps an epoch
    tcfg = TrainConfig(stage=stage, epochs=2, batch_size=3, grad_accum=2, lr=5e-3, scheduler="cosine",
                       warmup_ratio=0.25, seed=3)
    (one,), (w1,), out1 = _train(1, tmp_path, tiny_cfg, tcfg, corpus)
    two, w2, out2 = _train(2, tmp_path, tiny_cfg, tcfg, corpus)
    assert [s["step"] for s in one["steps"]] == [1, 2, 3, 4]
    for rank in two:  # every rank saw the global step: the same loss, LR and token count as one process
        assert [s["step"] for s in rank["steps"]] == [1, 2, 3, 4]
        for a, b in zip(one["steps"], rank["steps"]):
            assert _close(a["loss"], b["loss"]) and a["lr"] == b["lr"] and a["tokens"] == b["tokens"], (a, b)
        for a, b in zip(one["epochs"], rank["epochs"]):
            assert _close(a["train_loss"], b["train_loss"]) and _close(a["val_loss"], b["val_loss"]), (a, b)
    assert w1.keys() == w2[0].keys() == w2[1].keys()
    changed = 0
    for k in w1:
        assert torch.equal(w2[0][k], w2[1][k]), k  # the ranks hold the same model
        assert torch.allclose(w1[k], w2[0][k], rtol=TOL, atol=1e-6), (k, (w1[k] - w2[0][k]).abs().max())
        changed += int(k.startswith("lm.")) if stage == 2 else 0
    assert stage == 1 or changed  # stage 2 trained the LLM too
    # rank 0 alone wrote the checkpoints and the step log
    assert two[0]["checkpoint"].endswith("epoch-002") and two[1]["checkpoint"] == "None"
    assert (out2 / "run-0" / "metrics.jsonl").is_file() and not (out2 / "run-1" / "checkpoints").exists()
    assert len((out2 / "run-0" / "metrics.jsonl").read_text().splitlines()) == 4


def test_a_non_finite_loss_on_one_rank_stops_every_rank_at_that_step(tiny_cfg, corpus, tmp_path):
    tcfg = TrainConfig(stage=1, epochs=2, batch_size=3, grad_accum=2, lr=5e-3, seed=3)
    records, _, _ = _train(2, tmp_path, tiny_cfg, tcfg, corpus, faults={"nan_loss_at_step": 2, "rank": 1})
    assert [r["at_step"] for r in records] == [2, 2]  # both ranks ended, neither hung in a collective
    assert "check the data of samples" in records[1]["non_finite"]
    assert "on another rank" in records[0]["non_finite"]
    assert [s["step"] for s in records[0]["steps"]] == [1, 2]  # the poisoned step 2 (from 0) was not applied


def test_the_helpers_alone_are_the_identity_on_one_process():
    one = World()
    assert shard(list(range(5)), one) == [0, 1, 2, 3, 4] and shard(list(range(5)), World(1, 2)) == [1, 3]
    assert all_sum([1, 2.5], one) == [1.0, 2.5] and any_rank(True, one) and not any_rank(False, one)
    p = torch.nn.Parameter(torch.ones(3))
    p.grad = torch.full((3,), 2.0)
    reduce_gradients([p], one)
    assert torch.equal(p.grad, torch.full((3,), 2.0))
