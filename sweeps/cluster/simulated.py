"""A simulated copy of an autoscaling cluster on this machine: Ray's own autoscaler with Ray's fake multi-node
provider, whose nodes are real raylets here declaring the node types' resources (GPUs and accelerator types exist
only as numbers).

The provider's config is built from the cluster config itself (:func:`fake_provider_config`), never a second
hand-written copy: every node type with its resources, ``min_workers`` / ``max_workers``, the cluster's
``max_workers``; the head type is renamed ``ray.head.default`` (the provider's rule). What changes, so that the copy
fits a laptop (:class:`SimulationLimits`): each node's object store, the idle timeout (seconds, not minutes), and
optionally a lower cap on worker nodes.

Autoscaler v1, the one ``ray start --head --autoscaling-config`` runs: Ray 2.60's v2 autoscaler fills a fake
provider's config from ``fake_multi_node/example.yaml``, which the 2.60 wheel does not ship. Both read the same node
types, limits and idle timeout; ``ray up`` runs v2 on the real cluster (its default since 2.50).

Every process of the copy carries :data:`MARK_ENV` in its environment (the fake nodes are spawned by the head's
autoscaler and inherit it), so :meth:`SimulatedCluster.stop` ends this copy's processes and no other Ray on the
machine (``ray stop`` would end them all, a test session's own cluster included).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from vlm_core.base.errors import ConfigError
from vlm_core.base.ray_env import API_SERVER_ENV, AUTH_MODE_ENV, free_port

log = logging.getLogger(__name__)

HEAD_TYPE = "ray.head.default"
"""The name Ray's fake multi-node provider requires of the head's node type."""
MARK_ENV = "VLM_SWEEP_SIMULATED_CLUSTER"
"""Set in every process of a simulated cluster to that cluster's id."""
MiB = 1 << 20
CONFIG_KEYS = {"file_mounts": {}, "cluster_synced_files": [], "file_mounts_sync_continuously": False,
               "rsync_exclude": [], "rsync_filter": [], "initialization_commands": [], "setup_commands": [],
               "head_setup_commands": [], "worker_setup_commands": [], "head_start_ray_commands": [],
               "worker_start_ray_commands": [], "auth": {}, "upscaling_speed": 1.0}
"""Keys the v1 autoscaler reads that mean nothing for fake nodes (no files to sync, nothing to install or start)."""


@dataclass(frozen=True)
class SimulationLimits:
    """What the copy changes so that it fits this machine; node types and their resources stay as configured."""

    object_store_mb: int = 200
    """Each simulated node's object store (Ray's default, 30 % of RAM per node, would not fit several nodes)."""
    idle_timeout_s: float = 30.0
    """A worker node idle this long is removed (the config's idle_timeout_minutes, scaled down). Shorter than the
    gaps between trials here (a TorchTrainer takes 10-20 s to start on 2 cores), nodes come and go between trials
    that the real timeout would keep."""
    max_workers: int | None = None
    """Cap on worker nodes of all types together (default: the config's ``max_workers``)."""

    def __post_init__(self) -> None:
        if self.object_store_mb < 80:
            raise ConfigError("object_store_mb: Ray needs at least 80 MB per node")
        if self.idle_timeout_s <= 0:
            raise ConfigError("idle_timeout_s: must be > 0")
        if self.max_workers is not None and self.max_workers < 0:
            raise ConfigError("max_workers: must be >= 0")


def fake_provider_config(cluster: dict[str, Any], limits: SimulationLimits, gcs_address: str) -> dict[str, Any]:
    """The autoscaler config of a simulated copy of ``cluster`` (an autoscaler config such as cluster.yaml)."""
    head = cluster["head_node_type"]
    types = {}
    for name, t in cluster["available_node_types"].items():
        resources = {k: v for k, v in (t.get("resources") or {}).items()}
        resources["object_store_memory"] = limits.object_store_mb * MiB
        entry = {"resources": resources, "node_config": {}, "min_workers": int(t.get("min_workers", 0)),
                 "max_workers": 0 if name == head else int(t.get("max_workers", cluster.get("max_workers", 0)))}
        types[HEAD_TYPE if name == head else name] = entry
    cap = cluster.get("max_workers", sum(t["max_workers"] for t in types.values()))
    if limits.max_workers is not None:
        cap = min(cap, limits.max_workers)
    return {**CONFIG_KEYS, "cluster_name": f"{cluster.get('cluster_name', 'cluster')}-rehearsal",
            "max_workers": cap, "idle_timeout_minutes": limits.idle_timeout_s / 60,
            "available_node_types": types, "head_node_type": HEAD_TYPE,
            "provider": {"type": "fake_multinode", "use_node_id_as_ip": True, "disable_node_updaters": True,
                         "disable_launch_config_check": True, "gcs_address": gcs_address}}


def marked_processes(key: str, matches: Callable[[str], bool]) -> list[Any]:
    """The processes of this machine (not this one) whose environment has ``key`` with a value ``matches`` accepts:
    how a Ray started here is found whole, its spawned nodes and workers included, and no other Ray."""
    import psutil

    found = []
    for p in psutil.process_iter():
        if p.pid == os.getpid():
            continue
        try:
            value = p.environ().get(key)
        except psutil.Error:
            continue
        if value is not None and matches(value):
            found.append(p)
    return found


def kill_processes(procs: list[Any], timeout_s: float = 30) -> int:
    """SIGKILL ``procs`` and wait for them; returns how many there were."""
    import psutil

    for p in procs:
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(procs, timeout=timeout_s)
    return len(procs)


def real_type_name(name: str, cluster: dict[str, Any]) -> str:
    """A simulated node type's name in the cluster config (the head's is renamed in the copy)."""
    return cluster["head_node_type"] if name == HEAD_TYPE else name


class SimulatedCluster:
    """A running simulated copy: ``start()`` its head (with the autoscaler), ``stop()`` every process of it."""

    def __init__(self, cluster: dict[str, Any], limits: SimulationLimits, folder: str | Path) -> None:
        self.cluster, self.limits, self.folder = cluster, limits, Path(folder)
        self.id = uuid.uuid4().hex[:10]
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.config = fake_provider_config(cluster, limits, self.address)
        # short: Ray's sockets live under it (a Unix socket path has at most 107 characters)
        self.temp_dir = Path(tempfile.mkdtemp(prefix="vlmsim-", dir="/tmp"))
        self.dashboard = f"http://127.0.0.1:{free_port()}"

    def start(self) -> str:
        """Start the head and its autoscaler; returns the GCS address (what ``RAY_ADDRESS`` names)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        config_file = self.folder / "autoscaler-config.json"
        config_file.write_text(json.dumps(self.config, indent=2))
        head = self.config["available_node_types"][HEAD_TYPE]["resources"]
        custom = {k: v for k, v in head.items() if k not in ("CPU", "GPU", "object_store_memory")}
        env = {k: v for k, v in os.environ.items() if k not in ("CUDA_VISIBLE_DEVICES", "RAY_ADDRESS")}
        env.update({"RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1", MARK_ENV: self.id,
                    API_SERVER_ENV: self.dashboard, AUTH_MODE_ENV: env.get(AUTH_MODE_ENV, "disabled"),
                    "RAY_USAGE_STATS_ENABLED": "0"})
        port = self.dashboard.rsplit(":", 1)[1]
        cmd = [str(Path(sys.executable).with_name("ray")), "start", "--head", f"--port={self.port}",
               "--node-ip-address=127.0.0.1", f"--autoscaling-config={config_file}",
               f"--num-cpus={int(head.get('CPU', 0))}", f"--num-gpus={int(head.get('GPU', 0))}",
               f"--object-store-memory={head['object_store_memory']}", f"--temp-dir={self.temp_dir}",
               "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={port}",
               # every port of its own: another Ray on this machine (a test session's) keeps Ray's defaults
               f"--ray-client-server-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}",
               f"--dashboard-agent-grpc-port={free_port()}", f"--runtime-env-agent-port={free_port()}",
               f"--metrics-export-port={free_port()}", "--disable-usage-stats"]
        if custom:
            cmd.append(f"--resources={json.dumps(custom)}")
        t0 = time.perf_counter()
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            self.stop()
            tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-5:])
            raise RuntimeError(f"the simulated cluster's head did not start ({' '.join(cmd)}):\n{tail}")
        log.info("simulated cluster %s: head up at %s in %.1f s (temp %s)", self.id, self.address,
                 time.perf_counter() - t0, self.temp_dir)
        return self.address

    def processes(self) -> list[Any]:
        """This copy's processes (head, autoscaler, fake nodes, their workers), by the mark in their environment."""
        return marked_processes(MARK_ENV, lambda mark: mark == self.id)

    def autoscaler_log(self) -> Path | None:
        """The autoscaler's own log (``monitor.log``) of this copy's session."""
        logs = sorted(self.temp_dir.glob("session_*/logs/monitor.log"))
        return logs[-1] if logs else None

    def stop(self, keep_logs_in: Path | None = None) -> int:
        """Kill every process of this copy (the caller has disconnected); returns how many there were."""
        if keep_logs_in is not None and (monitor := self.autoscaler_log()) is not None:
            keep_logs_in.mkdir(parents=True, exist_ok=True)
            for name in ("monitor.log", "monitor.out"):
                if (monitor.parent / name).is_file():
                    shutil.copy(monitor.parent / name, keep_logs_in / f"autoscaler-{name}")
        killed = kill_processes(self.processes())
        shutil.rmtree(self.temp_dir, ignore_errors=True)
        return killed
