"""``vlm-sweep rehearse``: the sweep a user would submit, run on a simulated copy of their cluster before it costs
money.

    vlm-sweep rehearse --cluster cluster.yaml -- sweep --preset paper --backend a100-40g --grid paper19 --stage all

What it does, in order:

1. plans the submitted sweep as submitted (its preset, backend, grid, workers, benchmarks) and checks every trial's
   and evaluation task's request against the cluster config's node types: a request no node type can ever hold is
   named with its profile and the node types, and the rehearsal stops there (the sweep itself refuses it the same
   way, on the real cluster too: ``sweeps.cluster.node_types``);
2. starts a simulated copy of the cluster (``sweeps.cluster.simulated``: Ray's v1 autoscaler, fake nodes);
3. runs the sweep on it at the ``tiny`` scale with every request exactly as on the cluster (each profile's GPU
   fraction or whole GPUs, the sized accelerator type, the workers per trial, the evaluation tasks); the GPUs are
   simulated, so the training runs on the CPU with gloo and no CUDA memory cap (``Trial.rehearsal``; no sweep flag
   reaches it). Its data: each variant the trials read, drawn from a small sample corpus in ``data build``'s layout,
   and the sample corpus's easy-vqa and POPE sets in place of the submitted benchmarks (placement is rehearsed,
   not data quality);
4. watches the cluster meanwhile (:class:`ClusterWatch`: the GCS's node states every half second) and after the
   sweep until the autoscaler has removed the idle worker nodes;
5. writes ``rehearsal.json`` in the sweep's folder, whose report shows it as a section (``sweep_report``).

The copy must fit this machine while the cluster it copies holds far more: trials in flight are capped
(``max_concurrent``), as are each node's object store and the idle timeout (:class:`SimulationLimits`). The report
keeps the two views apart: *planned* is the cluster's (how many trials its node types hold at once, on how many
nodes of which type), *observed* is this machine's run of it (nodes launched, waits, peaks, scale-down).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import random
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from data_pipeline.sample_corpus import TRAIN_FILE
from vlm_core.base.errors import ConfigError
from vlm_core.base.logs import event
from vlm_core.base.outputs import atomic_write_text
from vlm_core.data.dataset import read_records
from vlm_core.presets import preset

from ..driver import SweepConfig, plan_sweep, run_sweep
from ..evaluation import EVAL_PROFILE, eval_resources
from ..reporting.rehearsal_section import REHEARSAL_FILE
from ..study import STUDY_BENCHMARKS, benchmark_flags, sample_corpus
from .node_types import ClusterShape, check_can_hold
from .simulated import SimulatedCluster, SimulationLimits, real_type_name

log = logging.getLogger(__name__)

REHEARSAL_PRESET = "tiny"
"""The models a rehearsal trains (the requests stay the submitted preset's backend and profiles)."""
WATCH_EVERY_S = 0.5


@dataclass
class RehearsalConfig:
    """A rehearsal: the cluster config, the submitted sweep, and what the copy caps to fit this machine."""

    cluster: str
    """The cluster's autoscaler config (``cluster.yaml``)."""
    out: str = "runs/rehearsal"
    """Its folder: the corpus and data it draws, the autoscaler's config and log, the sweep (``sweep/``)."""
    max_concurrent: int = 2
    """Trials in flight at once on this machine (the cluster's own view of what runs at once is reported apart)."""
    n_images: int = 40
    """Images of the sample corpus the variants are drawn from."""
    rows_per_variant: int = 16
    """Rows of each dataset variant the trials read."""
    eval_limit: int = 2
    """Questions per benchmark in the evaluation tasks (when the submitted sweep evaluates)."""
    limits: SimulationLimits = dataclasses.field(default_factory=SimulationLimits)
    scale_down_wait_s: float = 90.0
    """How long after the sweep to wait for the autoscaler to remove the idle worker nodes."""

    def __post_init__(self) -> None:
        if not Path(self.cluster).is_file():
            raise ConfigError(f"cluster: {self.cluster} is not a file; name the cluster's autoscaler config "
                              f"(cluster.yaml)")
        for name in ("max_concurrent", "n_images", "rows_per_variant", "eval_limit"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: must be >= 1")


class ClusterWatch(threading.Thread):
    """Polls the GCS's node states (``get_cluster_resource_state``) and records each node's type, when it joined and
    left, and the GPUs in use; stop with :meth:`finish`."""

    def __init__(self, gcs_address: str, t0: float) -> None:
        super().__init__(daemon=True, name="cluster-watch")
        self.gcs_address, self.t0 = gcs_address, t0
        self.nodes: dict[str, dict[str, Any]] = {}
        self.peak_nodes = self.peak_gpus_in_use = 0
        self.peak_gpus = 0.0
        self._done = threading.Event()

    def sample(self) -> int:
        """One look; returns the number of worker nodes alive."""
        from ray._raylet import GcsClient
        from ray.autoscaler.v2.sdk import get_cluster_resource_state
        from ray.core.generated.autoscaler_pb2 import NodeStatus

        state = get_cluster_resource_state(GcsClient(address=self.gcs_address))
        now = round(time.time() - self.t0, 1)
        alive, in_use, total = 0, 0.0, 0.0
        for n in state.node_states:
            node_id, status = n.node_id.hex(), NodeStatus.Name(n.status)
            seen = self.nodes.setdefault(node_id, {"node_id": node_id, "type": n.ray_node_type_name or "head",
                                                   "up_s": now, "down_s": None,
                                                   "resources": dict(n.total_resources)})
            if status == "DEAD":
                if seen["down_s"] is None:
                    seen["down_s"] = now
                continue
            gpus = dict(n.total_resources).get("GPU", 0.0)
            total += gpus
            in_use += gpus - dict(n.available_resources).get("GPU", 0.0)
            alive += seen["type"] != "head"
        self.peak_nodes = max(self.peak_nodes, alive)
        self.peak_gpus = max(self.peak_gpus, total)
        self.peak_gpus_in_use = max(self.peak_gpus_in_use, round(in_use, 3))
        return alive

    def run(self) -> None:
        while not self._done.is_set():
            try:
                self.sample()
            except Exception as e:  # the GCS going away at the end: the last sample stands
                log.debug("cluster watch: %s", e)
            self._done.wait(WATCH_EVERY_S)

    def finish(self) -> None:
        self._done.set()
        self.join(timeout=10)

    def wait_for_scale_down(self, timeout_s: float) -> float | None:
        """Seconds until no worker node is alive (None: some still were after ``timeout_s``)."""
        start = time.time()
        while time.time() - start < timeout_s:
            try:
                if self.sample() == 0:
                    return round(time.time() - start, 1)
            except Exception as e:
                log.debug("cluster watch: %s", e)
            time.sleep(WATCH_EVERY_S)
        return None


def planned_view(submitted: SweepConfig, shape: ClusterShape) -> dict[str, Any]:
    """The cluster's own view of the submitted sweep: per stage, each trial's request, the node type that holds it,
    and how many such trials the cluster holds at once on how many nodes; plus every request no node type can hold
    (named, with its profile: the sweep refuses those before it starts)."""
    backend = submitted.backend or preset(submitted.preset).backend
    plan = plan_sweep(submitted)
    stages, infeasible = {}, []
    for stage, planned in plan.stages.items():
        rows = []
        for p in planned:
            request, workers = p.resources.per_worker(), p.resources.num_workers
            try:
                check_can_hold(shape, request, workers, p.spec.config_id, p.spec.profile, backend)
            except ConfigError as e:
                infeasible.append({"what": p.spec.config_id, "profile": p.spec.profile, "request": request,
                                   "workers": workers, "why": str(e)})
                continue
            holder = shape.holders(request)[0]
            rows.append({"trial": p.spec.config_id, "dataset": p.spec.dataset, "profile": p.spec.profile,
                         "request": request,
                         "workers": workers, "node_type": holder.name, "per_node": holder.slots(request)})
        stages[str(stage)] = _at_once(rows, shape)
    evaluation = None
    if submitted.eval_config() is not None:
        res = eval_resources(backend)
        try:
            check_can_hold(shape, res.per_worker(), 1, "an evaluation task", EVAL_PROFILE, backend)
            holder = shape.holders(res.per_worker())[0]
            evaluation = {"request": res.per_worker(), "node_type": holder.name,
                          "per_node": holder.slots(res.per_worker())}
        except ConfigError as e:
            infeasible.append({"what": "an evaluation task", "profile": EVAL_PROFILE, "request": res.per_worker(),
                               "workers": 1, "why": str(e)})
    return {"backend": backend, "preset": submitted.preset, "stages": stages, "evaluation": evaluation,
            "infeasible": infeasible}


def _at_once(rows: list[dict[str, Any]], shape: ClusterShape) -> dict[str, Any]:
    """How many of a stage's trials the cluster runs at once, and the nodes that takes (by node type)."""
    if not rows:
        return {"trials": [], "at_once": 0, "nodes": {}}
    by_type: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_type.setdefault(r["node_type"], []).append(r)
    at_once, nodes = 0, {}
    for name, group in by_type.items():
        node_type = next(t for t in shape.node_types if t.name == name)
        per_node = min(r["per_node"] // r["workers"] for r in group) or 1  # the roomiest trial of the group bounds it
        count = node_type.count
        fits = min(len(group), per_node * count)
        at_once += fits
        nodes[name] = math.ceil(fits / per_node)
    return {"trials": rows, "at_once": at_once, "nodes": nodes}


def write_variants(corpus: Path, names: list[str], rows: int, out: Path, seed: int = 0) -> None:
    """Each named variant, ``rows`` conversations drawn from the corpus, in ``data build``'s layout (a quarter of
    them as its validation split)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    records = read_records(corpus / TRAIN_FILE)
    for k, name in enumerate(names):
        drawn = random.Random(seed + k).sample(records, min(rows, len(records)))
        (out / name).mkdir(parents=True, exist_ok=True)
        n_val = max(1, len(drawn) // 4)
        for split, part in (("train", drawn[n_val:]), ("val", drawn[:n_val])):
            pq.write_table(pa.table({"id": [r["id"] for r in part], "image": [r["image"] for r in part],
                                     "conversations": [json.dumps(r["conversations"]) for r in part]}),
                           out / name / f"{split}-00000.parquet")


def rehearsal_sweep(submitted: SweepConfig, rcfg: RehearsalConfig, backend: str, corpus: Path) -> SweepConfig:
    """The submitted sweep as the rehearsal runs it: the tiny models, its own data and folder, the requests of the
    submitted backend, at most ``max_concurrent`` trials in flight."""
    out = Path(rcfg.out).resolve()
    evaluate = submitted.eval_config() is not None
    flags = benchmark_flags(corpus) if evaluate else {"eval_benchmarks": None, "benchmarks": None,
                                                      "benchmark_files": None, "benchmark_images": None,
                                                      "benchmark_budgets": None}
    cfg = dataclasses.replace(
        submitted, preset=REHEARSAL_PRESET, backend=backend, data=str(out / "data"), images=str(corpus / "images"),
        out=str(out / "sweep"), cluster_config=str(Path(rcfg.cluster).resolve()), assets=None, resume=False,
        dry_run=False, max_steps_per_epoch=None, min_free_gb=0.5,
        wandb="disabled" if submitted.wandb == "disabled" else "offline",
        max_concurrent=min(submitted.max_concurrent or rcfg.max_concurrent, rcfg.max_concurrent),
        asha=dataclasses.replace(submitted.asha, max_concurrent=min(submitted.asha.max_concurrent,
                                                                    rcfg.max_concurrent)),
        eval_limit=rcfg.eval_limit if evaluate else None,
        # the submitted benchmarks are replaced by the corpus's, so is a selection by one of them
        select_by=submitted.select_by if submitted.select_by.partition(".")[0] in STUDY_BENCHMARKS else "val_loss",
        **flags)
    cfg.rehearsal = True
    return cfg


def trial_placements(sweep_dir: Path) -> list[dict[str, Any]]:
    """Where each trial's workers ran and how long the trial waited for them: from each trial's first result
    (``worker_started_at``, reported by ``sweeps.trial``, against the trial's own start: ``timestamp`` minus
    ``time_total_s``)."""
    out = []
    for stage_dir in sorted(sweep_dir.glob("stage[12]")):
        for result in sorted(stage_dir.glob("*/result.json")):
            lines = [json.loads(line) for line in result.read_text().splitlines() if line.strip()]
            first = next((r for r in lines if r.get("worker_started_at")), None)
            if first is None:
                out.append({"stage": int(stage_dir.name[-1]), "trial": result.parent.name, "node_type": None,
                            "wait_s": None})
                continue
            started = first["timestamp"] - first["time_total_s"]
            out.append({"stage": int(stage_dir.name[-1]), "trial": result.parent.name,
                        "node_id": first.get("node_id"), "node_type": first.get("node_type"),
                        "wait_s": round(max(0.0, first["worker_started_at"] - started), 1)})
    return out


def autoscaler_lines(log_file: Path | None) -> list[str]:
    """The autoscaler's launch, removal and infeasibility lines, from its own log."""
    if log_file is None or not log_file.is_file():
        return []
    keys = ("Adding", "Removing", "infeasible", "Infeasible", "No available node types")
    return [line.strip() for line in log_file.read_text(errors="replace").splitlines()
            if any(k in line for k in keys)][:200]


COORDINATOR = ("AutoscalingCoordinator", "AutoscalingCoordinator")
"""(name, namespace) of the detached actor through which Ray Train and Ray Data ask the autoscaler for resources."""


def clear_standing_requests(gcs_address: str) -> list[dict[str, Any]]:
    """The resource requests still standing after the sweep, then cleared. Ray Train asks the autoscaler for a
    trial's workers through Ray's ``AutoscalingCoordinator`` actor and cancels when its controller shuts down; a
    controller that ends otherwise leaves the request standing until it expires (180 s, re-sent every 20 s), and
    with it a node the idle timeout would have removed. Cleared here so the scale-down shows the idle timeout."""
    import ray
    from google.protobuf.json_format import MessageToDict
    from ray._raylet import GcsClient
    from ray.autoscaler.v2.sdk import get_cluster_resource_state

    state = get_cluster_resource_state(GcsClient(address=gcs_address))
    standing = [MessageToDict(r) for c in state.cluster_resource_constraints for r in c.resource_requests]
    try:
        ray.kill(ray.get_actor(COORDINATOR[0], namespace=COORDINATOR[1]))
    except ValueError:  # no coordinator: nothing asked through it
        pass
    ray.autoscaler.sdk.request_resources(bundles=[])
    return standing


def rehearse(submitted: SweepConfig, rcfg: RehearsalConfig) -> dict[str, Any]:
    """Run the rehearsal (module docstring); returns what ``rehearsal.json`` holds."""
    import ray

    if ray.is_initialized():
        raise ConfigError("rehearse: this process is already connected to a Ray cluster; run the rehearsal in a "
                          "process of its own (`vlm-sweep rehearse ...`)")
    cluster = yaml.safe_load(Path(rcfg.cluster).read_text())
    shape = ClusterShape.from_config(cluster, str(rcfg.cluster))
    out = Path(rcfg.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    planned = planned_view(submitted, shape)
    record: dict[str, Any] = {
        "cluster": {"config": str(Path(rcfg.cluster).resolve()), "node_types": [t.describe() for t in
                                                                               shape.node_types],
                    "max_workers": shape.max_workers, "idle_timeout_minutes": shape.idle_timeout_minutes},
        "submitted": {"preset": submitted.preset, "backend": planned["backend"], "grid": submitted.grid,
                      "stage": submitted.stage, "eval_benchmarks": submitted.eval_benchmarks},
        "this_machine": {"max_concurrent_trials": rcfg.max_concurrent,
                         "object_store_mb_per_node": rcfg.limits.object_store_mb,
                         "idle_timeout_s": rcfg.limits.idle_timeout_s, "max_worker_nodes": rcfg.limits.max_workers,
                         "models": REHEARSAL_PRESET, "autoscaler": "v1 (ray start --autoscaling-config), fake "
                                                                   "multi-node provider"},
        "planned": planned, "infeasible": planned["infeasible"]}
    if planned["infeasible"]:  # the sweep would refuse these on the real cluster too: nothing starts
        atomic_write_text(out / REHEARSAL_FILE, json.dumps({**record, "ok": False}, indent=2))
        raise ConfigError(f"rehearsal: {len(planned['infeasible'])} request(s) no node type can ever hold, so the "
                          f"sweep would be refused before it starts (all named in {out / REHEARSAL_FILE}); the "
                          f"first: {planned['infeasible'][0]['why']}")

    event("rehearsal: drawing its data (%d sample images) into %s", rcfg.n_images, out)
    corpus = sample_corpus(out / "corpus", rcfg.n_images)
    datasets = sorted({t["dataset"] for s in planned["stages"].values() for t in s["trials"]})
    write_variants(corpus, datasets, rcfg.rows_per_variant, out / "data")
    cfg = rehearsal_sweep(submitted, rcfg, planned["backend"], corpus)

    sim = SimulatedCluster(cluster, rcfg.limits, out / "cluster")
    previous = os.environ.get("RAY_ADDRESS")
    t0 = time.time()
    address = sim.start()
    event("rehearsal: simulated %s up at %s (Ray's autoscaler v1, fake nodes; %s)", Path(rcfg.cluster).name,
          address, shape.describe())
    watch = ClusterWatch(address, t0)
    watch.start()
    os.environ["RAY_ADDRESS"] = address
    error, result = None, None
    try:
        result = run_sweep(cfg)
    except Exception as e:  # noqa: BLE001 - reported in rehearsal.json, then raised again below
        error = e
    sweep_done = round(time.time() - t0, 1)
    standing: list[dict[str, Any]] = []
    try:
        if error is None:
            standing = clear_standing_requests(address)
            scale_down = watch.wait_for_scale_down(rcfg.scale_down_wait_s)
        else:
            scale_down = None
    finally:
        watch.finish()
        ray.shutdown()
        sim.stop(keep_logs_in=out / "cluster")
        if previous is None:
            os.environ.pop("RAY_ADDRESS", None)
        else:
            os.environ["RAY_ADDRESS"] = previous
    nodes = sorted(watch.nodes.values(), key=lambda n: n["up_s"])
    for n in nodes:
        n["type"] = real_type_name(n["type"], cluster) if n["type"] != "head" else cluster["head_node_type"]
    launched: dict[str, int] = {}
    for n in nodes:
        if n["type"] != cluster["head_node_type"]:
            launched[n["type"]] = launched.get(n["type"], 0) + 1
    placements = trial_placements(Path(cfg.out))
    record["observed"] = {
        "sweep_s": sweep_done, "nodes": nodes, "launched": launched, "peak_worker_nodes": watch.peak_nodes,
        "peak_gpus": watch.peak_gpus, "peak_gpus_in_use": watch.peak_gpus_in_use, "trials": placements,
        "scale_down_s": scale_down, "standing_requests": standing,
        "autoscaler_log": autoscaler_lines(out / "cluster" / "autoscaler-monitor.log"),
        "errors": ([str(error)] if error else []) + [f"{t['config_id']}: {t['error']}" for s in (result or {}).get(
            "stages", {}).values() for t in s if t.get("error")]}
    record["ok"] = error is None and not record["observed"]["errors"]
    atomic_write_text(Path(cfg.out) / REHEARSAL_FILE, json.dumps(record, indent=2, default=str))
    atomic_write_text(out / REHEARSAL_FILE, json.dumps(record, indent=2, default=str))
    if error is not None:
        raise error
    from ..reporting.sweep_report import write_report

    write_report(Path(cfg.out), select_by=cfg.select_by)  # now with the rehearsal's section
    return record
