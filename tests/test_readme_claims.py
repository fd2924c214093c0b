"""README claims that had no test, run for real at the smallest size:

- Ctrl-C on a running ``vlm-sweep sweep`` exits with code 2 and one line naming ``--resume``; the same command with
  ``--resume`` finishes the sweep (finished trials kept, the interrupted one continued from its checkpoint);
- ``--grid lora`` and ``--stage2-sharding fsdp`` each through a tiny two-stage sweep: what makes them what they are
  (adapters instead of an LLM in the checkpoint; two ranks holding shards, and a full checkpoint that equals
  unsharded training);
- the study report's best config over several evaluations (accuracy with the image, then its gain over another
  question's image, then the held-out loss), on hand-made results where loss and accuracy disagree;
- ``vlm-sweep train --resume`` continues a run that stopped (a training image broke mid-epoch, was repaired) to the
  weights, AdamW state and per-step log of a run never stopped.

Every test here is slow (``vlm-sweep`` processes, sweeps), the report's ranking included to keep the module whole.

    pytest -q tests/test_readme_claims.py
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import assert_ray_processes_exit, driver_ray_processes
from tests.run_state import (
    assert_identical,
    checkpoint_weights,
    max_difference,
    optimizer_moments,
    same_steps,
    step_log,
)
from vlm_core.training.checkpoint import read_meta

pytestmark = pytest.mark.slow

S1_UMAP, S1_RANDOM = "s1-20kUmap-nodense-raw-linear-e6-b12", "s1-10kRandom-nodense-raw-linear-e6-b8"
S2_UMAP = "s2-20kUmap-nodense-raw-linear-e3-b3-from-e6-b12"


def _sweep_cmd(variants, corpus, out: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "sweeps.cli", "sweep", "--data", str(variants), "--images", str(corpus / "images"),
            "--preset", "tiny", "--wandb", "disabled", "--out", str(out), *args]


def _own_ray_env(**extra: str) -> dict[str, str]:
    """The environment of a ``vlm-sweep`` process that starts its own local Ray (as a user's does)."""
    return {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, **extra}


def _results(trial_dir: Path) -> list[dict]:
    f = trial_dir / "result.json"
    return [json.loads(line) for line in f.read_text().splitlines() if line.strip()] if f.is_file() else []


def _run_ok(cmd: list[str], env: dict[str, str], timeout: float = 400) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


# --- Ctrl-C ------------------------------------------------------------------------------------------------------


def test_ctrl_c_stops_a_sweep_with_exit_code_2_and_resume_finishes_it(variants, corpus, tmp_path):
    """README, "Resume": a sweep stopped by Ctrl-C (Tune saves its state) exits with code 2 and says to rerun the
    same command with ``--resume``, which keeps the finished trial and continues the interrupted one from its last
    checkpoint. SIGINT goes to the driver alone, while the second trial trains (slowed down: a tiny trial ends within
    seconds) and after it has written a checkpoint."""
    out = tmp_path / "sweep"
    cmd = _sweep_cmd(variants, corpus, out, "--stage", "1", "--paper-ids", "[3, 9]", "--max-concurrent", "1")
    env = _own_ray_env(VLM_SWEEP_FAULTS=json.dumps({"sleep_after_step_s": 1.0, "only": S1_RANDOM}))
    first, second = out / "stage1" / S1_UMAP, out / "stage1" / S1_RANDOM
    with (tmp_path / "out.txt").open("w") as so, (tmp_path / "err.txt").open("w") as se:
        proc = subprocess.Popen(cmd, env=env, stdout=so, stderr=se, text=True)
        try:
            deadline = time.time() + 300
            while time.time() < deadline and proc.poll() is None:
                if list((out / "train").glob(f"train-{S1_RANDOM}-*/checkpoint_*")) and len(_results(first)) == 6:
                    break
                time.sleep(0.2)
            assert proc.poll() is None, "the sweep ended before it could be interrupted"
            ray_procs = driver_ray_processes(proc)
            proc.send_signal(signal.SIGINT)  # what Ctrl-C sends the foreground process
            code = proc.wait(timeout=240)
        finally:
            if proc.poll() is None:
                proc.kill()
    # the driver's local Ray shuts down on the way out; Ray's agents may linger a minute (tests/conftest.py)
    assert_ray_processes_exit(ray_procs, "the interrupted driver")
    said, errors = (tmp_path / "out.txt").read_text(), (tmp_path / "err.txt").read_text()
    assert code == 2, said[-3000:] + errors[-3000:]
    assert "Traceback" not in said + errors, errors[-3000:]
    message = [line for line in errors.splitlines() if line.startswith("vlm-sweep: error:")]
    assert len(message) == 1 and message[0] == errors.strip().splitlines()[-1], errors[-3000:]  # one line, the last
    assert "interrupted" in message[0] and S1_RANDOM in message[0] and "rerun the same command with --resume" in \
        message[0], message
    done_before, cut = _results(first), _results(second)
    assert [r["epoch"] for r in done_before] == [1, 2, 3, 4, 5, 6] and 1 <= len(cut) < 6, cut

    _run_ok(cmd + ["--resume"], env)
    assert _results(first) == done_before  # the finished trial was not rerun
    rows = _results(second)
    assert rows[-1]["epoch"] == 6 and rows[-1]["step"] == 12
    restarts = [i for i, r in enumerate(rows) if r["iterations_since_restore"] == 1]
    assert rows[restarts[-1]]["epoch"] >= 2, rows  # continued from its checkpoint, not from epoch 1
    summary = {r["config_id"]: r for r in json.loads((out / "trials.json").read_text())["stages"]["1"]}
    assert {k: (v["status"], v["epochs_run"]) for k, v in summary.items()} == {
        S1_UMAP: ("finished", 6), S1_RANDOM: ("finished", 6)}
    # the lineage's best is the best of every epoch, those reported before the interrupt included (Tune's history of
    # the restored trial holds only what came after; its run folder still keeps the earlier best checkpoint)
    best = min(r["val_loss"] for r in cut + rows)
    lineage = json.loads((out / "lineage.json").read_text())
    assert summary[S1_RANDOM]["best_val_loss"] == summary[S1_RANDOM]["best_checkpoint_val_loss"] == best, summary
    assert lineage[S1_RANDOM]["checkpoint"] == summary[S1_RANDOM]["best_checkpoint"]
    assert read_meta(summary[S1_RANDOM]["best_checkpoint"], verify=False)["metrics"]["val_loss"] == best


# --- --grid lora, --stage2-sharding fsdp ---------------------------------------------------------------------------


def _stage2_trial(out: Path, config_id: str) -> tuple[dict, Path]:
    """(the stage-2 trial's params.json ``trial`` entry, its best checkpoint)."""
    trial = json.loads((out / "stage2" / config_id / "params.json").read_text())["trial"]
    rows = {r["config_id"]: r for r in json.loads((out / "trials.json").read_text())["stages"]["2"]}
    assert rows[config_id]["status"] == "finished" and rows[config_id]["epochs_run"] == 3, rows
    return trial, Path(rows[config_id]["best_checkpoint"])


def test_grid_lora_trains_stage_2_with_adapters_only(variants, corpus, tmp_path):
    """``--grid lora``: the study's continuation of paper row 3 with LoRA. Its checkpoint holds the projector and
    the adapters (``lm_adapter/``), no LLM (``lm/``), and loads back onto the base LLM as a LoRA model whose adapters
    trained."""
    from vlm_core.model.lora import is_lora
    from vlm_core.training.checkpoint import load_vlm

    out = tmp_path / "lora"
    _run_ok(_sweep_cmd(variants, corpus, out, "--grid", "lora", "--paper-ids", "[3]", "--stage", "all"),
            _own_ray_env())
    trial, best = _stage2_trial(out, S2_UMAP + "-lora")
    assert trial["spec"]["lm_tuning"] == "lora" and trial["worker"]["train"]["lm_tuning"] == "lora"
    assert trial["worker"]["train"]["sharding"] == "none"
    meta = read_meta(best)
    assert meta["stage"] == 2 and meta["lm_tuning"] == "lora"
    assert sorted(meta["files"]) == ["lm_adapter/adapter_model.safetensors", "projector.safetensors"]
    assert (best / "lm_adapter" / "adapter_config.json").is_file() and not (best / "lm").exists()
    adapters = {k: v for k, v in checkpoint_weights(best).items() if k.startswith("lm_adapter/")}
    assert adapters and all("lora_" in k for k in adapters)
    assert any("lora_B" in k and v.abs().sum() > 0 for k, v in adapters.items())  # B starts at 0: it trained
    assert is_lora(load_vlm(best).lm)


def test_stage2_sharding_fsdp_trains_on_two_ranks_and_writes_a_full_checkpoint(variants, corpus, tmp_path):
    """``--stage2-sharding fsdp --stage2-num-workers 2 --backend cpu``: the continuation of paper row 3 trains in a
    ``TorchTrainer`` of two workers, each holding shards (both ranks say so in the trial's own output, under
    ``OUT/logs/ray-session``); its checkpoint is a full model (every LLM weight, whole) that equals the same stage-2
    run trained unsharded in one process."""
    from vlm_core.config import TrainConfig, VLMConfig
    from vlm_core.model.vlm import VisionLanguageModel
    from vlm_core.training.checkpoint import load_vlm
    from vlm_core.training.one_stage import DataSpec, run_stage

    out = tmp_path / "fsdp"
    _run_ok(_sweep_cmd(variants, corpus, out, "--paper-ids", "[3]", "--stage", "all", "--stage2-num-workers", "2",
                       "--stage2-sharding", "fsdp", "--backend", "cpu"), _own_ray_env())
    trial, best = _stage2_trial(out, S2_UMAP)
    assert not trial["in_tune"] and trial["resources"]["num_workers"] == 2  # a TorchTrainer of two workers
    worker = trial["worker"]
    assert worker["train"]["sharding"] == "fsdp" and worker["train"]["lm_tuning"] == "full"
    assert Path(best).parent.name.startswith(f"train-{S2_UMAP}-")
    # both ranks of that Train run sharded the model and trained every epoch (Ray Train's structured worker logs)
    said: dict[int, list[str]] = {}
    for f in (out / "logs" / "ray-session" / "logs" / "train").glob("ray-train-app-worker-*.log"):
        for line in f.read_text().splitlines():
            record = json.loads(line)
            if record.get("run_name") == Path(best).parent.name:
                said.setdefault(record["world_rank"], []).append(record["message"])
    assert sorted(said) == [0, 1], sorted(said)
    for rank, messages in said.items():
        assert any(m.startswith("train.sharding=fsdp") and "over 2 ranks" in m for m in messages), (rank, messages)
        assert sum(m.startswith("epoch ") for m in messages) == 3, (rank, messages)

    meta = read_meta(best)
    assert meta["stage"] == 2 and meta["lm_tuning"] == "full" and meta["step"] == 6
    weights = checkpoint_weights(best)
    built = VisionLanguageModel.build(VLMConfig.from_dict(worker["model"]))
    full_lm = {k: v for k, v in built.lm.state_dict().items() if k != "lm_head.weight"}  # tied to the embeddings
    saved_lm = {k.split(":", 1)[1]: v for k, v in weights.items() if k.startswith("lm/")}
    assert saved_lm.keys() == full_lm.keys()
    assert all(saved_lm[k].shape == v.shape for k, v in full_lm.items())  # whole tensors, not one rank's shard
    load_vlm(best)
    train = TrainConfig.from_dict({**worker["train"], "sharding": "none"})
    reference, _ = run_stage(VLMConfig.from_dict(worker["model"]), train, DataSpec(**worker["data"]),
                             tmp_path / "unsharded", write_final=False, device=torch.device("cpu"))
    assert reference.steps == 6
    # two ranks sum their gradients in another order than one process: the same weights within an absolute 1e-5,
    # which a sharded run whose gradients are never reduce-scattered fails (tried in a patched copy of
    # vlm_core/training/loop.py), as would a step more or less
    assert max_difference(weights, checkpoint_weights(reference.checkpoint)) < 1e-5


# --- the study report's best config --------------------------------------------------------------------------------


def _evaluation(cid: str, acc_image: float, acc_shuffled: float, loss: float) -> dict:
    return {"config_id": cid, "checkpoint": f"ck/{cid}", "questions": "q.jsonl",
            "answers": {"n": 36, "accuracy": {"image": acc_image, "zeros": 0.0, "shuffled": acc_shuffled},
                        "exact_match": {"image": acc_image / 2, "zeros": 0.0, "shuffled": acc_shuffled / 2},
                        "by_type": {"image": {}}, "type_counts": {}, "samples": [],
                        "protocol": {"instruction": "", "max_new_tokens": 16}},
            "heldout": {"image": {"loss": loss, "perplexity": math.exp(loss)}}}


def test_the_study_reports_best_config_ranks_accuracy_then_gain_then_loss(tmp_path):
    """README: the study report names the best config with the command to chat with it; the report's own rule:
    highest ``acc_image``, then the largest gain over another question's image, then the lowest held-out loss.
    Loss and accuracy disagree here: the lowest loss has the lowest accuracy, the largest gain comes with less
    accuracy, and a tie on accuracy is broken by the gain even against a lower loss."""
    from sweeps.reporting.study_report import evaluation_section

    evals = [_evaluation("s2-low-loss", 0.25, 0.20, 0.50),    # best held-out loss, worst accuracy
             _evaluation("s2-most-gain", 0.50, 0.10, 2.00),   # tied best accuracy, larger gain, worse loss
             _evaluation("s2-less-gain", 0.50, 0.30, 1.00),   # tied best accuracy, smaller gain
             _evaluation("s2-same-as-gain", 0.50, 0.10, 1.50),  # ties s2-most-gain on both: the lower loss wins
             _evaluation("s2-gain-first", 0.45, 0.00, 0.80)]  # the largest gain, but less accuracy
    lines, best = evaluation_section(tmp_path, evals)
    lines = "\n".join(lines).splitlines()  # the table is one entry
    assert best["config_id"] == "s2-same-as-gain" and best["checkpoint"] == "ck/s2-same-as-gain"
    assert best["val_loss"] == 1.5 and best["accuracy"]["image"] == 0.5
    table = [line for line in lines if line.startswith("| s2-")]
    assert [row.split("|")[1].strip() for row in table] == ["s2-same-as-gain", "s2-most-gain", "s2-less-gain",
                                                            "s2-gain-first", "s2-low-loss"]
    assert "## Best config: `s2-same-as-gain`" in lines
    assert any(line.startswith("vlm-sweep chat --checkpoint ck/s2-same-as-gain") for line in lines)
    for order in (evals[::-1], evals[1:] + evals[:1]):  # the input order does not matter
        assert evaluation_section(tmp_path, order)[1]["config_id"] == "s2-same-as-gain"


# --- vlm-sweep train --resume --------------------------------------------------------------------------------------


def test_train_resume_on_the_command_line_continues_the_run(corpus, tmp_path):
    """README: ``vlm-sweep train ... --resume runs/s2/checkpoints/latest`` continues exactly where it stopped. A
    stage-2 run (8 steps, a checkpoint every 2) stops at step 4 because one of its training images is broken
    (exit code 2, naming it); the image is repaired and the same command with ``--resume OUT/checkpoints/latest``
    trains steps 3-8 again from the step-2 checkpoint: its steps, final weights (``final/``) and AdamW state equal a
    run never stopped, bit for bit."""
    from vlm_core.data.dataset import read_records
    from vlm_core.training.batching import epoch_order

    records = [r for r in read_records(corpus / "sharegpt4v_sample.jsonl") if r["image"].startswith("coco/")]
    by_image: dict[str, list[dict]] = {}
    for r in records:
        by_image.setdefault(r["image"], []).append(r)
    once = [rs[0] for rs in by_image.values() if len(rs) == 1]  # records whose image no other record uses
    train, val = once[:16], once[16:20]
    images = tmp_path / "images"  # a private copy: one image is broken below
    for r in train + val:
        (images / r["image"]).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(corpus / "images" / r["image"], images / r["image"])
    for name, rows in (("train", train), ("val", val)):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    seed, batch = 7, 4
    broken = train[epoch_order(len(train), seed, 0)[3 * batch]]["image"]  # first needed by step 4's batch
    good = (images / broken).read_bytes()

    def train_cmd(out: Path, *extra: str) -> list[str]:
        return [sys.executable, "-m", "sweeps.cli", "train", "--preset", "tiny", "--data.train",
                str(tmp_path / "train.jsonl"), "--data.val", str(tmp_path / "val.jsonl"), "--data.images", str(images),
                "--train.stage", "2", "--train.epochs", "2", "--train.batch-size", str(batch), "--train.lr", "5e-3",
                "--train.seed", str(seed), "--train.checkpoint-every-steps", "2", "--out", str(out), *extra]

    env = _own_ray_env()
    reference = _run_ok(train_cmd(tmp_path / "reference"), env, timeout=300)
    assert json.loads(reference.stdout[reference.stdout.index("{"):])["steps"] == 8

    run = tmp_path / "run"
    (images / broken).write_bytes(good[: len(good) // 3])  # a truncated JPEG (a bad copy, a full disk)
    stopped = subprocess.run(train_cmd(run), env=env, capture_output=True, text=True, timeout=300)
    assert stopped.returncode == 2 and broken in stopped.stderr and "Traceback" not in stopped.stderr, \
        stopped.stderr[-3000:]
    assert [r["step"] for r in step_log(run)] == [1, 2, 3]
    assert read_meta(run / "checkpoints" / "latest")["step"] == 2 and not (run / "final").exists()
    (images / broken).write_bytes(good)

    resumed = _run_ok(train_cmd(run, "--resume", str(run / "checkpoints" / "latest")), env, timeout=300)
    assert json.loads(resumed.stdout[resumed.stdout.index("{"):])["steps"] == 8
    log, want = step_log(run), step_log(tmp_path / "reference")
    assert [r["step"] for r in log] == [1, 2, 3, 3, 4, 5, 6, 7, 8]  # the stopped run's, then steps 3-8 again
    same_steps(log[:3], want[:3])
    same_steps(log[3:], want[2:])
    assert (run / "final" / "lm").is_dir() and not (run / "final" / "training_state.pt").exists()
    assert_identical(checkpoint_weights(run / "final"), checkpoint_weights(tmp_path / "reference" / "final"),
                     "final/ (projector and LLM)")
    assert_identical(optimizer_moments(run / "checkpoints" / "epoch-002"),
                     optimizer_moments(tmp_path / "reference" / "checkpoints" / "epoch-002"), "AdamW state")
