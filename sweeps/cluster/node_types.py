"""What an autoscaling cluster can grow to: its node types, as the autoscaler reads them.

A sweep's pre-flight check used to compare each trial's request with ``ray.cluster_resources()``, the nodes that
are up *now*. On the shipped ``cluster.yaml`` (a GPU-less head, GPU workers at ``min_workers: 0``) that refused every
GPU trial before the autoscaler was asked for a node. With a :class:`ClusterShape` the check asks what the cluster
*can* hold: a request that fits some node type is left to the autoscaler, a request no node type can ever hold is
refused up front, naming the request, the profile and the node types.

Where the shape comes from (:func:`discover`), first found wins:

1. ``--cluster-config FILE``: the autoscaler config the cluster runs (``cluster.yaml``);
2. the autoscaler's own view in the GCS (``ClusterConfig.node_group_configs``: autoscaler v2, KubeRay);
3. ``~/ray_bootstrap_config.yaml`` on this host: the config ``ray up`` hands the head's autoscaler (v1), read when
   the driver runs on the head (``ray job submit``);
4. none: a fixed cluster, checked against the nodes that are up (:func:`fits_live`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from vlm_core.base.errors import ConfigError

BOOTSTRAP_CONFIG = Path("~/ray_bootstrap_config.yaml")
"""Where ``ray up`` puts the cluster config the head's autoscaler runs (Ray's cluster launcher)."""

UNCOUNTED = {"memory", "object_store_memory"}
"""Resources node types rarely declare (Ray measures them on the node): never a reason to refuse a request."""


@dataclass(frozen=True)
class NodeType:
    """One ``available_node_types`` entry: what a node of it offers, and how many the autoscaler may run."""

    name: str
    resources: dict[str, float]
    min_workers: int = 0
    max_workers: int = 0
    """Nodes of this type the autoscaler may launch (the head type: 0, its one node is always there)."""
    head: bool = False

    def holds(self, request: dict[str, float]) -> bool:
        """One node of this type can hold ``request`` (one bundle: a worker's resources)."""
        return all(self.resources.get(k, 0.0) >= v for k, v in request.items() if v > 0 and k not in UNCOUNTED)

    def slots(self, request: dict[str, float]) -> int:
        """How many ``request`` bundles one empty node of this type holds."""
        counts = [math.floor(self.resources.get(k, 0.0) / v + 1e-9) for k, v in request.items()
                  if v > 0 and k not in UNCOUNTED]
        return min(counts) if counts else 0

    @property
    def count(self) -> int:
        """Nodes of this type the cluster can have at once."""
        return 1 if self.head else self.max_workers

    def describe(self) -> str:
        shown = {k: (int(v) if float(v).is_integer() else v) for k, v in self.resources.items()}
        return f"{self.name} {shown}" + (" (head)" if self.head else f" × ≤{self.max_workers}")


@dataclass(frozen=True)
class ClusterShape:
    """An autoscaling cluster's node types and limits: what it can grow to, not what is up now."""

    node_types: tuple[NodeType, ...]
    max_workers: int | None = None
    """The config's cap on worker nodes of all types together (None: only the per-type caps)."""
    idle_timeout_minutes: float = 5.0
    source: str = ""
    """Where it was read (a file, or the GCS), for messages."""

    @classmethod
    def from_config(cls, config: dict[str, Any], source: str) -> ClusterShape:
        """From an autoscaler config (``cluster.yaml``'s ``available_node_types``, ``head_node_type``, ...)."""
        types = config.get("available_node_types")
        if not isinstance(types, dict) or not types:
            raise ConfigError(f"{source}: no available_node_types; name the cluster's autoscaler config "
                              f"(the file `ray up` was given)")
        head = config.get("head_node_type")
        if head not in types:
            raise ConfigError(f"{source}: head_node_type {head!r} is not one of available_node_types "
                              f"({', '.join(types)})")
        nodes = []
        for name, t in types.items():
            resources = {str(k): float(v) for k, v in (t.get("resources") or {}).items()}
            nodes.append(NodeType(name, resources, int(t.get("min_workers", 0)),
                                  0 if name == head else int(t.get("max_workers", config.get("max_workers", 0))),
                                  head=name == head))
        cap = config.get("max_workers")
        return cls(tuple(nodes), None if cap is None else int(cap),
                   float(config.get("idle_timeout_minutes", 5)), source)

    @classmethod
    def from_file(cls, path: str | Path) -> ClusterShape:
        p = Path(path).expanduser()
        try:
            config = yaml.safe_load(p.read_text())
        except yaml.YAMLError as e:
            raise ConfigError(f"{p}: not a YAML cluster config ({e})") from e
        if not isinstance(config, dict):
            raise ConfigError(f"{p}: not a cluster config (expected a mapping with available_node_types)")
        return cls.from_config(config, str(p))

    @classmethod
    def from_gcs(cls, cluster_config: Any) -> ClusterShape | None:
        """From the autoscaler v2 ``ClusterConfig`` in the GCS (None when it names no node groups)."""
        groups = list(getattr(cluster_config, "node_group_configs", []) or [])
        if not groups:
            return None
        nodes = tuple(NodeType(g.name, {k: float(v) for k, v in g.resources.items()}, int(g.min_count),
                               10**6 if g.max_count == -1 else int(g.max_count)) for g in groups)
        return cls(nodes, None, 5.0, "the autoscaler's config in the GCS")

    @property
    def workers(self) -> tuple[NodeType, ...]:
        return tuple(t for t in self.node_types if not t.head)

    def holders(self, request: dict[str, float]) -> list[NodeType]:
        """The node types one of whose nodes can hold ``request`` (and of which the cluster can have one)."""
        return [t for t in self.node_types if t.count > 0 and t.holds(request)]

    def capacity(self, request: dict[str, float]) -> int:
        """How many ``request`` bundles the cluster holds at once when grown to its limits."""
        per_type = sorted(((t.slots(request), t.count) for t in self.holders(request) if not t.head), reverse=True)
        budget = self.max_workers if self.max_workers is not None else sum(c for _, c in per_type)
        total = sum(t.slots(request) for t in self.holders(request) if t.head)
        for slots, count in per_type:  # the workers cap spent on the roomiest types first
            n = min(count, budget)
            total += n * slots
            budget -= n
        return total

    def describe(self) -> str:
        return "; ".join(t.describe() for t in self.node_types)


def check_can_hold(shape: ClusterShape, per_worker: dict[str, float], workers: int, what: str,
                   profile: str = "", backend: str = "") -> None:
    """Refuse, by name, a request no node type of ``shape`` can ever hold (``workers`` bundles of ``per_worker``):
    the autoscaler would never launch a node for it and Ray would wait for ever."""
    asked = f"{workers} × {per_worker}" if workers > 1 else str(per_worker)
    whose = f" (profile {profile} on backend {backend})" if profile else ""
    if not shape.holders(per_worker):
        possible = [t for t in shape.node_types if t.count > 0]
        missing = [k for k, v in per_worker.items() if v > 0 and k not in UNCOUNTED
                   and not any(t.resources.get(k, 0.0) >= v for t in possible)]
        short = (f"no node type has {', '.join(missing)}" if missing
                 else "no one node type has all of it")
        raise ConfigError(
            f"{what}{whose} asks {asked} per worker, which no node type of {shape.source} can hold ({short}): "
            f"{shape.describe()}. Add a node type with it to the cluster config (a sized accelerator type is a "
            f"resource the node type declares, e.g. \"accelerator_type:A100-40G\": 1), or pick the backend "
            f"that matches the cluster")
    room = shape.capacity(per_worker)
    if room < workers:
        raise ConfigError(f"{what}{whose} asks {asked}; {shape.source} holds at most {room} such worker(s) when "
                          f"grown to its limits ({shape.describe()}). Raise max_workers or ask fewer workers")


def fits_live(total: dict[str, float], cluster: dict[str, Any], what: str) -> None:
    """A fixed cluster (no autoscaler config found): refuse a request its nodes, as they are, can never hold."""
    have = {k.lower(): float(v) for k, v in cluster.items()}
    short = [f"{key}={need} (cluster has {have.get(key.lower(), 0.0)})" for key, need in total.items()
             if need > 0 and key not in UNCOUNTED and have.get(key.lower(), 0.0) < need]
    if short:
        sized = [k for k in total if k.startswith("accelerator_type:") and have.get(k.lower(), 0.0) < total[k]]
        hint = (f"; a node started by hand declares its card size with `ray start --resources="
                f"'{{\"{sized[0]}\": 1}}'` (Ray labels it only accelerator_type:A100)" if sized else "")
        raise ConfigError(f"{what} needs {', '.join(short)}; Ray would wait for ever. Pick a backend that matches "
                          f"the cluster (e.g. --backend cpu) or add such nodes; on an autoscaling cluster, name "
                          f"its config with --cluster-config cluster.yaml{hint}")


def discover(explicit: str | None, joined_existing: bool) -> ClusterShape | None:
    """The shape of the cluster this driver runs on (the module docstring's order), or None for a fixed one."""
    if explicit:
        return ClusterShape.from_file(explicit)
    if not joined_existing:  # a local cluster this process started: fixed, what is up is all there is
        return None
    import ray._private.state

    try:
        shape = ClusterShape.from_gcs(ray._private.state.state.get_cluster_config())
    except Exception:  # an older GCS without the autoscaler state service: read the bootstrap file
        shape = None
    if shape is None and BOOTSTRAP_CONFIG.expanduser().is_file():
        shape = ClusterShape.from_file(BOOTSTRAP_CONFIG)
    return shape


@dataclass(frozen=True)
class ClusterView:
    """The cluster a sweep runs on: what is up now (``ray.cluster_resources()``, keys lower-cased as
    ``init_ray`` returns them) and, on an autoscaling cluster, what it can grow to."""

    resources: dict[str, Any]
    shape: ClusterShape | None = None

    def check(self, per_worker: dict[str, float], workers: int, what: str, profile: str = "",
              backend: str = "") -> None:
        """Refuse what the cluster can never hold (its node types' limits, or its fixed nodes)."""
        if self.shape is not None:
            check_can_hold(self.shape, per_worker, workers, what, profile, backend)
        else:
            fits_live({k: v * workers for k, v in per_worker.items()}, self.resources, what)

    def fit(self, per_worker: dict[str, float], workers: int) -> int:
        """How many such requests run at once (at least 1): grown to its limits, or as it is."""
        if self.shape is not None:
            return max(1, self.shape.capacity(per_worker) // workers)
        have = {k.lower(): float(v) for k, v in self.resources.items()}
        counts = [int(have.get(k.lower(), 0.0) // (v * workers)) for k, v in per_worker.items()
                  if v > 0 and k not in UNCOUNTED]
        return max(1, min(counts)) if counts else 1
