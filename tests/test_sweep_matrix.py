"""The study's matrices as data, and hardware profiles mapped onto Ray resources."""

from __future__ import annotations

import pytest

from sweeps.cluster.node_types import fits_live
from sweeps.matrix import PAPER19_TABLE, get_grid
from sweeps.profiles import trial_resources
from vlm_core.base.errors import ConfigError


def test_paper19_has_the_19_tabled_runs_and_6_continuations():
    s1, s2 = get_grid("paper19", 1), get_grid("paper19", 2)
    assert len(s1) == 19 and len(s2) == 6
    assert len({t.config_id for t in s1}) == 19  # ids are unique
    assert s1[1].config_id == "s1-20kUmap-nodense-raw-linear-e3-b12" and s1[1].profile == "a100-37g"
    assert s1[0].batch_size == 1 and s1[0].profile == "a100-10g"
    row16 = next(t for t in s1 if t.paper_id == 16)
    assert (row16.dataset, row16.dense, row16.chat, row16.scheduler, row16.epochs) == ("10kRandom", True, True,
                                                                                       "linear", 9)
    assert [t.paper_id for t in s2] == [3, 7, 9, 13, 16, 19]
    by_id = {t.config_id: t for t in s1}
    for t in s2:
        parent = by_id[t.parent]
        assert (t.dataset, t.dense, t.chat, t.scheduler) == (parent.dataset, parent.dense, parent.chat,
                                                             parent.scheduler)
        assert (t.epochs, t.batch_size, t.profile, t.stage) == (3, 3, "a100-28g", 2)
    assert all(t.lr == 2e-5 for t in s1 + s2)
    assert len(PAPER19_TABLE) == 19


def test_full_grid_is_the_cartesian_product_and_contains_the_paper_runs():
    full = get_grid("full", 1)
    assert len(full) == 2 * 2 * 2 * 2 * 3 * 3 == len({t.config_id for t in full})
    full_ids = {t.config_id for t in full}
    assert {t.config_id for t in get_grid("paper19", 1)} <= full_ids
    s2 = get_grid("full", 2)  # every stage-1 config continued with the LLM tuned fully and with LoRA
    assert len(s2) == 2 * len(full) and [t.lm_tuning for t in s2[:2]] == ["full", "lora"]
    # each continuation its own id (they name Tune trials, folders and ASHA records): 288, not 32
    assert len({t.config_id for t in s2}) == len(s2)
    assert {t.config_id for t in get_grid("paper19", 2)} <= {t.config_id for t in s2}  # the same config, same id
    by_parent = {(t.parent, t.lm_tuning): t.config_id for t in s2}
    assert by_parent[("s1-20kUmap-nodense-chat-cosine-e9-b8", "full")] == (
        "s2-20kUmap-nodense-chat-cosine-e3-b3-from-e9-b8")
    assert by_parent[("s1-20kUmap-nodense-chat-cosine-e9-b8", "lora")] == (
        "s2-20kUmap-nodense-chat-cosine-e3-b3-from-e9-b8-lora")


def test_the_lora_grid_runs_the_six_continuations_with_lora():
    from sweeps.trial_config import trial_configs
    from vlm_core.presets import preset

    s1, s2 = get_grid("lora", 1), get_grid("lora", 2)
    assert [t.config_id for t in s1] == [t.config_id for t in get_grid("paper19", 1)]
    assert [t.config_id for t in s2] == [t.config_id + "-lora" for t in get_grid("paper19", 2)]
    assert {t.parent for t in s2} == {t.parent for t in get_grid("paper19", 2)}  # the same stage-1 checkpoints
    _, train = trial_configs(s2[0], "tiny", preset("tiny").scale, init_checkpoint="ckpt")
    assert train.lm_tuning == "lora" and train.stage == 2
    assert all(t.lm_tuning == "full" for t in get_grid("paper19", 2))


def test_unknown_grid_is_named():
    with pytest.raises(ConfigError, match="unknown grid 'paper20'"):
        get_grid("paper20", 1)


@pytest.mark.parametrize("profile, gpu", [("a100-10g", 0.25), ("a100-26g", 0.75), ("a100-28g", 0.75),
                                          ("a100-37g", 1.0)])
def test_fractional_profiles_on_40g_cards(profile, gpu):
    r = trial_resources(profile, "a100-40g")
    assert r.use_gpu and r.resources_per_worker["GPU"] == gpu and r.accelerator_type == "A100-40G"
    assert r.per_worker()["accelerator_type:A100-40G"] == 0.001  # what Ray asks of the node's label
    assert r.cuda_memory_fraction == (gpu if gpu < 1 else None)
    assert r.gradient_checkpointing == (profile == "a100-10g")


def test_other_backends():
    assert trial_resources("a100-37g", "a100-80g").resources_per_worker["GPU"] == 0.5
    assert trial_resources("a100-26g", "whole-gpu").resources_per_worker["GPU"] == 1
    assert trial_resources("a100-28g", "mig-80g").resources_per_worker == {"CPU": 4, "mig-3g.40gb": 1}
    assert trial_resources("a100-10g", "mig-40g").resources_per_worker == {"CPU": 4, "mig-2g.10gb": 1}
    cpu = trial_resources("a100-37g", "cpu")
    assert not cpu.use_gpu and cpu.resources_per_worker == {"CPU": 1}


def test_impossible_requests_fail_clearly():
    with pytest.raises(ConfigError, match="break multi-worker NCCL"):
        trial_resources("a100-10g", "a100-40g", num_workers=2)
    assert trial_resources("a100-37g", "a100-40g", num_workers=2).total()["GPU"] == 2  # whole cards are fine
    with pytest.raises(ConfigError, match="unknown hardware profile"):
        trial_resources("h100-80g", "cpu")
    with pytest.raises(ConfigError, match=r"GPU=0.25 \(cluster has 0.0\)"):
        fits_live(trial_resources("a100-10g", "a100-40g").total(), {"CPU": 2}, "s1-…")
    fits_live(trial_resources("a100-10g", "cpu").total(), {"cpu": 2}, "s1-…")


def test_asha_rungs_follow_grace_and_reduction():
    from sweeps.scheduling import rung_milestones

    assert rung_milestones(1, 2, 3) == [1, 2]
    assert rung_milestones(1, 3, 9) == [1, 3]
    assert rung_milestones(2, 2, 9) == [2, 4, 8]
    assert rung_milestones(3, 2, 3) == []  # nothing to prune when the grace period is the whole run


def test_wandb_project_per_trial_and_mode(monkeypatch, tmp_path):
    from sweeps.driver import SweepConfig
    from sweeps.tracking import DENSE_PROJECT, PROJECT, project_for, resolve_mode, wandb_callbacks

    s1 = get_grid("paper19", 1)
    assert {project_for(t.to_dict()) for t in s1 if t.dense} == {DENSE_PROJECT}
    assert {project_for(t.to_dict()) for t in s1 if not t.dense} == {PROJECT}
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    assert resolve_mode("auto") == "offline"  # never requires an account
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert resolve_mode("auto") == "online" and resolve_mode("offline") == "offline"
    assert wandb_callbacks("disabled", "g") == []
    with pytest.raises(ConfigError, match=r"wandb: unknown W&B mode 'maybe'; choose one of \['auto', 'disabled'"):
        SweepConfig(data="d", images="i", wandb="maybe")


def test_local_scale_raises_only_the_projector_lr():
    from sweeps.trial_config import trial_configs
    from vlm_core.presets import preset

    s1, s2 = get_grid("paper19", 1)[0], get_grid("paper19", 2)[0]
    _, t1 = trial_configs(s1, "local", preset("local").scale)
    _, t2 = trial_configs(s2, "local", preset("local").scale, init_checkpoint="ckpt")
    assert t1.lr == 1e-3 and t2.lr == 2e-5 == s2.lr  # the pretrained LLM keeps the study's rate
    assert t2.init_checkpoint == "ckpt" and t1.max_val_samples == t2.max_val_samples == 4
    assert t1.max_steps_per_epoch == t2.max_steps_per_epoch == 1 and t1.batch_size == 1 and t2.batch_size == 2
    assert (s1.epochs, t1.epochs, s2.epochs, t2.epochs) == (3, 1, 3, 3)  # stage 1 runs a third; stage 2 all
    _, long1 = trial_configs(s1, "local-long", preset("local-long").scale)
    assert long1.max_steps_per_epoch == 24 and long1.batch_size == 1 and long1.lr == 1e-3  # cap 8 never raises
    _, p2 = trial_configs(s2, "paper", preset("paper").scale)
    assert p2.lr == 2e-5 and p2.batch_size == 3 and p2.max_steps_per_epoch is None


def test_trials_running_alone_on_cpus_get_the_node_s_cores():
    from sweeps.driver import SweepConfig, plan, spread_cpus

    planned = plan(SweepConfig(data="d", images="i", preset="local", stage="2"), 2)
    alone = spread_cpus(planned, node_cpus=2, concurrent=1)
    assert {p.resources.resources_per_worker["CPU"] for p in alone} == {2}  # torch gets both threads
    assert {p.resources.resources_per_worker["CPU"] for p in spread_cpus(planned, 2, 2)} == {1}
    assert [p.spec for p in alone] == [p.spec for p in planned]
    gpu = plan(SweepConfig(data="d", images="i", preset="paper", stage="2"), 2)
    assert [p.resources for p in spread_cpus(gpu, 16, 1)] == [p.resources for p in gpu]  # GPU requests untouched


def test_num_workers_reaches_each_stage_s_trials_and_fractions_refuse_more_than_one():
    from sweeps.driver import SweepConfig, format_plan, plan

    cfg = SweepConfig(data="d", images="i", preset="tiny", paper_ids=[3], num_workers=2, stage2_num_workers=3)
    assert [p.resources.num_workers for p in plan(cfg, 1)] == [2]
    assert [p.resources.num_workers for p in plan(cfg, 2)] == [3]
    assert plan(cfg, 1)[0].resources.total() == {"CPU": 2}  # the cluster check sees both workers
    assert " 2       " in format_plan(plan(cfg, 1))  # --dry_run shows the workers
    assert [p.resources.num_workers for p in plan(SweepConfig(data="d", images="i", paper_ids=[3]), 1)] == [1]
    gpu = SweepConfig(data="d", images="i", preset="tiny", paper_ids=[1], num_workers=2, backend="a100-40g")
    with pytest.raises(ConfigError, match="cannot run 2 workers: fractional GPUs are logical and break "
                                          "multi-worker NCCL"):
        plan(gpu, 1)  # row 1: a100-10g, a quarter of a 40 GB card
    with pytest.raises(ConfigError, match="num_workers: must be >= 1"):
        SweepConfig(data="d", images="i", num_workers=0)


def test_stage2_sharding_reaches_fully_tuned_stage2_trials_only():
    from sweeps.driver import SweepConfig
    from sweeps.matrix import continuation
    from sweeps.trial_config import trial_configs
    from vlm_core.presets import preset

    scale = preset("tiny").scale
    stage1 = get_grid("paper19", 1)[0]
    shardings = {t.config_id: trial_configs(t, "tiny", scale, stage2_sharding="fsdp")[1].sharding
                 for t in (stage1, continuation(stage1), continuation(stage1, "lora"))}
    assert list(shardings.values()) == ["none", "fsdp", "none"], shardings
    with pytest.raises(ConfigError, match=r"stage2_sharding: unknown sharding 'zero3'; choose one of \['fsdp'"):
        SweepConfig(data="d", images="i", stage2_sharding="zero3")


def test_a_trial_travels_as_a_dict_and_comes_back_the_same(tmp_path):
    from sweeps.driver import SweepConfig, make_trial, plan
    from sweeps.scheduling import AshaLink
    from sweeps.trial_config import Trial, TrialRun
    from vlm_core.training.one_stage import DataSpec

    cfg = SweepConfig(data="d", images="i", preset="tiny", stage="2", paper_ids=[3])
    p = plan(cfg, 2)[0]
    trial = make_trial(cfg, p, tmp_path, {p.spec.dataset: DataSpec("train.parquet", "/images")}, {}, "ckpt",
                       AshaLink("decisions.jsonl", 1.0, [1, 2]))
    assert Trial.from_dict(trial.to_dict()) == trial  # the nested configs, resources and ASHA link are dataclasses
    run = trial.run_for("t_00000", "vlm-trial-t_00000-")
    assert TrialRun.from_dict(run.to_dict()) == run
    assert (run.asha.trial, run.asha.config_hash) == (trial.config_id, trial.run.digest())
    with pytest.raises(ConfigError, match="unknown config key"):
        TrialRun.from_dict({**run.to_dict(), "bogus": 1})
