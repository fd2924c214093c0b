"""A Ray cluster of separate nodes on this machine, for the multi-node tests: a head and worker nodes, each started by
its own ``ray start`` (its own raylet, resources, ports and temp folder). Every process of node ``N`` carries
``MARK=<cluster id>:<N>`` in its environment, so a node can be killed whole (its raylet and workers SIGKILLed, as a
lost machine) and the cluster stopped without touching any other Ray on the machine.

The nodes share this machine's file system and network (one host): storage every node sees at the same path is
what ``--out`` is on a real cluster (EFS at /mnt/shared in cluster.yaml); each node's temp folder is its own.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psutil

from sweeps.cluster.simulated import kill_processes, marked_processes
from vlm_core.base.ray_env import free_port

MARK = "VLM_SWEEP_TEST_NODE"
RAY = Path(sys.executable).with_name("ray")
HEALTH_CHECKS = {"health_check_initial_delay_ms": 0, "health_check_period_ms": 1000, "health_check_timeout_ms": 1000,
                 "health_check_failure_threshold": 3}


class LocalCluster:
    def __init__(self) -> None:
        self.id = uuid.uuid4().hex[:8]
        self.root = Path(tempfile.mkdtemp(prefix="vlmmn-", dir="/tmp"))  # short: Ray's socket paths live under it
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.dashboard = f"http://127.0.0.1:{free_port()}"
        self.nodes: dict[str, str] = {}  # name -> Ray node id

    def env(self, name: str | None = None) -> dict[str, str]:
        """The environment of a node's processes (``name``) or of a driver joining the cluster (None)."""
        env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "CUDA_VISIBLE_DEVICES")}
        env.update({"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
                    "RAY_API_SERVER_ADDRESS": self.dashboard})
        if name is None:
            env["RAY_ADDRESS"] = self.address
        else:
            env[MARK] = f"{self.id}:{name}"
        return env

    def _launch(self, name: str, args: list[str]) -> subprocess.Popen:
        ports = [f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
                 f"--runtime-env-agent-port={free_port()}", f"--metrics-export-port={free_port()}"]
        marker = {f"test_node_{name}": 1}
        cmd = [str(RAY), "start", "--node-ip-address=127.0.0.1", f"--temp-dir={self.root / name}",
               f"--resources={json.dumps(marker)}", "--disable-usage-stats", *ports, *args]
        return subprocess.Popen(cmd, env=self.env(name), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def _joined(self, name: str, proc: subprocess.Popen) -> str:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err[-2000:]
        self.nodes[name] = self._wait_for(f"test_node_{name}")
        return self.nodes[name]

    def start_head(self) -> None:
        """A head with no CPUs: nothing that asks for a CPU (a task, an actor, a trial) can run on it."""
        port = self.dashboard.rsplit(":", 1)[1]
        self._joined("head", self._launch("head", [
            "--head", f"--port={self.port}", "--num-cpus=0", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
            f"--dashboard-port={port}", f"--ray-client-server-port={free_port()}", "--object-store-memory=150000000",
            # a lost node is counted dead in ~3 s instead of Ray's ~30 s
            f"--system-config={json.dumps(HEALTH_CHECKS)}"]))

    def add_workers(self, *names: str, cpus: int = 1) -> None:
        """Worker nodes of ``cpus`` CPUs each, started side by side."""
        started = {n: self._launch(n, [f"--address={self.address}", f"--num-cpus={cpus}",
                                       "--object-store-memory=150000000"]) for n in names}
        for name, proc in started.items():
            self._joined(name, proc)

    def _node_states(self):
        from ray._raylet import GcsClient
        from ray.autoscaler.v2.sdk import get_cluster_resource_state

        return get_cluster_resource_state(GcsClient(address=self.address)).node_states

    def _wait_for(self, resource: str, timeout: float = 60) -> str:
        deadline = time.time() + timeout
        while time.time() < deadline:
            for n in self._node_states():
                if resource in n.total_resources:
                    return n.node_id.hex()
            time.sleep(0.2)
        raise AssertionError(f"no node with {resource} joined in {timeout} s")

    def alive(self) -> set[str]:
        from ray.core.generated.autoscaler_pb2 import NodeStatus

        return {n.node_id.hex() for n in self._node_states() if n.status != NodeStatus.DEAD}

    def name_of(self, node_id: str) -> str:
        return next(name for name, nid in self.nodes.items() if nid == node_id)

    def processes(self, name: str | None = None) -> list[psutil.Process]:
        """The processes of node ``name`` (None: of every node)."""
        prefix = f"{self.id}:"
        return marked_processes(MARK, lambda mark: mark == f"{prefix}{name}" if name else mark.startswith(prefix))

    def kill(self, name: str) -> None:
        """SIGKILL every process of a node (a lost machine) and wait until the cluster counts it dead."""
        procs = self.processes(name)
        assert any(p.name() == "raylet" for p in procs), f"node {name} has no raylet to kill"
        kill_processes(procs)
        deadline = time.time() + 120
        while self.nodes[name] in self.alive():
            assert time.time() < deadline, f"the cluster still counts node {name} alive"
            time.sleep(0.5)

    def stop(self) -> None:
        kill_processes(self.processes())
        shutil.rmtree(self.root, ignore_errors=True)
