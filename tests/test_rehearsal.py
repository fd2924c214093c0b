"""README's rehearsal command on the shipped cluster.yaml's node types (resources scaled down to this machine, at
most 2 worker nodes): Ray's own autoscaler launches GPU nodes for the README's cluster command, its trials are placed
on them, the idle nodes are removed after the sweep, and a request no node type can hold is refused before
anything starts, naming it.

    pytest -q tests/test_rehearsal.py
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import yaml

from sweeps.cluster.simulated import MARK_ENV, marked_processes

ROOT = Path(__file__).resolve().parents[1]
VLM_SWEEP = Path(sys.executable).with_name("vlm-sweep")
README_SWEEP = ["vlm-sweep", "sweep", "--preset", "paper", "--backend", "a100-40g", "--data", "/mnt/shared/data",
                "--images", "/mnt/shared/images", "--out", "/mnt/shared/runs", "--grid", "paper19", "--stage", "all"]
"""README's cluster command (the job `ray job submit` runs), as submitted."""


def scaled_cluster(tmp: Path) -> Path:
    """The shipped cluster.yaml with its numbers scaled to this machine: each GPU node type 8 CPUs and 2 GPUs (two
    trials of a fractional profile per node), 2 worker nodes at most. Node types, accelerator types and every other
    key stay as shipped."""
    cluster = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    for name, t in cluster["available_node_types"].items():
        if t["resources"].get("GPU"):
            t["resources"].update(CPU=8, GPU=2)
    cluster["max_workers"] = 2
    path = tmp / "cluster-scaled.yaml"
    path.write_text(yaml.safe_dump(cluster))
    return path


def leftovers() -> list[psutil.Process]:
    """Processes of any simulated cluster still running."""
    return marked_processes(MARK_ENV, lambda mark: True)


def rehearse(cluster: Path, out: Path, sweep: list[str]) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return subprocess.run([str(VLM_SWEEP), "rehearse", "--cluster", str(cluster), "--out", str(out),
                           "--idle-timeout-s", "5", "--", *sweep], env=env, capture_output=True, text=True,
                          timeout=600)


@pytest.fixture(scope="module")
def rehearsal(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rehearsal")
    out = tmp / "out"
    # paper row 3 (a100-37g: 1 GPU) and its continuation (a100-28g: 0.75 GPU), and POPE
    done = rehearse(scaled_cluster(tmp), out, [*README_SWEEP, "--paper-ids", "[3]", "--eval-benchmarks", "pope"])
    assert done.returncode == 0, done.stderr[-3000:]
    return out, json.loads((out / "rehearsal.json").read_text()), done


def test_the_readme_command_gets_gpu_nodes_launched_and_its_trials_placed_on_them(rehearsal):
    out, record, done = rehearsal
    seen = record["observed"]
    assert record["ok"] and seen["errors"] == []
    # the autoscaler launched the a100-40g node type only (the backend's card size), within the cluster's cap
    assert set(seen["launched"]) == {"a100-40g"} and 1 <= seen["peak_worker_nodes"] <= 2
    launched = {n["node_id"] for n in seen["nodes"] if n["type"] == "a100-40g"}
    trials = seen["trials"]
    assert sorted(t["trial"] for t in trials) == sorted(
        [*(t["trial"] for s in record["planned"]["stages"].values() for t in s["trials"])])
    assert len(trials) == 2 and all(t["node_type"] == "a100-40g" and t["node_id"] in launched for t in trials)
    assert all(t["wait_s"] is not None and t["wait_s"] >= 0 for t in trials)
    # the requests were the cluster's: a whole card for a100-37g (the peak in use counts at least one)
    assert seen["peak_gpus_in_use"] >= 1 and seen["peak_gpus"] >= 2
    planned = record["planned"]["stages"]
    requests = {t["trial"]: t["request"] for s in planned.values() for t in s["trials"]}
    assert requests == {"s1-20kUmap-nodense-raw-linear-e6-b12": {"CPU": 4, "GPU": 1.0,
                                                                 "accelerator_type:A100-40G": 0.001},
                        "s2-20kUmap-nodense-raw-linear-e3-b3-from-e6-b12": {"CPU": 4, "GPU": 0.75,
                                                                            "accelerator_type:A100-40G": 0.001}}
    assert planned["1"]["nodes"] == {"a100-40g": 1} and planned["1"]["at_once"] == 1
    # the trials trained (tiny models on the CPU) and the evaluation tasks answered on the simulated cluster
    sweep = json.loads((out / "sweep" / "trials.json").read_text())
    assert all(t["best_val_loss"] is not None for s in sweep["stages"].values() for t in s)
    assert (out / "sweep" / "eval" / "benchmarks.json").is_file()
    # each trial ran in the rehearsal mode (no sweep flag reaches it), with the request as on the cluster
    trial_dir = out / "sweep" / "stage2" / "s2-20kUmap-nodense-raw-linear-e3-b3-from-e6-b12"
    params = json.loads((trial_dir / "params.json").read_text())
    assert params["trial"]["rehearsal"] is True and params["trial"]["resources"]["resources_per_worker"] == {
        "CPU": 4, "GPU": 0.75}


def test_idle_nodes_are_removed_and_nothing_of_the_copy_is_left(rehearsal):
    out, record, done = rehearsal
    seen = record["observed"]
    assert seen["scale_down_s"] is not None
    assert all(n["down_s"] is not None for n in seen["nodes"] if n["type"] != "head")
    assert any("Adding 1 node(s) of type a100-40g" in line for line in seen["autoscaler_log"])
    assert any("Removing" in line and "(idle)" in line for line in seen["autoscaler_log"])
    assert leftovers() == []


def test_the_report_shows_the_rehearsal(rehearsal):
    out, record, done = rehearsal
    report = (out / "sweep" / "report.md").read_text()
    section = report[report.index("## Rehearsal on a simulated copy of `cluster-scaled.yaml`"):]
    assert "### Planned: the cluster's view" in section and "### Observed: this machine's run of it" in section
    assert re.search(r"Launched: \d+ × a100-40g; peak [12] worker node", section), section
    assert "| s2-20kUmap-nodense-raw-linear-e3-b3-from-e6-b12 | a100-40g |" in section
    assert "rehearsal: done" in done.stderr + done.stdout


def test_a_request_no_node_type_holds_is_refused_before_anything_starts(tmp_path):
    # the mig-40g backend asks KubeRay MIG slices, which cluster.yaml's node types do not declare
    done = rehearse(ROOT / "cluster.yaml", tmp_path / "out",
                    [*README_SWEEP, "--backend", "mig-40g", "--paper-ids", "[3]"])
    assert done.returncode == 2
    assert "s1-20kUmap-nodense-raw-linear-e6-b12 (profile a100-37g on backend mig-40g)" in done.stderr
    assert "no node type has mig-7g.40gb" in done.stderr
    record = json.loads((tmp_path / "out" / "rehearsal.json").read_text())
    assert not record["ok"] and len(record["infeasible"]) == 2 and "observed" not in record
    assert not (tmp_path / "out" / "cluster").exists() and leftovers() == []
