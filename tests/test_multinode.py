"""Several nodes for real: a head without CPUs and worker nodes, each its own raylet with its own resources and temp
folder (tests/local_cluster.py; one host: no network namespaces here, so the nodes share the file system, as nodes
share the cluster's storage). The data build's tasks and actors and every trial run on the worker nodes; a worker
node SIGKILLed mid-trial costs a restart on the other node from the last checkpoint, with the same steps (Tune's
runner); stage 2 runs on nodes that replaced those that wrote its stage-1 checkpoints, through TorchTrainers; its
driver SIGKILLed, ``--resume`` from another process finishes it without rerunning the finished trial; nothing
recorded points into a node's temp folder.

    pytest -q tests/test_multinode.py
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.local_cluster import LocalCluster

VLM_SWEEP = [sys.executable, "-m", "sweeps.cli"]
S1_UMAP, S1_RANDOM = "s1-20kUmap-nodense-raw-linear-e6-b12", "s1-10kRandom-nodense-raw-linear-e6-b8"
S2_UMAP = "s2-20kUmap-nodense-raw-linear-e3-b3-from-e6-b12"
S2_RANDOM = "s2-10kRandom-nodense-raw-linear-e3-b3-from-e6-b8"
SLOW = 1.0
"""Seconds each optimizer step sleeps in the trials the test interrupts (``VLM_SWEEP_FAULTS``), so that a kill lands
mid-trial."""


def _results(trial_dir: Path) -> list[dict]:
    path = trial_dir / "result.json"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def _wait(ready, what: str, proc: subprocess.Popen | None = None, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not ready():
        assert proc is None or proc.poll() is None, f"the sweep ended before {what}"
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


@pytest.fixture(scope="module")
def multinode(corpus, tmp_path_factory):
    """The whole story, once: build the data on a 2-worker cluster, stage 1 with a worker node killed mid-trial,
    both worker nodes replaced, stage 2 with its driver killed and resumed from another process."""
    tmp = tmp_path_factory.mktemp("multinode")
    cluster = LocalCluster()
    facts: dict = {"cluster": cluster, "out": tmp / "sweep", "data": tmp / "data"}
    try:
        cluster.start_head()
        cluster.add_workers("w1", "w2")
        build_cfg = tmp / "build.yaml"
        build_cfg.write_text(yaml.safe_dump({
            "source": str(corpus / "sharegpt4v_sample.jsonl"), "images": str(corpus / "images"),
            "out": str(facts["data"]), "variants": [{"name": "20kUmap", "kind": "umap", "size": 24},
                                                    {"name": "10kRandom", "kind": "random", "size": 24}],
            "umap": {"n_components": 5, "fit_sample": 50}, "cluster": {"k_range": [3, 4]}}))
        built = subprocess.run([*VLM_SWEEP, "data", "build", "--config", str(build_cfg)], env=cluster.env(),
                               capture_output=True, text=True, timeout=600)
        assert built.returncode == 0, built.stderr[-3000:]
        from ray.util.state import list_tasks

        facts["build_tasks"] = [t for t in list_tasks(address=cluster.dashboard, detail=True, limit=10_000,
                                                      raise_on_missing_output=False)
                                if t.type != "DRIVER_TASK"]
        facts["workers_at_build"] = {cluster.nodes["w1"], cluster.nodes["w2"]}

        # stage 1: one trial a node (1 CPU each); the 20kUmap trial slowed down, its node killed after its first
        # checkpoint: Tune restarts it on the other node, from that checkpoint
        sweep = [*VLM_SWEEP, "sweep", "--data", str(facts["data"]), "--images", str(corpus / "images"), "--preset",
                 "tiny", "--paper-ids", "[3, 9]", "--out", str(facts["out"]), "--wandb", "disabled"]
        env = {**cluster.env(), "VLM_SWEEP_FAULTS": json.dumps({"sleep_after_step_s": SLOW, "only": S1_UMAP})}
        log = (tmp / "stage1.log").open("w")
        proc = subprocess.Popen([*sweep, "--stage", "1"], env=env, stdout=log, stderr=subprocess.STDOUT)
        umap_dir = facts["out"] / "stage1" / S1_UMAP
        _wait(lambda: any(r.get("checkpoint_path") for r in _results(umap_dir)), "the first checkpoint", proc)
        victim = cluster.name_of(_results(umap_dir)[0]["node_id"])
        facts["killed"] = (victim, cluster.nodes[victim])
        cluster.kill(victim)
        assert proc.wait(timeout=600) == 0, (tmp / "stage1.log").read_text()[-3000:]
        facts["stage1"] = json.loads((facts["out"] / "trials.json").read_text())["stages"]["1"]

        # between the stages every worker node goes (as an autoscaler removes idle nodes) and two new ones come
        survivors = [n for n in ("w1", "w2") if n != victim]
        for name in survivors:
            cluster.kill(name)
        cluster.add_workers("w3", "w4")
        facts["stage1_nodes"] = {cluster.nodes[n] for n in ("w1", "w2")}
        facts["temp_dirs"] = [str(cluster.root / n) for n in cluster.nodes]

        # stage 2 on the TorchTrainer runner (the GPU path: the Tune trial and Train's controller hold no CPU, on
        # the head; the Train workers on the nodes), one trial at a time, no ASHA rung before the last epoch: the
        # driver SIGKILLed once the first continuation has finished and the second has a checkpoint, then resumed
        # from another process
        s2 = [*sweep, "--stage", "2", "--runner", "train", "--asha.grace-period", "3"]
        env = {**cluster.env(), "VLM_SWEEP_FAULTS": json.dumps({"sleep_after_step_s": SLOW, "only": "s2-"})}
        proc = subprocess.Popen(s2, env=env, stdout=log, stderr=subprocess.STDOUT)
        first, second = (facts["out"] / "stage2" / t for t in (S2_UMAP, S2_RANDOM))
        _wait(lambda: len(_results(first)) == 3 and any((facts["out"] / "train").glob(f"train-{S2_RANDOM}-*/"
                                                                                       f"checkpoint_*")),
              "the first continuation's end and the second's checkpoint", proc)
        time.sleep(1)  # the report that came with the checkpoint reaches Tune
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        facts["s2_first_before"] = _results(first)
        facts["stage2_nodes_before"] = {cluster.nodes["w3"], cluster.nodes["w4"]}
        # the driver's node goes with it: the head (the cluster's GCS, not fault tolerant without Redis) and so the
        # whole cluster; a new cluster resumes the sweep from the shared storage
        cluster.stop()
        cluster = facts["cluster"] = LocalCluster()
        cluster.start_head()
        cluster.add_workers("w5")  # one node: the resumed stage runs one trial at a time
        env = {**cluster.env(), "VLM_SWEEP_FAULTS": json.dumps({"sleep_after_step_s": SLOW, "only": "s2-"})}
        resumed = subprocess.run([*s2, "--resume"], env=env, capture_output=True, text=True, timeout=600)
        log.close()
        facts["resumed"] = resumed
        facts["s2_first"], facts["s2_second"] = _results(first), _results(second)
        facts["temp_dirs"] += [str(cluster.root / n) for n in cluster.nodes]
        yield facts
    finally:
        facts["cluster"].stop()


def test_the_data_build_runs_its_tasks_and_actors_on_the_worker_nodes(multinode):
    # what asks for a CPU (Ray Data's reads and embedding actors, the UMAP fit): Ray's own 0-CPU helpers may sit on
    # the head
    tasks = [t for t in multinode["build_tasks"] if (t.required_resources or {}).get("CPU", 0) > 0
             and t.node_id]  # (Ray Data cancels some tasks it queued before they were placed: no node)
    names = {t.name for t in tasks}
    assert any("MapBatches" in n for n in names) and any("fit" in n for n in names), names
    ran_on = {t.node_id for t in tasks}
    assert ran_on and ran_on <= multinode["workers_at_build"], (ran_on, multinode["cluster"].nodes)
    manifest = json.loads((multinode["data"] / "manifest.json").read_text())
    assert {v: manifest["variants"][v]["sampled"] for v in ("20kUmap", "10kRandom")} == {"20kUmap": 24,
                                                                                         "10kRandom": 24}


def test_a_trial_on_a_killed_node_restarts_on_the_other_from_its_checkpoint_with_the_same_steps(multinode):
    out, (_, victim_id) = multinode["out"], multinode["killed"]
    trials = {t["config_id"]: t for t in multinode["stage1"]}
    umap = trials[S1_UMAP]
    assert umap["status"] == "finished" and umap["restarts"] == 1
    assert umap["nodes"][0] == victim_id and umap["nodes"][-1] != victim_id  # moved off the lost node
    curve = _results(out / "stage1" / S1_UMAP)
    by_epoch = {r["epoch"]: r["step"] for r in curve}
    # every epoch once, the steps of an uninterrupted run: epoch k ends at k × (steps of epoch 1)
    assert sorted(by_epoch) == list(range(1, umap["epochs_planned"] + 1))
    assert all(step == epoch * by_epoch[1] for epoch, step in by_epoch.items()), by_epoch
    resumed_from = [r for r in curve if r["node_id"] != victim_id]
    assert resumed_from[0]["epoch"] > 1  # it continued after the checkpoint written on the lost node
    # the two stage-1 trials ran on the two worker nodes, never on the CPU-less head
    assert {trials[S1_RANDOM]["nodes"][0], victim_id} == multinode["workers_at_build"]
    report = (out / "report.md").read_text()
    assert f"`{S1_UMAP}` (1×)" in report.split("## Stage 2")[0]


def test_stage2_continues_checkpoints_written_on_nodes_that_are_gone(multinode):
    out, cluster = multinode["out"], multinode["cluster"]
    resumed = multinode["resumed"]
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    lineage = json.loads((out / "lineage.json").read_text())
    stage2 = json.loads((out / "trials.json").read_text())["stages"]["2"]
    assert len(stage2) == 2
    new_nodes = multinode["stage2_nodes_before"] | {cluster.nodes["w5"]}
    for t in stage2:
        assert t["status"] in ("finished", "stopped_early") and set(t["nodes"]) <= new_nodes, t
        assert not set(t["nodes"]) & multinode["stage1_nodes"]
    parents = {lineage[p]["checkpoint"] for p in (S1_UMAP, S1_RANDOM)}
    assert all(Path(p).is_dir() for p in parents)
    # the trials read the feature cache the build's actors wrote on other nodes (next to the dataset, shared)
    params = json.loads((out / "stage2" / S2_RANDOM / "params.json").read_text())["trial"]
    features = params["worker"]["data"]["features"]
    assert features and Path(features).is_relative_to(multinode["data"]) and Path(features).is_dir()


def test_a_killed_driver_resumes_from_another_process_without_rerunning_finished_trials(multinode):
    """The driver's node lost mid-stage (the driver SIGKILLed, then the head and with it the cluster): no handler
    runs, nothing is saved on the way out; ``--resume`` from another process on a new cluster finishes the stage from
    what Tune and the trials wrote to shared storage: the finished trial is not rerun, the cut one continues from its
    checkpoint (Train V2 restores a run by its stable name). The TorchTrainer runner's test of this; the Tune
    runner's is tests/test_stage2_resume.py."""
    assert multinode["resumed"].returncode == 0, multinode["resumed"].stderr[-3000:]
    first, second = multinode["s2_first"], multinode["s2_second"]
    assert first == multinode["s2_first_before"] and [r["epoch"] for r in first] == [1, 2, 3]
    epochs = [r["epoch"] for r in second]
    assert epochs[-1] == 3 and all(b > a for a, b in zip(epochs, epochs[1:]))
    restarts = [i for i, r in enumerate(second) if r["iterations_since_restore"] == 1]
    assert second[restarts[-1]]["epoch"] >= 2, epochs  # continued after the checkpoint, not from the start
    report = (multinode["out"] / "report.md").read_text()
    assert "## Stage 2: 2 trials (2 TERMINATED)" in report


def test_nothing_recorded_points_into_a_nodes_temp_folder(multinode):
    out = multinode["out"]
    recorded = "\n".join(p.read_text() for p in (out / "lineage.json", out / "trials.json", out / "trials.csv"))
    assert str(out) in recorded
    for temp in multinode["temp_dirs"]:
        assert temp not in recorded
