"""Connect to Ray: the cluster named by ``RAY_ADDRESS``, else a local one bound to 127.0.0.1.

The local cluster keeps the dashboard on (Train's cleanup of stopped trials needs the State API) but binds it
to loopback, turns usage stats off and caps the object store so a laptop keeps its memory.

    python -c "from vlm_core.ray_env import init_ray; print(init_ray().get('num_cpus'))"
"""

from __future__ import annotations

import logging
import os
from typing import Any

log = logging.getLogger(__name__)


class RayUnreachable(ConnectionError):
    """``RAY_ADDRESS`` names a cluster that does not answer."""


def init_ray(num_cpus: int | None = None, object_store_bytes: int = 1 << 30,
             resources: dict[str, float] | None = None) -> dict[str, Any]:
    """Initialise Ray once per process; returns the cluster's total resources."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray

    if not ray.is_initialized():
        address = os.environ.get("RAY_ADDRESS")
        if address:
            try:
                ray.init(address=address, log_to_driver=True)
            except (ConnectionError, RuntimeError, TimeoutError) as e:
                raise RayUnreachable(f"RAY_ADDRESS={address!r} does not answer ({e}); start the cluster "
                                     f"(`ray start --head` / `ray up cluster.yaml`) or unset RAY_ADDRESS "
                                     f"to run on a local Ray") from e
        else:
            # address="local": always a new cluster. Without it ray.init() joins whatever `ray start` left in
            # /tmp/ray/ray_current_cluster, even a dead one, and then refuses num_cpus.
            ray.init(address="local", num_cpus=num_cpus, object_store_memory=object_store_bytes,
                     include_dashboard=True,
                     dashboard_host="127.0.0.1", resources=resources, log_to_driver=True,
                     logging_level=logging.WARNING)
        ctx = ray.data.DataContext.get_current()
        ctx.execution_options.preserve_order = True  # reproducible outputs (UMAP transform is order-sensitive)
        ctx.enable_progress_bars = True
    return {k.lower(): v for k, v in ray.cluster_resources().items()}
