"""A real (tiny) two-stage sweep through Ray Tune on CPU: lineage, ASHA stopping a
trial, the report, wandb offline runs, the analysis notebook, refusing to overwrite, and resuming an interrupted
sweep.

    pytest -q tests/test_sweep.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from sweeps.driver import SweepConfig, run_sweep
from sweeps.scheduling import read_decisions
from sweeps.tracking import DENSE_PROJECT, PROJECT
from tests.conftest import WANDB_SECRET as SECRET
from tests.notebook import run_analysis_notebook
from vlm_core.base.errors import ConfigError
from vlm_core.training.checkpoint import read_meta

S1_UMAP, S1_RANDOM = "s1-20kUmap-nodense-raw-linear-e6-b12", "s1-10kRandom-nodense-raw-linear-e6-b8"
S2_UMAP = "s2-20kUmap-nodense-raw-linear-e3-b3-from-e6-b12"
S2_RANDOM = "s2-10kRandom-nodense-raw-linear-e3-b3-from-e6-b8"


@pytest.fixture(scope="module")
def sweep(two_stage_sweep):
    """(config, result, out) of the tiny two-stage sweep (tests/conftest.py) on the default runner (the CPU trials
    train in the Tune trial itself; shared with test_stage2_resume.py). The TorchTrainer runner's copy of it (62 s of
    CI) was dropped on 2026-12-07: that path runs end to end in tests/test_multinode.py (stage 2 through TorchTrainers
    on other nodes, its driver killed and resumed, the report), tests/test_rehearsal.py, tests/test_faults.py (a
    killed Train worker, one and two per trial) and the FSDP claim of tests/test_readme_claims.py."""
    return two_stage_sweep


def test_the_wandb_key_is_written_nowhere(sweep):
    """Not in the sweep's folder (params, results, lineage, report, W&B runs) nor in Ray's session logs (Ray's own
    W&B callback passes the key in the logging actor's runtime_env, which Ray logs in plain text)."""
    import ray

    _, _, out = sweep
    session_logs = Path(ray._private.worker._global_node.get_session_dir_path()) / "logs"
    files = [p for root in (out, session_logs) for p in root.rglob("*") if p.is_file()]
    assert any(p.name.startswith("runtime_env_agent") for p in files)  # the log that used to hold it is read
    assert [str(p) for p in files if SECRET.encode() in p.read_bytes()] == []


def test_stage2_without_stage1_is_a_clear_error(ray_local, variants, corpus, tmp_path):
    cfg = SweepConfig(data=str(variants), images=str(corpus / "images"), preset="tiny", stage="2", paper_ids=[3],
                      out=str(tmp_path), wandb="disabled")
    with pytest.raises(ConfigError, match=f"continues {S1_UMAP}, which has no finished"):
        run_sweep(cfg)


def test_stage2_refuses_a_corrupt_stage1_checkpoint_before_any_trial(ray_local, variants, corpus, tmp_path, tiny_cfg):
    from vlm_core.model.vlm import VisionLanguageModel
    from vlm_core.training.checkpoint import save_checkpoint

    ckpt = save_checkpoint(VisionLanguageModel.build(tiny_cfg), tmp_path / "s1ckpt", stage=1, step=1, epoch=1)
    weights = ckpt / "projector.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8] + b"\0" * 8)  # e.g. a bad copy off a preemptible node
    (tmp_path / "lineage.json").write_text(json.dumps({S1_UMAP: {"checkpoint": str(ckpt)}}))
    cfg = SweepConfig(data=str(variants), images=str(corpus / "images"), preset="tiny", stage="2", paper_ids=[3],
                      out=str(tmp_path), wandb="disabled")
    with pytest.raises(ConfigError, match=f"continues {S1_UMAP}, whose stage-1 checkpoint is unusable.*sha256"):
        run_sweep(cfg)
    assert not (tmp_path / "stage2").exists()


def test_two_stage_sweep_with_lineage(sweep):
    cfg, result, out = sweep
    lineage = result["lineage"]
    assert set(lineage) == {S1_UMAP, S1_RANDOM}
    for entry in lineage.values():
        assert entry["checkpoint"] and out.as_posix() in entry["checkpoint"] and Path(entry["checkpoint"]).is_dir()
        assert entry["best_val_loss"] > 0
    s1, s2 = result["stages"][1], result["stages"][2]
    assert all(r["error"] is None and r["epochs_run"] == 6 for r in s1)
    assert len(s2) == 2 and all(r["error"] is None for r in s2)
    # every stage-2 trial started from its parent's stage-1 checkpoint, recorded in its config
    for r in s2:
        params = json.loads((out / "stage2" / r["config_id"] / "params.json").read_text())
        parent = params["trial"]["spec"]["parent"]
        assert params["trial"]["worker"]["train"]["init_checkpoint"] == lineage[parent]["checkpoint"]
        # the feature cache is on by default: built next to the dataset, read by every trial of that dataset
        features = Path(params["trial"]["worker"]["data"]["features"])
        assert features.parent == Path(cfg.data) / r["dataset"] / "features" and (features / "features.arrow").is_file()


def test_asha_stops_the_continuation_that_cannot_improve(sweep):
    _, result, out = sweep
    decisions = read_decisions(out / "stage2" / "asha_decisions.jsonl")
    first = [d for d in decisions if d["rung"] == 1]
    assert [(d["trial"], d["decision"]) for d in first] == [(S2_UMAP, "continue"), (S2_RANDOM, "stop")]
    assert first[1]["val_loss"] > first[0]["val_loss"] == first[1]["rung_before"][S2_UMAP]
    s2 = {r["config_id"]: r for r in result["stages"][2]}
    assert s2[S2_RANDOM]["epochs_run"] == 1 and s2[S2_RANDOM]["stopped_early"]
    # it ended at its rung (its workers waited for the decision) and the checkpoint ASHA judged is the one kept
    stopped_ckpt = s2[S2_RANDOM]["best_checkpoint"]
    assert stopped_ckpt and read_meta(stopped_ckpt)["metrics"]["epoch"] == 1
    assert [c.name for c in Path(stopped_ckpt).parent.glob("checkpoint_*") if c.is_dir()] == [Path(stopped_ckpt).name]
    assert s2[S2_UMAP]["epochs_run"] == 3 and not s2[S2_UMAP]["stopped_early"]
    assert result["report"]["stopped_by_asha"] == [S2_RANDOM]


def test_stopped_and_finished_trials_give_their_cpus_back(sweep):
    """ASHA kills a stopped trial's Train controller; Train's PlacementGroupCleaner must then free its CPUs. It
    finds the cluster through the State API address every worker of our local cluster is given (ray_env)."""
    import ray
    from ray.dashboard.utils import get_address_for_submission_client

    @ray.remote(num_cpus=0)
    def api_server_seen_by_a_worker() -> str:
        return get_address_for_submission_client(None)

    assert ray.get(api_server_seen_by_a_worker.remote()) == f"http://{ray._private.worker.get_dashboard_url()}"
    deadline = time.monotonic() + 60
    while ray.available_resources().get("CPU", 0) < ray.cluster_resources()["CPU"] and time.monotonic() < deadline:
        time.sleep(1)
    leaked = {pg: t["bundles"] for pg, t in ray.util.placement_group_table().items() if t["state"] == "CREATED"}
    assert ray.available_resources().get("CPU", 0) == ray.cluster_resources()["CPU"], leaked


def test_report_table_csv_and_plots(sweep):
    _, _, out = sweep
    table = pd.read_csv(out / "trials.csv")
    assert sorted(table["config_id"]) == sorted([S1_UMAP, S1_RANDOM, S2_UMAP, S2_RANDOM])
    assert (table["status"] == "TERMINATED").all() and table["best_val_loss"].gt(0).all()
    row = table.set_index("config_id").loc[S2_RANDOM]
    assert bool(row["stopped_by_asha"]) and row["asha_rung"] == 1 and row["epochs_run"] == 1
    assert table["wall_s"].gt(0).all() and table["tokens_per_s"].gt(0).all() and table["samples_per_s"].gt(0).all()
    assert table["pad_fraction"].between(0, 1).all()
    md = (out / "report.md").read_text()
    assert "samples_per_s" in md and "pad_fraction" in md
    lengths = json.loads((out / "token_lengths.json").read_text())["rows"]  # measured before the trials
    assert sorted(r["dataset"] for r in lengths) == ["10kRandom", "20kUmap"]
    assert all(r["format"] == "raw, 16 image tokens" and 0 < r["p50"] <= r["max"] for r in lengths)
    assert "## Token lengths (measured before the trials)" in md and "| 20kUmap | raw, 16 image tokens |" in md
    for needle in (S1_UMAP, S2_RANDOM, "## Best val loss by ablation axis", "## ASHA (stage 2)",
                   "| s2-10kRandom-nodense-raw-linear-e3-b3-from-e6-b8 | 1 |", "![loss_curves](loss_curves.png)"):
        assert needle in md
    for png in ("loss_curves.png", "by_axis.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and (out / png).stat().st_size > 10_000


def test_report_command_rewrites_it_without_ray(sweep, tmp_path):
    _, _, out = sweep
    (out / "report.md").unlink()
    proc = subprocess.run([sys.executable, "-m", "sweeps.cli", "report", str(out)], capture_output=True,
                          text=True, timeout=300, env={**os.environ, "RAY_ADDRESS": ""})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout[proc.stdout.index("{"):])["trials"] == 4 and (out / "report.md").is_file()
    proc = subprocess.run([sys.executable, "-m", "sweeps.cli", "report", str(tmp_path)], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 2 and "holds no stage1/ or stage2/" in proc.stderr


def test_one_offline_wandb_run_per_trial_in_the_study_project(sweep):
    _, _, out = sweep
    for stage, cid in ((1, S1_UMAP), (1, S1_RANDOM), (2, S2_UMAP), (2, S2_RANDOM)):
        runs = list((out / f"stage{stage}" / cid / "wandb").glob("offline-run-*/run-*.wandb"))
        assert len(runs) == 1, (cid, runs)
        blob = runs[0].read_bytes()
        assert PROJECT.encode() in blob and DENSE_PROJECT.encode() not in blob  # paper runs 3 and 9: no dense
        assert f"tiny-study-stage{stage}".encode() in blob  # the group: sweep and stage


def test_rerunning_into_a_finished_experiment_needs_resume(sweep):
    cfg, _, _ = sweep
    with pytest.raises(ConfigError, match="already holds a stage-1 experiment; pass --resume to"):
        run_sweep(cfg)


def test_analysis_notebook_runs_on_the_sweep(sweep, tmp_path):
    _, _, out = sweep
    nb, text = run_analysis_notebook(out, tmp_path)
    assert "4 trials agree with trials.csv" in text
    assert f"stopped by ASHA: {{'{S2_RANDOM}': 1}}" in text
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if "image/png" in o.get("data", {})]
    assert len(images) == 2
