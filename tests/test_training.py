"""Training loop: stage freezing, exact resumption, accumulation, schedules, non-finite loss."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch

from tests.run_state import assert_identical, checkpoint_weights, optimizer_moments, same_steps
from vlm_core.base.errors import ConfigError, NonFiniteLoss
from vlm_core.config import TrainConfig
from vlm_core.data.dataset import Collator, ConversationDataset, read_records
from vlm_core.model.vlm import VisionLanguageModel
from vlm_core.training.loop import train
from vlm_core.training.schedules import build_scheduler
from vlm_core.training.stages import freeze_for_stage


class Interrupted(RuntimeError):
    pass


@pytest.fixture
def fresh_model(tiny_cfg):
    return lambda: VisionLanguageModel.build(tiny_cfg)


def _dataset(model, corpus, n=20):
    records = read_records(corpus / "sharegpt4v_sample.jsonl")[:n]
    return ConversationDataset(records, model.formatter, model.vision.preprocess, corpus / "images")


def _grads_after_backward(model, corpus, stage):
    freeze_for_stage(model, stage)
    ds = _dataset(model, corpus, 4)
    batch = Collator(model.tokenizer.pad_token_id)([ds[i] for i in range(4)])
    model.zero_grad(set_to_none=True)
    out = model(batch["input_ids"], batch["attention_mask"], batch["labels"], pixel_values=batch["pixel_values"])
    out.loss.backward()
    return {name: [p.grad is not None and bool(p.grad.abs().sum() > 0) for p in getattr(model, name).parameters()]
            for name in ("vision", "projector", "lm")}


def test_stage1_trains_only_the_projector(fresh_model, corpus):
    got = _grads_after_backward(fresh_model(), corpus, 1)
    assert all(got["projector"]) and not any(got["lm"]) and not any(got["vision"])


def test_stage2_trains_projector_and_llm_never_vision(fresh_model, corpus):
    model = fresh_model()
    counts = freeze_for_stage(model, 2)
    assert counts["vision"]["trainable"] == 0 and counts["lm"]["trainable"] == counts["lm"]["total"] > 0
    got = _grads_after_backward(model, corpus, 2)
    assert all(got["projector"]) and all(got["lm"]) and not any(got["vision"])


def _metrics(out_dir):
    return [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("stage", [1, 2])
def test_resume_continues_exactly(stage, fresh_model, corpus, tmp_path):
    """Crash after step 3 (mid-epoch), resume in a fresh model from the step-3 checkpoint: the resumed run equals
    the uninterrupted one bit for bit (deterministic on CPU) — every step's loss, LR, gradient norm and tokens, the
    trained weights (stage 2: the LLM's too) and the AdamW moments its final checkpoint would continue with."""
    cfg = TrainConfig(stage=stage, epochs=2, batch_size=4, grad_accum=1, lr=5e-3, scheduler="cosine",
                      warmup_ratio=0.2, checkpoint_every_steps=3, seed=7)
    model = fresh_model()
    ds = _dataset(model, corpus)
    full = train(model, cfg, ds, None, tmp_path / "full")
    n = full.total_steps
    assert n == 10  # 20 samples / 4 per batch * 2 epochs
    k = 3  # mid-epoch: epoch 0 has 5 steps

    def crash(rec):
        if rec.step == k:
            raise Interrupted

    model2 = fresh_model()
    with pytest.raises(Interrupted):
        train(model2, cfg, _dataset(model2, corpus), None, tmp_path / "resumed", on_step=crash)
    model3 = fresh_model()  # a new process would start from scratch like this
    resumed = train(model3, cfg, _dataset(model3, corpus), None, tmp_path / "resumed",
                    resume_from=tmp_path / "resumed" / "checkpoints" / "latest")
    assert resumed.steps == n
    a, b = _metrics(tmp_path / "full"), _metrics(tmp_path / "resumed")
    assert [r["step"] for r in b] == list(range(1, n + 1))
    same_steps(a, b)  # the LR schedule continued, and every step trained the same batch from the same state
    lrs = [r["lr"] for r in b]
    peak = lrs.index(max(lrs))
    assert all(x >= y for x, y in zip(lrs[peak:], lrs[peak + 1:]))  # after warmup the LR never jumps back up
    trained = ("projector", "lm") if stage == 2 else ("projector",)
    for name in trained:
        assert_identical(getattr(model, name).state_dict(), getattr(model3, name).state_dict(), name)
    assert torch.equal(model.lm.get_input_embeddings().weight, model3.lm.get_input_embeddings().weight)
    assert (full.checkpoint / "lm").is_dir() == (resumed.checkpoint / "lm").is_dir() == (stage == 2)
    assert_identical(checkpoint_weights(full.checkpoint), checkpoint_weights(resumed.checkpoint), "checkpoint")
    assert_identical(optimizer_moments(full.checkpoint), optimizer_moments(resumed.checkpoint), "AdamW state")


def test_gradient_accumulation_matches_a_big_batch(fresh_model, corpus, tmp_path):
    """bs 4 == bs 2 × accum 2: the loss is normalised by the trainable tokens of the whole step."""
    results = []
    for bs, accum in ((4, 1), (2, 2)):
        model = fresh_model()
        cfg = TrainConfig(stage=1, max_steps=1, batch_size=bs, grad_accum=accum, lr=1e-2, warmup_ratio=0.0)
        ds = _dataset(model, corpus, 8)
        train(model, cfg, ds, None, tmp_path / f"bs{bs}")
        results.append([p.detach().clone() for p in model.projector.parameters()])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    assert not torch.allclose(results[0][0], fresh_model().projector.parameters().__next__())


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_schedules_warm_up_then_decay_to_zero(name):
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = build_scheduler(name, opt, total_steps=100, warmup_ratio=0.1)
    lrs = []
    for _ in range(100):
        lrs.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    assert lrs[0] == 0 and lrs[10] == pytest.approx(1.0)
    assert all(x <= y for x, y in zip(lrs[:10], lrs[1:11]))
    assert all(x >= y for x, y in zip(lrs[10:], lrs[11:])) and lrs[-1] < 0.05
    if name == "cosine":
        assert lrs[55] == pytest.approx(0.5 * (1 + math.cos(math.pi * 45 / 90)))


def test_non_finite_loss_stops_training(fresh_model, corpus, tmp_path):
    model = fresh_model()
    with torch.no_grad():
        next(model.projector.parameters()).fill_(float("nan"))
    with pytest.raises(NonFiniteLoss, match="non-finite loss at step 0"):
        train(model, TrainConfig(stage=1, max_steps=2, batch_size=2), _dataset(model, corpus, 4), None, tmp_path)


def test_optimizer_holds_only_trainable_parameters(fresh_model, corpus, tmp_path):
    model = fresh_model()
    train(model, TrainConfig(stage=1, max_steps=1, batch_size=2, checkpoint_every_steps=1), _dataset(model, corpus, 4),
          None, tmp_path)
    state = torch.load(tmp_path / "checkpoints" / "latest" / "training_state.pt", weights_only=True)
    n_params = sum(len(g["params"]) for g in state["optimizer"]["param_groups"])
    assert n_params == len(list(model.projector.parameters()))


@pytest.mark.parametrize("stage", [1, 2])
def test_gradient_checkpointing_gives_the_same_update(stage, fresh_model, corpus, tmp_path):
    results = []
    for ckpt in (False, True):
        model = fresh_model()
        cfg = TrainConfig(stage=stage, max_steps=1, batch_size=4, lr=1e-2, warmup_ratio=0.0,
                          gradient_checkpointing=ckpt)
        train(model, cfg, _dataset(model, corpus, 4), None, tmp_path / str(ckpt))
        assert model.lm.is_activation_checkpointing == ckpt
        trained = ("projector", "lm") if stage == 2 else ("projector",)
        results.append({f"{m}.{k}": v.detach().clone() for m in trained
                        for k, v in getattr(model, m).state_dict().items()})
    assert_identical(*results, "the update")  # the same forward recomputed: bit for bit, the LLM's too in stage 2


def test_steps_per_epoch_cap_keeps_every_epoch(fresh_model, corpus, tmp_path):
    model = fresh_model()
    cfg = TrainConfig(stage=1, epochs=3, max_steps_per_epoch=2, batch_size=4, lr=1e-3)
    result = train(model, cfg, _dataset(model, corpus), _dataset(model, corpus, 4), tmp_path)
    assert (result.total_steps, result.steps, result.epochs_completed) == (6, 6, 3)
    assert [m["epoch"] for m in result.epoch_metrics] == [1, 2, 3]
    assert all("val_loss" in m for m in result.epoch_metrics)


def test_val_cap_scores_exactly_the_first_samples(fresh_model, corpus):
    from vlm_core.training.validation import evaluate_loss

    model = fresh_model()
    full, first3 = _dataset(model, corpus, n=6), _dataset(model, corpus, n=3)
    capped = evaluate_loss(model, full, 2, TrainConfig(max_val_samples=3))
    assert capped == pytest.approx(evaluate_loss(model, first3, 2))
    assert capped != pytest.approx(evaluate_loss(model, full, 2))
    with pytest.raises(ConfigError, match="train.max_val_samples"):
        TrainConfig(max_val_samples=0)


def test_feature_statistics_are_measured_in_stage1_and_inherited_by_stage2(tiny_cfg, corpus, tmp_path):
    from vlm_core.training.checkpoint import load_vlm

    cfg = copy.deepcopy(tiny_cfg)  # the fixture is shared by the session
    cfg.projector.feature_norm = "standardize"
    model = VisionLanguageModel.build(cfg)
    ds = _dataset(model, corpus)
    s1 = train(model, TrainConfig(stage=1, epochs=1, batch_size=4, lr=1e-3), ds, None, tmp_path / "s1")
    norm = model.projector.feature_norm
    assert int(norm.fitted_on) == len({ex.image for ex in ds.examples})  # every distinct training image
    assert norm.std.min() > 0 and not torch.equal(norm.mean, torch.zeros_like(norm.mean))
    mean1 = norm.mean.clone()

    loaded = load_vlm(s1.checkpoint)  # inference sees the statistics the projector was trained with
    torch.testing.assert_close(loaded.projector.feature_norm.mean, mean1)

    model2 = VisionLanguageModel.build(cfg)
    other = _dataset(model2, corpus, 8)  # stage 2 on other data keeps stage 1's statistics
    train(model2, TrainConfig(stage=2, epochs=1, batch_size=4, lr=1e-5, init_checkpoint=str(s1.checkpoint)),
          other, None, tmp_path / "s2")
    torch.testing.assert_close(model2.projector.feature_norm.mean, mean1)
    assert int(model2.projector.feature_norm.fitted_on) == int(norm.fitted_on)


def test_length_grouping_cuts_padding_and_keeps_every_sample():
    import random

    from vlm_core.training.batching import epoch_batches

    rng = random.Random(0)
    lengths = [rng.randint(20, 500) for _ in range(1000)]

    def padded(batches):  # tokens a batch costs when padded to its own longest sample
        return sum(len(b) * max(lengths[i] for i in b) for b in batches)

    plain, grouped = epoch_batches(lengths, 8, 0, 0), epoch_batches(lengths, 8, 0, 0, group_by_length=True)
    assert sorted(i for b in grouped for i in b) == list(range(1000)) and len(grouped) == len(plain) == 125
    assert padded(grouped) < 0.65 * padded(plain)  # most of the padding is gone (the data: sum(lengths))
    assert padded(grouped) < 1.1 * sum(lengths)
    assert max(lengths[i] for i in grouped[0]) == max(lengths)  # the longest batch first: OOM shows at once
    assert grouped == epoch_batches(lengths, 8, 0, 0, True) != epoch_batches(lengths, 8, 0, 1, True)
