r"""Connect to Ray: the cluster named by ``RAY_ADDRESS``, else a local one bound to 127.0.0.1.

The local cluster keeps the dashboard on (Train's cleanup of stopped trials needs the State API) but binds it
to loopback, turns usage stats off and caps the object store so a laptop keeps its memory.

Every process of a local cluster is told where its own State API is (``RAY_API_SERVER_ADDRESS``). Without
that, Train V2's ``PlacementGroupCleaner`` (which frees a trial's CPUs/GPUs when ASHA or Ctrl-C kills its
controller) looks the cluster up in ``/tmp/ray/ray_current_cluster``; after any earlier ``ray start`` that file
names a dead cluster, the cleaner's thread dies on "Timed out while waiting for GCS", the stopped trial's
placement group is never removed, and the next trials time out waiting for workers.

Token authentication (Ray 2.60): only the local cluster is started with ``RAY_AUTH_MODE=disabled`` (unless the
caller chose a mode); without it a local ``ray.init()`` turns token auth on and writes ``~/.ray/auth_token``. A
cluster named by ``RAY_ADDRESS`` is joined with the caller's auth environment untouched: a client sends its token
only with ``RAY_AUTH_MODE=token`` (Ray never turns it on for an explicit address), and reads the token from
``RAY_AUTH_TOKEN``, the file named by ``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token``. Jobs that
``ray job submit`` starts on a token-auth cluster inherit both from the head, so ``vlm-sweep`` there just works.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from pathlib import Path
from typing import Any

from .errors import RayUnreachable
from .logs import calm_ray_console, is_verbose, log_folder, open_log

log = logging.getLogger(__name__)


API_SERVER_ENV = "RAY_API_SERVER_ADDRESS"
AUTH_MODE_ENV = "RAY_AUTH_MODE"  # "token" | "disabled"; read by Ray's C++ config (ray._raylet.get_authentication_mode)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def probe_address(address: str, timeout_s: float = 5.0) -> None:
    """Fail in seconds, by name, when ``RAY_ADDRESS`` (``host:port`` or ``ray://host:port``) does not accept a
    connection: ``ray.init`` itself retries an unreachable GCS for minutes."""
    host, _, port = address.split("://", 1)[-1].rpartition(":")
    if not host or not port.isdigit():  # "auto" and other forms: Ray resolves them itself
        return
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            pass
    except OSError as e:
        raise RayUnreachable(f"RAY_ADDRESS={address!r} does not answer ({e.strerror or e}); start the cluster "
                             f"(`ray start --head` / `ray up cluster.yaml`), fix the address, or unset RAY_ADDRESS "
                             f"to run on a local Ray") from e


def _join_failure(address: str, error: BaseException) -> str:
    """One line: why joining the cluster at ``address`` (whose port answered) failed, and the fix."""
    reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
    if os.environ.get(AUTH_MODE_ENV, "").lower() != "token":
        return (f"RAY_ADDRESS={address!r} answers but could not be joined ({reason}); if the cluster uses token "
                f"authentication, export {AUTH_MODE_ENV}=token and its token (RAY_AUTH_TOKEN=..., or the file "
                f"~/.ray/auth_token; `ray get-auth-token` on the head prints it), else check the cluster "
                f"(`ray status` on the head) or unset RAY_ADDRESS to run on a local Ray")
    return (f"RAY_ADDRESS={address!r} answers but could not be joined with {AUTH_MODE_ENV}=token ({reason}); check "
            f"that RAY_AUTH_TOKEN, the file RAY_AUTH_TOKEN_PATH names or ~/.ray/auth_token holds the cluster's token "
            f"(`ray get-auth-token` on the head prints it) and that the cluster is up (`ray status` on the head)")


def link_session(folder: Path) -> None:
    """``folder/ray-session``: a link to this Ray session's folder (its workers', actors' and trials' output), so
    that what the calm console leaves out is one path away from the run's logs."""
    import ray

    try:
        session = Path(ray._private.worker.global_worker.node.get_session_dir_path())
    except AttributeError:  # joined through Ray Client, or not started: nothing local to point to
        return
    link = folder / "ray-session"
    folder.mkdir(parents=True, exist_ok=True)
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(session, target_is_directory=True)


DASHBOARD_PORT_TRIES = 3
"""A free port found for the local dashboard can be taken before Ray binds it (another process, or one of the new
cluster's own): that many ports are tried."""


def _start_local(num_cpus: int | None, object_store_bytes: int, resources: dict[str, float] | None) -> None:
    """A new local cluster, its dashboard (the State API) on a free loopback port that every process of the cluster
    is told (``RAY_API_SERVER_ADDRESS``)."""
    import ray

    previous = os.environ.get(API_SERVER_ENV)
    try:
        for attempt in range(1, DASHBOARD_PORT_TRIES + 1):
            port = free_port()
            # the raylet copies this environment at start and hands it to every worker it spawns
            os.environ[API_SERVER_ENV] = f"http://127.0.0.1:{port}"
            try:
                ray.init(address="local", num_cpus=num_cpus, object_store_memory=object_store_bytes,
                         include_dashboard=True, dashboard_host="127.0.0.1", dashboard_port=port,
                         resources=resources, log_to_driver=is_verbose(), logging_level=logging.WARNING)
                return
            except ValueError as e:
                if f"Failed to bind to 127.0.0.1:{port}" not in str(e) or attempt == DASHBOARD_PORT_TRIES:
                    raise
                log.info("the dashboard's port %d was taken before Ray bound it; another one", port)
                ray.shutdown()
    finally:  # not inherited by this process's own subprocesses (another cluster's CLI, tests)
        if previous is None:
            os.environ.pop(API_SERVER_ENV, None)
        else:
            os.environ[API_SERVER_ENV] = previous


def init_ray(num_cpus: int | None = None, object_store_bytes: int = 1 << 30,
             resources: dict[str, float] | None = None) -> dict[str, Any]:
    """Initialise Ray once per process; returns the cluster's total resources."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    address = os.environ.get("RAY_ADDRESS")
    if not address:
        # only for the local cluster we start ourselves (set before Ray reads its config); a cluster named by
        # RAY_ADDRESS keeps whatever auth the caller's environment gives it
        os.environ.setdefault(AUTH_MODE_ENV, "disabled")
    import ray

    if not ray.is_initialized():
        if address:
            probe_address(address)
            try:
                ray.init(address=address, log_to_driver=is_verbose())
            except (ConnectionError, RuntimeError, TimeoutError, ray.exceptions.AuthenticationError) as e:
                raise RayUnreachable(_join_failure(address, e)) from e
        else:
            # address="local": always a new cluster. Without it ray.init() joins whatever `ray start` left in
            # /tmp/ray/ray_current_cluster, even a dead one, and then refuses num_cpus.
            # one machine: no spot preemption to watch for, no Prometheus to export Train metrics to; each would
            # cost every trial another actor / exporter on a laptop's few cores
            os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
            os.environ.setdefault("RAY_TRAIN_METRICS_ENABLED", "0")
            _start_local(num_cpus, object_store_bytes, resources)
        ctx = ray.data.DataContext.get_current()
        ctx.execution_options.preserve_order = True  # reproducible outputs (UMAP transform is order-sensitive)
        open_log()  # the command's checks passed: its log file opens now
        if log_folder() is not None:
            link_session(log_folder())
        # Ray Data's progress bars on a terminal (counts, ETA); off a terminal they are log lines: in the log file
        ctx.enable_progress_bars = is_verbose() or sys.stderr.isatty()
        ctx.print_on_execution_start = is_verbose()
        calm_ray_console()
    return {k.lower(): v for k, v in ray.cluster_resources().items()}


def largest_node(resource: str) -> float:
    """The most of ``resource`` one alive node of the connected cluster has (0 when none has it): what a single
    task or actor can ever ask for."""
    import ray

    return max((float(n["Resources"].get(resource, 0.0)) for n in ray.nodes() if n.get("Alive")), default=0.0)
