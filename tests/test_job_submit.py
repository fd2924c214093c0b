"""``ray job submit`` of a tiny sweep to a real local cluster started with ``ray start --head``: the way users
run the study on a cluster (README "Running on a cluster"), exercised end to end in CI.

    pytest -q tests/test_job_submit.py
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _ray_processes(marker: str) -> list[int]:
    """Pids of processes whose command line mentions ``marker`` (this head node's GCS port)."""
    out = subprocess.run(["pgrep", "-f", marker], capture_output=True, text=True).stdout.split()
    return [int(p) for p in out if int(p) != os.getpid()]


@pytest.fixture()
def head_node():
    """A separate head node (own ports, no auth token as for any local run), torn down with its process group;
    the teardown checks nothing of it is left running."""
    gcs, dash, client, agent_grpc, agent_http, runtime_env, metrics = _free_ports(7)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(PATH=f"{BIN}:{env['PATH']}", RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
    head = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", "--num-cpus", "2", f"--port={gcs}",
         "--dashboard-host", "127.0.0.1", f"--dashboard-port={dash}", f"--ray-client-server-port={client}",
         f"--dashboard-agent-grpc-port={agent_grpc}", f"--dashboard-agent-listen-port={agent_http}",
         f"--runtime-env-agent-port={runtime_env}", f"--metrics-export-port={metrics}",
         "--include-dashboard=true"],
        env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    address = f"http://127.0.0.1:{dash}"
    try:
        deadline = time.time() + 120
        while True:
            probe = subprocess.run([str(BIN / "ray"), "job", "list", "--address", address], env=env,
                                   capture_output=True, text=True)
            if probe.returncode == 0:
                break
            assert head.poll() is None, "ray start --head exited"
            assert time.time() < deadline, f"the head's job server did not answer in 120 s: {probe.stderr[-1500:]}"
            time.sleep(2)
        yield address, env
    finally:
        for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
            try:
                os.killpg(head.pid, sig)
            except ProcessLookupError:
                break
            time.sleep(wait)
        head.wait(timeout=30)
        for pid in _ray_processes(f"{gcs}"):  # anything of this node that left the process group
            os.kill(pid, signal.SIGKILL)
        assert not _ray_processes(f"{gcs}")


def test_tiny_sweep_submitted_as_a_ray_job(head_node, variants, corpus, tmp_path):
    address, env = head_node
    out = tmp_path / "job-sweep"
    job_id = f"vlm-sweep-test-{os.getpid()}"
    # --no-wait, then poll: following the logs holds a websocket that the dashboard drops now and then under load
    # (close code 1006), which would fail the test, not the job
    submit = subprocess.run(
        [str(BIN / "ray"), "job", "submit", "--address", address, "--submission-id", job_id, "--no-wait",
         "--working-dir", str(ROOT), "--",
         "python", "-m", "vlm_core.cli", "sweep", "--data", str(variants), "--images", str(corpus / "images"),
         "--preset", "tiny", "--stage", "1", "--limit", "1", "--wandb", "offline", "--out", str(out)],
        env=env, capture_output=True, text=True, timeout=120)
    log = submit.stdout + submit.stderr
    assert submit.returncode == 0, log[-4000:]
    deadline, status = time.time() + 500, ""
    while time.time() < deadline:
        status = subprocess.run([str(BIN / "ray"), "job", "status", "--address", address, job_id], env=env,
                                capture_output=True, text=True).stdout.lower()
        if any(s in status for s in ("succeeded", "failed", "stopped")):
            break
        time.sleep(3)
    logs = subprocess.run([str(BIN / "ray"), "job", "logs", "--address", address, job_id], env=env,
                          capture_output=True, text=True).stdout
    assert f"job '{job_id}' succeeded" in status, status[-1000:] + logs[-4000:]
    lineage = json.loads((out / "lineage.json").read_text())
    assert list(lineage) == ["s1-20kUmap-nodense-raw-linear-e3-b1"] and Path(lineage[
        "s1-20kUmap-nodense-raw-linear-e3-b1"]["checkpoint"]).is_dir()
    assert (out / "report.md").is_file() and (out / "trials.csv").is_file()
    # the job ran from the uploaded working dir, which .rayignore keeps small (no .venv, no outputs)
    assert "Uploading package" in log or "working_dir" in log
