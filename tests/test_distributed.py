"""Data-parallel and sharded (FSDP) training in vlm_core: two gloo processes train one model and make the update one
process makes at the same global batch (per-step loss, LR and gradient norm, validation loss, final weights), FSDP
writes the checkpoints data parallelism writes and resumes from them, and a non-finite loss on one rank alone stops
both at the same step with no hang. Plain ``torch.distributed`` here; Ray Train's workers run the same
loop (tests/test_sweep.py).

    pytest -q tests/test_distributed.py
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from vlm_core.config import TrainConfig
from vlm_core.training.distributed import World, all_sum, any_rank, reduce_gradients, shard
from vlm_core.training.sharding import optimizer_state_by_index, optimizer_state_by_name

from .parallel_harness import checkpoint_weights, train_world

TOL = 1e-5  # relative: the same sums in another order (float32 reduction across two processes)


GRAD_NORM_TOL = 5e-5  # float32 norms of the 3.1 M-element embedding gradient: 1.3e-5 off its float64 value in one
#                       process, 0.7e-5 summed over two shards (measured at step 1 of the FSDP test below)


def _close(a: float, b: float, tol: float = TOL) -> bool:
    return abs(a - b) <= tol * max(1.0, abs(a), abs(b))


@pytest.mark.parametrize("stage", [1, 2])
def test_two_workers_make_the_update_of_one_at_the_same_global_batch(stage, tiny_cfg, corpus, tmp_path):
    # 12 samples, micro-batches of 3 (odd: the ranks get 2 and 1), 2 per step: 2 optimizer steps an epoch
    tcfg = TrainConfig(stage=stage, epochs=2, batch_size=3, grad_accum=2, lr=5e-3, scheduler="cosine",
                       warmup_ratio=0.25, seed=3)
    (one,), (w1,), out1 = train_world(1, tmp_path, tiny_cfg, tcfg, corpus)
    two, w2, out2 = train_world(2, tmp_path, tiny_cfg, tcfg, corpus)
    assert [s["step"] for s in one["steps"]] == [1, 2, 3, 4]
    for rank in two:  # every rank saw the global step: the same loss, LR and token count as one process
        assert [s["step"] for s in rank["steps"]] == [1, 2, 3, 4]
        for a, b in zip(one["steps"], rank["steps"]):
            assert _close(a["loss"], b["loss"]) and a["lr"] == b["lr"] and a["tokens"] == b["tokens"], (a, b)
            assert _close(a["grad_norm"], b["grad_norm"], GRAD_NORM_TOL), (a, b)
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
    records, _, _ = train_world(2, tmp_path, tiny_cfg, tcfg, corpus, faults={"nan_loss_at_step": 2, "rank": 1})
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


def test_fsdp_makes_the_data_parallel_update_writes_the_same_checkpoints_and_resumes(tiny_cfg, corpus, tmp_path):
    # 13 samples in micro-batches of 3: the last micro-batch has 1 sample, so rank 1 runs a zero-weight forward
    # (FSDP's collectives need every rank in every forward); 7 validation samples: rank 0 makes 2 batches, rank 1 one
    tcfg = TrainConfig(stage=2, epochs=2, batch_size=3, grad_accum=2, lr=5e-3, scheduler="cosine",
                       warmup_ratio=0.25, seed=3, checkpoint_every_steps=4)
    fsdp_cfg = TrainConfig.from_dict({**tcfg.to_dict(), "sharding": "fsdp"})
    ddp, _, out_ddp = train_world(2, tmp_path, tiny_cfg, tcfg, corpus, sizes=(13, 7), name="ddp", keep_at_step=4)
    fsdp, _, out_fsdp = train_world(2, tmp_path, tiny_cfg, fsdp_cfg, corpus, sizes=(13, 7), name="fsdp")
    # the data-parallel run's step-4 checkpoint (optimizer state keyed by position) resumed sharded (keyed by name)
    resumed, _, _ = train_world(2, tmp_path, tiny_cfg, fsdp_cfg, corpus, sizes=(13, 7), name="resumed",
                           resume=str(out_ddp / "kept"))
    assert [r["sharded"] for r in ddp + fsdp + resumed] == [False, False, True, True, True, True]
    assert [s["step"] for s in fsdp[0]["steps"]] == [1, 2, 3, 4, 5, 6]
    assert [s["step"] for s in resumed[0]["steps"]] == [5, 6]
    for a, b in zip(ddp[0]["steps"] + ddp[0]["epochs"], fsdp[0]["steps"] + fsdp[0]["epochs"]):
        for key in ("loss", "train_loss", "val_loss"):
            assert key not in a or _close(a[key], b[key]), (key, a, b)
        # AdamW hides a uniformly scaled gradient (FSDP's default divides it by N); its norm does not
        assert "grad_norm" not in a or _close(a["grad_norm"], b["grad_norm"], GRAD_NORM_TOL), (a, b)
        assert a.get("lr") == b.get("lr") and a.get("tokens") == b.get("tokens")
    for a, b in zip(ddp[0]["steps"][4:], resumed[0]["steps"]):
        assert _close(a["loss"], b["loss"]) and a["lr"] == b["lr"], (a, b)
    w_ddp = checkpoint_weights(Path(ddp[0]["checkpoint"]))
    assert any(k.startswith("lm.model.layers.") for k in w_ddp)
    for run in (fsdp, resumed):  # full weights written by rank 0, whether it held all of them or a shard
        w = checkpoint_weights(Path(run[0]["checkpoint"]))
        assert w.keys() == w_ddp.keys()
        for k in w_ddp:
            assert torch.allclose(w_ddp[k], w[k], rtol=TOL, atol=1e-6), (k, (w_ddp[k] - w[k]).abs().max())
    assert fsdp[1]["checkpoint"] == "None" and not (out_fsdp / "run-1" / "checkpoints").exists()


def test_optimizer_state_converts_between_position_and_name_keys():
    names = ["projector.w", "lm.a", "lm.b"]
    by_index = {"state": {0: {"step": 1}, 2: {"step": 2}}, "param_groups": [{"lr": 0.1, "params": [0, 1, 2]}]}
    by_name = optimizer_state_by_name(by_index, names)
    assert by_name == {"state": {"projector.w": {"step": 1}, "lm.b": {"step": 2}},
                       "param_groups": [{"lr": 0.1, "params": names}]}
    assert optimizer_state_by_index(by_name, names) == by_index
    assert optimizer_state_by_name(by_name, names) is by_name and optimizer_state_by_index(by_index, names) is by_index


def test_sharding_refuses_what_it_cannot_shard():
    from vlm_core.base.errors import ConfigError

    with pytest.raises(ConfigError, match="train.sharding: fsdp shards the LLM that stage 2 trains"):
        TrainConfig(stage=1, sharding="fsdp")
    with pytest.raises(ConfigError, match="LoRA's frozen base LLM is not sharded"):
        TrainConfig(stage=2, sharding="fsdp", lm_tuning="lora")
    with pytest.raises(ConfigError, match=r"train.sharding: unknown sharding 'zero3'; choose one of \['fsdp',"):
        TrainConfig(stage=2, sharding="zero3")
