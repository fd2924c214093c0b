"""Faults injected on purpose: an interrupted write, a corrupt newest checkpoint, a Train worker killed
mid-epoch, a loss that turns NaN inside a sweep. What must survive is asserted, not printed.

    pytest -q tests/test_faults.py
"""

from __future__ import annotations

import errno
import json
import math
from pathlib import Path

import pytest
import torch

from tests.run_state import (
    assert_identical,
    checkpoint_weights,
    max_difference,
    optimizer_moments,
    same_epochs,
)
from vlm_core.config import TrainConfig
from vlm_core.model.vlm import VisionLanguageModel
from vlm_core.training.checkpoint import CheckpointError, newest_usable, read_meta, resume_point, save_checkpoint
from vlm_core.training.one_stage import DataSpec, run_stage

S1_UMAP, S1_RANDOM = "s1-20kUmap-nodense-raw-linear-e6-b12", "s1-10kRandom-nodense-raw-linear-e6-b8"


def _disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_an_interrupted_checkpoint_write_keeps_the_previous_checkpoint(tiny_cfg, tmp_path, monkeypatch):
    import vlm_core.training.checkpoint as ckpt_mod

    model = VisionLanguageModel.build(tiny_cfg)
    path = save_checkpoint(model, tmp_path / "latest", stage=1, step=4, epoch=1, training_state={"step": 4})
    before = {p.name: p.read_bytes() for p in path.iterdir()}
    real_save = ckpt_mod.torch.save

    def save_half_then_fail(obj, f, *a, **k):  # the weights are written, then the disk fills up
        real_save(obj, f, *a, **k)
        Path(f).write_bytes(Path(f).read_bytes()[:10])
        _disk_full()

    monkeypatch.setattr(ckpt_mod.torch, "save", save_half_then_fail)
    with pytest.raises(OSError, match="No space"):
        save_checkpoint(model, path, stage=1, step=8, epoch=2, training_state={"step": 8})
    assert {p.name: p.read_bytes() for p in path.iterdir()} == before  # readers still see step 4, whole
    assert read_meta(path)["step"] == 4
    assert [p.name for p in tmp_path.iterdir()] == ["latest"]  # no half-written folder left beside it


def test_an_interrupted_parquet_write_keeps_the_previous_file(tmp_path, monkeypatch):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from data_pipeline.build import _write_parquet_atomic

    target = tmp_path / "train-00000.parquet"
    _write_parquet_atomic(pa.table({"id": ["a", "b"]}), target)

    def write_half_then_fail(table, where, *a, **k):
        Path(where).write_bytes(b"PAR1 half a file")
        _disk_full()

    monkeypatch.setattr(pq, "write_table", write_half_then_fail)
    with pytest.raises(OSError):
        _write_parquet_atomic(pa.table({"id": ["c"]}), target)
    monkeypatch.undo()
    assert pq.read_table(target).column("id").to_pylist() == ["a", "b"]
    assert [p.name for p in tmp_path.iterdir()] == [target.name]


def test_resume_skips_a_corrupt_newest_checkpoint_with_a_message(tiny_cfg, tmp_path, caplog):
    model = VisionLanguageModel.build(tiny_cfg)
    root = tmp_path / "run" / "checkpoints"
    older = save_checkpoint(model, root / "epoch-001", stage=1, step=4, epoch=1, training_state={"step": 4})
    newest = save_checkpoint(model, root / "epoch-002", stage=1, step=8, epoch=2, training_state={"step": 8})
    weights = newest / "projector.safetensors"
    weights.write_bytes(weights.read_bytes()[:-4] + b"\0\0\0\0")  # a bad copy off a lost node
    (root / "latest").mkdir()  # a folder a killed writer never finished: no checkpoint.json
    assert resume_point(tmp_path / "run") == older
    assert f"skipping checkpoint {newest}" in caplog.text and "sha256" in caplog.text
    assert "latest" in caplog.text
    assert resume_point(newest) == newest  # named explicitly: used as given (and refused when loaded)
    (older / "projector.safetensors").write_bytes(b"")
    assert newest_usable([older, newest]) is None
    with pytest.raises(CheckpointError, match="no usable checkpoint to resume from"):
        resume_point(tmp_path / "run")


def _data(variants, corpus) -> DataSpec:
    return DataSpec(train=str(variants / "20kUmap" / "train-00000.parquet"), images=str(corpus / "images"),
                    val=str(variants / "20kUmap" / "val-00000.parquet"))


@pytest.mark.parametrize("workers", [1, 2])
def test_a_killed_train_worker_restarts_from_its_checkpoint_and_the_lr_continues(workers, ray_local, tiny_cfg,
                                                                                   variants, corpus, tmp_path,
                                                                                   monkeypatch):
    """A worker dies (``os._exit``) mid-epoch 2; Ray Train restarts it from the epoch-1 checkpoint (not from
    scratch: no step is trained twice) and the run ends with the same optimizer steps, LR at every epoch, losses,
    weights and AdamW state as a run never interrupted. With two data-parallel workers the one that dies first takes
    the group down; the restarted pair resumes together, and both runs equal the one-process reference (the global
    batch is the same)."""
    import ray.train
    from ray.train.torch import TorchTrainer

    from sweeps.trial import TRAIN_POLL_ENV, TRAIN_POLL_S, train_worker

    # As sweeps.trial.run_trial does. Train registers a reported checkpoint only when its controller next polls the
    # workers (Ray's default: every 2 s): a worker killed before that poll restarts from the checkpoint before it,
    # here from scratch (seen with two workers). Each step also sleeps a little, so the kill two steps after the
    # epoch-1 report comes after a poll.
    monkeypatch.setenv(TRAIN_POLL_ENV, TRAIN_POLL_S)
    train = TrainConfig(stage=1, epochs=3, batch_size=4, lr=1e-3, scheduler="cosine", warmup_ratio=0.25)
    data = _data(variants, corpus)
    reference, _ = run_stage(tiny_cfg, train, data, tmp_path / "reference", write_final=False)
    assert reference.total_steps == 12  # 16 samples / batch 4 = 4 steps an epoch; the kill comes at step 6
    marker = tmp_path / "killed"
    trainer = TorchTrainer(
        train_worker,
        train_loop_config={"model": tiny_cfg.to_dict(), "train": train.to_dict(), "data": data.__dict__,
                           "run_name": "killed", "faults": {"kill_at_step": 6, "once_marker": str(marker),
                                                            "sleep_after_step_s": 0.5}},
        scaling_config=ray.train.ScalingConfig(num_workers=workers, resources_per_worker={"CPU": 1}),
        run_config=ray.train.RunConfig(name="killed", storage_path=str(tmp_path / "storage"),
                                       checkpoint_config=ray.train.CheckpointConfig(num_to_keep=None),
                                       failure_config=ray.train.FailureConfig(max_failures=1)))
    result = trainer.fit()
    assert marker.is_file()  # the worker was killed once ...
    kept = sorted(result.best_checkpoints, key=lambda cm: cm[1]["step"])
    reported = [m for _, m in kept]
    assert [m["step"] for m in reported] == [4, 8, 12]  # ... and the run still made exactly 12 optimizer steps
    # every checkpoint any attempt wrote (none is deleted): epoch 1's once, so the restart did not start over
    written = sorted(read_meta(p)["step"] for p in (tmp_path / "storage" / "killed").glob("checkpoint_*")
                     if p.is_dir())
    assert written == [4, 8, 12], written
    for got, want in zip(reported, reference.epoch_metrics):
        assert got["epoch"] == want["epoch"] and got["lr"] == pytest.approx(want["lr"], rel=1e-9)  # no jump back
    final = Path(kept[-1][0].path)
    assert read_meta(final)["step"] == 12
    weights, moments = checkpoint_weights(final), optimizer_moments(final)
    ref_weights, ref_moments = checkpoint_weights(reference.checkpoint), optimizer_moments(reference.checkpoint)
    if workers == 1:  # the same computation as the reference, in another process: bit for bit
        same_epochs(reported, reference.epoch_metrics)
        assert_identical(weights, ref_weights, "projector")
        assert_identical(moments, ref_moments, "AdamW state")
        return
    # Two ranks sum their gradients (float sums in another order than one process's): absolute tolerances, as
    # training moves the loss (near 10.8) and the projector only a little. Each of these fails a restart that drops
    # the optimizer state, restarts the LR schedule, or trains an epoch in another epoch's order (a skipped or
    # repeated batch fails the steps above too; all tried in a patched copy of vlm_core/training/loop.py); the
    # two ranks' rounding stays far inside them.
    for got, want in zip(reported, reference.epoch_metrics):
        assert got["train_loss"] == pytest.approx(want["train_loss"], rel=0, abs=1e-5)
        assert got["val_loss"] == pytest.approx(want["val_loss"], rel=0, abs=1e-5)
    assert max_difference(weights, ref_weights) < 1e-6
    counts = [k for k in moments if k.endswith(":step") or k.startswith("scheduler")]
    assert all(torch.equal(moments[k], ref_moments[k]) for k in counts)  # AdamW's and the schedule's step counts
    assert max_difference(moments, ref_moments) < 1e-7


def test_a_non_finite_loss_on_one_of_two_workers_ends_the_run_cleanly(ray_local, tiny_cfg, variants, corpus,
                                                                         tmp_path):
    """NaN on rank 1 alone: both workers stop at that step (no rank left waiting in an all-reduce), report the
    non-finite status, and Train ends the run instead of retrying it."""
    import ray.train
    from ray.train.torch import TorchTrainer

    from sweeps.trial import train_worker

    train = TrainConfig(stage=1, epochs=3, batch_size=4, lr=1e-3)
    reports = tmp_path / "reports.jsonl"

    class RecordReports(ray.train.UserCallback):  # every worker's report, as the controller receives them
        def after_report(self, run_context, metrics, checkpoint):
            with open(reports, "a") as f:
                f.write(json.dumps(metrics, default=str) + "\n")

    trainer = TorchTrainer(
        train_worker,
        train_loop_config={"model": tiny_cfg.to_dict(), "train": train.to_dict(),
                           "data": _data(variants, corpus).__dict__, "run_name": "nan",
                           "faults": {"nan_loss_at_step": 5, "rank": 1}},
        scaling_config=ray.train.ScalingConfig(num_workers=2, resources_per_worker={"CPU": 1}),
        run_config=ray.train.RunConfig(name="nan", storage_path=str(tmp_path / "storage"), callbacks=[RecordReports()],
                                       failure_config=ray.train.FailureConfig(max_failures=1)))
    result = trainer.fit()  # returns: no rank hangs in a collective
    assert result.error is None  # a clear end, not a crash Train would retry
    said = [json.loads(line) for line in reports.read_text().splitlines()]
    assert [[r["status"] for r in s] for s in said] == [["running", "running"], ["non_finite_loss"] * 2]
    assert [r["step"] for r in said[-1]] == [5, 5] and [r["epoch"] for r in said[-1]] == [1.25, 1.25]
    rank0, rank1 = said[-1]
    assert "non-finite loss at step 5 (epoch 1)" in rank0["message"] and "on another rank" in rank0["message"]
    assert "check the data of samples" in rank1["message"]
    assert rank0["val_loss"] == math.inf


def test_a_trial_killed_on_the_tune_runner_restarts_from_its_checkpoint_and_the_lr_continues(
        ray_local, variants, corpus, tmp_path, monkeypatch):
    """The CPU backend's trials train in the Tune trial itself (``--runner auto``): the trial's process dies
    (``os._exit``) after step 5 of 12; Tune restarts the trial, which resumes from its newest kept checkpoint
    (epoch 2's) and ends with the uninterrupted run's steps, LR and losses at every epoch."""
    from sweeps.driver import SweepConfig, run_sweep
    from vlm_core.config import VLMConfig

    marker = tmp_path / "killed"
    monkeypatch.setenv("VLM_SWEEP_FAULTS", json.dumps({"kill_at_step": 5, "once_marker": str(marker),
                                                       "only": S1_UMAP}))
    out = tmp_path / "killed-sweep"
    result = run_sweep(SweepConfig(data=str(variants), images=str(corpus / "images"), preset="tiny", stage="1",
                                   paper_ids=[3], out=str(out), wandb="disabled", max_failures=1))
    assert marker.is_file()  # the trial's process was killed once ...
    row = {r["config_id"]: r for r in result["stages"][1]}[S1_UMAP]
    assert row["status"] == "finished" and row["epochs_run"] == 6 and row["error"] is None
    trial = json.loads((out / "stage1" / S1_UMAP / "params.json").read_text())["trial"]
    assert trial["in_tune"]  # ... on the tune runner
    worker = trial["worker"]
    reference, _ = run_stage(VLMConfig.from_dict(worker["model"]), TrainConfig.from_dict(worker["train"]),
                             DataSpec(**worker["data"]), tmp_path / "reference", write_final=False)
    said = [json.loads(line) for line in (out / "stage1" / S1_UMAP / "result.json").read_text().splitlines()]
    assert [r["step"] for r in said] == [2, 4, 6, 8, 10, 12]  # epochs 1-2, then 3-6 after the restart
    same_epochs(said, reference.epoch_metrics)  # the same computation in another process: bit for bit
    assert Path(row["best_checkpoint"]).parent == out / "train" / Path(row["best_checkpoint"]).parent.name
    kept = {read_meta(p)["step"]: p for p in Path(row["best_checkpoint"]).parent.glob("checkpoint_*")}
    final = kept[max(kept)]
    assert max(kept) == 12
    assert_identical(checkpoint_weights(final), checkpoint_weights(reference.checkpoint), "projector")
    assert_identical(optimizer_moments(final), optimizer_moments(reference.checkpoint), "AdamW state")


def test_a_diverging_trial_stops_with_a_clear_status_and_the_sweep_finishes(ray_local, variants, corpus, tmp_path,
                                                                             monkeypatch):
    from sweeps.driver import SweepConfig, run_sweep

    monkeypatch.setenv("VLM_SWEEP_FAULTS", json.dumps({"nan_loss_at_step": 3, "only": S1_UMAP}))
    out = tmp_path / "nan"
    cfg = SweepConfig(data=str(variants), images=str(corpus / "images"), preset="tiny", stage="1",
                      paper_ids=[3, 9], out=str(out), wandb="disabled", max_concurrent=1)
    result = run_sweep(cfg)  # no SweepInterrupted: a stopped trial is a finished one
    rows = {r["config_id"]: r for r in result["stages"][1]}
    bad, good = rows[S1_UMAP], rows[S1_RANDOM]
    assert bad["status"] == "non_finite_loss" and "non-finite loss at step 3" in bad["error"]
    assert bad["epochs_run"] < 2 and math.isfinite(bad["best_val_loss"])  # epoch 1's loss, not the inf
    assert bad["best_checkpoint"] and Path(bad["best_checkpoint"]).is_dir()  # epoch 1's checkpoint is kept
    assert good["status"] == "finished" and good["epochs_run"] == 6 and good["error"] is None
    assert result["lineage"][S1_UMAP]["status"] == "non_finite_loss"
    # Tune did not retry it (Train retries crashes; this is not one): one trial run, its last result says why
    params = json.loads((out / "stage1" / S1_UMAP / "params.json").read_text())
    assert params["trial"]["worker"]["faults"]["nan_loss_at_step"] == 3
    last = [json.loads(line) for line in (out / "stage1" / S1_UMAP / "result.json").read_text().splitlines()][-1]
    assert last["status"] == "non_finite_loss" and last["val_loss"] == math.inf
    report = (out / "report.md").read_text()
    assert "NON_FINITE_LOSS" in report and "non-finite loss at step 3" in report
