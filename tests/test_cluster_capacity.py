"""An autoscaling cluster is checked against what its node types can ever hold, not the nodes up now: the README's
cluster command passes on the shipped cluster.yaml (a GPU-less head, GPU workers at min_workers 0), a request no node
type can hold is refused naming it, its profile and the node types. Where the shape is read from: a named file, the
autoscaler's config in the GCS, the ``ray up`` head's bootstrap file.

    pytest -q tests/test_cluster_capacity.py
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from sweeps.cluster.node_types import ClusterShape, ClusterView, check_can_hold, discover
from sweeps.driver import SweepConfig, concurrent_fit, plan_sweep
from sweeps.evaluation import EVAL_PROFILE, eval_resources
from sweeps.profiles import trial_resources
from vlm_core.base.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
HEAD_ONLY = {"cpu": 8.0, "memory": 3e10, "object_store_memory": 1e10}
"""ray.cluster_resources() of the shipped cluster.yaml when fresh: its head alone (keys as init_ray gives them)."""


@pytest.fixture(scope="module")
def shipped() -> ClusterShape:
    return ClusterShape.from_file(ROOT / "cluster.yaml")


def readme_command_plan(**over):
    """The README's cluster command's trials (paper preset, a100-40g, paper19, both stages, a benchmark)."""
    cfg = SweepConfig(data="/mnt/shared/data", images="/mnt/shared/images", preset="paper", backend="a100-40g",
                      grid="paper19", stage="all", eval_benchmarks="pope", **over)
    return cfg, plan_sweep(cfg)


def test_the_readme_command_is_held_by_the_shipped_cluster_though_no_gpu_is_up(shipped):
    _, sweep = readme_command_plan()
    fresh = ClusterView(HEAD_ONLY, shipped)
    for p in sweep.every:
        fresh.check(p.resources.per_worker(), p.resources.num_workers, p.spec.config_id, p.spec.profile, "a100-40g")
        assert [t.name for t in shipped.holders(p.resources.per_worker())] == ["a100-40g"]
    fresh.check(eval_resources("a100-40g").per_worker(), 1, "an evaluation task", EVAL_PROFILE, "a100-40g")
    # what the check said before it knew the node types: the head alone refuses every GPU trial
    with pytest.raises(ConfigError, match=r"GPU=1.0 \(cluster has 0.0\).*--cluster-config"):
        ClusterView(HEAD_ONLY).check(sweep.every[1].resources.per_worker(), 1, sweep.every[1].spec.config_id)
    # a fixed cluster of A100 nodes started by hand: Ray labels them "A100", the card size is theirs to declare
    by_hand = {"cpu": 96.0, "gpu": 8.0, "accelerator_type:a100": 1.0}
    with pytest.raises(ConfigError, match=r"ray start --resources='\{\"accelerator_type:A100-40G\": 1\}'"):
        ClusterView(by_hand).check(sweep.every[1].resources.per_worker(), 1, sweep.every[1].spec.config_id)


def test_stage1_concurrency_counts_the_nodes_the_autoscaler_can_launch(shipped):
    _, sweep = readme_command_plan()
    # a100-37g on a 40 GB card is 1 GPU + 4 CPUs: 8 a node, and the cluster may grow to 4 GPU workers (max_workers
    # 4, two of them a100-40g): 16 at once; the GPU-less head alone fits none (1: the floor)
    assert concurrent_fit(sweep.stages[1], ClusterView(HEAD_ONLY, shipped)) == 16
    assert concurrent_fit(sweep.stages[1], ClusterView(HEAD_ONLY)) == 1


def test_a_request_no_node_type_holds_is_refused_naming_it(shipped):
    mig = trial_resources("a100-37g", "mig-40g")
    with pytest.raises(ConfigError) as e:
        check_can_hold(shipped, mig.per_worker(), 1, "s1-10kRandom-dense-chat-linear-e6-b8", "a100-37g", "mig-40g")
    message = str(e.value)
    for named in ("s1-10kRandom-dense-chat-linear-e6-b8", "profile a100-37g on backend mig-40g",
                  "no node type has mig-7g.40gb)", "cluster.yaml", "a100-40g {'CPU': 96, 'GPU': 8",
                  "head {'CPU': 8, 'GPU': 0} (head)"):
        assert named in message, (named, message)
    # the other card size: only a cluster whose node types declare it holds an a100-80g trial
    only_40 = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    del only_40["available_node_types"]["a100-80g"]
    with pytest.raises(ConfigError, match="no node type has accelerator_type:A100-80G\\)"):
        check_can_hold(ClusterShape.from_config(only_40, "only-40g.yaml"),
                       trial_resources("a100-26g", "a100-80g").per_worker(), 1, "s1-x", "a100-26g", "a100-80g")


def test_more_workers_than_the_cluster_can_ever_have_is_refused(shipped):
    whole = trial_resources("a100-37g", "whole-gpu", num_workers=16)
    check_can_hold(shipped, whole.per_worker(), 16, "s2-x")  # 2 types × 2 nodes × 8 GPUs, capped at 4 nodes: 32
    capped = ClusterShape(shipped.node_types, max_workers=1, source="one-node.yaml")
    assert capped.capacity(whole.per_worker()) == 8
    with pytest.raises(ConfigError, match=r"s2-x asks 16 × .*one-node.yaml holds at most 8 such worker"):
        check_can_hold(capped, whole.per_worker(), 16, "s2-x")


def test_the_shape_is_found_where_each_kind_of_cluster_keeps_it(tmp_path, monkeypatch, shipped):
    from ray.core.generated import autoscaler_pb2

    # a named file wins; a local cluster this process started has none
    assert discover(str(ROOT / "cluster.yaml"), joined_existing=False) == shipped
    assert discover(None, joined_existing=False) is None
    # autoscaler v2 / KubeRay: node groups in the GCS (max_count -1: unbounded)
    config = autoscaler_pb2.ClusterConfig()
    group = config.node_group_configs.add(name="gpu-group", min_count=0, max_count=-1)
    group.resources["GPU"], group.resources["CPU"] = 8, 64
    from_gcs = ClusterShape.from_gcs(config)
    assert [t.name for t in from_gcs.holders({"GPU": 1.0, "CPU": 4})] == ["gpu-group"]
    assert ClusterShape.from_gcs(autoscaler_pb2.ClusterConfig()) is None
    # a `ray up` head running the v1 autoscaler: its bootstrap config (no Ray connection needed to find it)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert discover(None, joined_existing=True) is None
    (tmp_path / "ray_bootstrap_config.yaml").write_text((ROOT / "cluster.yaml").read_text())
    found = discover(None, joined_existing=True)
    assert found.node_types == shipped.node_types and found.source.endswith("ray_bootstrap_config.yaml")


@pytest.mark.parametrize("text, named", [
    ("cluster_name: x\n", "no available_node_types"),
    ("available_node_types: {a: {resources: {CPU: 1}}}\nhead_node_type: b\n", "head_node_type 'b' is not one of"),
    ("[1, 2]\n", "not a cluster config"),
])
def test_a_bad_cluster_config_is_named(tmp_path, text, named):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=named):
        ClusterShape.from_file(path)


def test_the_simulated_copy_is_built_from_the_cluster_config_itself():
    from sweeps.cluster.simulated import HEAD_TYPE, SimulationLimits, fake_provider_config

    cluster = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    copy = fake_provider_config(cluster, SimulationLimits(object_store_mb=100, idle_timeout_s=6, max_workers=2),
                                "127.0.0.1:7000")
    types = copy["available_node_types"]
    assert set(types) == {HEAD_TYPE, *(n for n in cluster["available_node_types"] if n != "head")}
    for name, t in cluster["available_node_types"].items():
        same = types[HEAD_TYPE if name == "head" else name]
        assert {k: v for k, v in same["resources"].items() if k != "object_store_memory"} == t["resources"]
        assert same["resources"]["object_store_memory"] == 100 << 20
        assert (same["min_workers"], same["max_workers"]) == (t["min_workers"], t["max_workers"])
    assert copy["max_workers"] == 2 and copy["idle_timeout_minutes"] == 0.1 and copy["head_node_type"] == HEAD_TYPE
    assert copy["provider"]["type"] == "fake_multinode" and copy["provider"]["gcs_address"] == "127.0.0.1:7000"


def test_the_rehearsed_command_is_read_as_the_cli_reads_it():
    from sweeps.cli import command_after_dashes
    from sweeps.commands import parse_sweep_command

    argv = command_after_dashes(["rehearse", "--cluster", "c.yaml", "--", "vlm-sweep", "sweep", "--preset", "paper",
                                 "--data", "/d", "--images", "/i", "--paper-ids", "[3, 9]", "--no-feature-cache"])
    assert argv[:4] == ["rehearse", "--cluster", "c.yaml", "--command"]
    submitted = parse_sweep_command(json.loads(argv[4]))
    assert (submitted.preset, submitted.paper_ids, submitted.feature_cache) == ("paper", [3, 9], False)
    assert submitted.rehearsal is False  # only the rehearsal sets it; no flag reaches it:
    with pytest.raises(ConfigError, match="unrecognized arguments: --rehearsal"):
        parse_sweep_command(["sweep", "--data", "/d", "--images", "/i", "--rehearsal", "true"])
    with pytest.raises(ConfigError, match="must be a `vlm-sweep sweep ...` command"):
        parse_sweep_command(["run", "--preset", "local"])
