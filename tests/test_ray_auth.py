"""``init_ray`` and Ray 2.60's token authentication, without a cluster: ``RAY_AUTH_MODE=disabled`` is our default
for the local cluster we start ourselves only (without it a local ``ray.init()`` turns token auth on and writes
~/.ray/auth_token), never for a cluster named by ``RAY_ADDRESS``, whose auth comes from the caller's environment.
Joining a real token-auth head through ``RAY_ADDRESS``, with and without the token, is in tests/test_job_submit.py.

    pytest -q tests/test_ray_auth.py
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from vlm_core.base.ray_env import _join_failure

ROOT = Path(__file__).resolve().parents[1]
AUTH_ENV = ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_API_SERVER_ADDRESS")

# a fresh process each: Ray reads RAY_AUTH_MODE once, and the test process may already hold a Ray of its own
INIT_RAY = """
import json, os
from vlm_core.base.ray_env import RayUnreachable, init_ray
try:
    resources, error = init_ray(num_cpus=1), None
except RayUnreachable as e:
    resources, error = None, str(e)
from ray._raylet import get_authentication_mode, AuthenticationMode
print(json.dumps({"resources": resources, "error": error, "mode": os.environ.get("RAY_AUTH_MODE"),
                  "token_mode": get_authentication_mode() == AuthenticationMode.TOKEN}))
"""


def _init_ray_in(home: Path, script: str = INIT_RAY, **env: str) -> dict:
    """``script`` (default: ``init_ray`` and what it left) in a fresh process with HOME at ``home``: its last line, as
    JSON; a local cluster keeps its session dirs in a private RAY_TMPDIR (short: Ray's unix sockets live there),
    removed afterwards."""
    tmp = tempfile.mkdtemp(prefix="vlmra-")
    full = {k: v for k, v in os.environ.items() if k not in AUTH_ENV}
    full.update(HOME=str(home), RAY_TMPDIR=tmp, RAY_USAGE_STATS_ENABLED="0", **env)
    try:
        run = subprocess.run([sys.executable, "-c", script], env=full, cwd=ROOT, capture_output=True, text=True,
                             timeout=180)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ray_address_keeps_the_callers_auth_env(tmp_path):
    got = _init_ray_in(tmp_path, RAY_ADDRESS=f"127.0.0.1:{_closed_port()}")
    assert got["resources"] is None and "does not answer" in got["error"], got
    assert got["mode"] is None and not got["token_mode"]  # not turned into RAY_AUTH_MODE=disabled
    got = _init_ray_in(tmp_path, RAY_ADDRESS=f"127.0.0.1:{_closed_port()}", RAY_AUTH_MODE="token")
    assert got["mode"] == "token" and got["token_mode"]


def test_local_cluster_starts_without_token_auth_and_writes_no_token(tmp_path):
    got = _init_ray_in(tmp_path)
    assert got["error"] is None and got["resources"]["cpu"] == 1, got
    assert got["mode"] == "disabled" and not got["token_mode"]
    assert not (tmp_path / ".ray" / "auth_token").exists()  # Ray's default for a new local cluster would write it


def test_join_failure_names_the_fix(monkeypatch):
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    message = _join_failure("10.0.0.1:6379", ConnectionError("Failed to connect to Ray cluster at 10.0.0.1:6379"))
    assert "export RAY_AUTH_MODE=token" in message and "ray get-auth-token" in message and "\n" not in message
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    message = _join_failure("10.0.0.1:6379", RuntimeError("Token authentication is enabled but no token\n\nmore"))
    assert "RAY_AUTH_TOKEN" in message and "~/.ray/auth_token" in message and "\n" not in message


TAKEN_PORT = """
import json, socket
import vlm_core.base.ray_env as ray_env
taken = socket.socket()
taken.bind(("127.0.0.1", 0))
taken.listen()
port = taken.getsockname()[1]
free = iter([port, ray_env.free_port()])
ray_env.free_port = lambda: next(free)  # the first 'free' port is taken before Ray binds it
resources = ray_env.init_ray(num_cpus=1)
import ray
print(json.dumps({"taken": port, "dashboard": ray._private.worker.get_dashboard_url(), "cpu": resources["cpu"]}))
"""


def test_a_dashboard_port_taken_before_ray_binds_it_is_replaced(tmp_path):
    # seen in the suite: another process took the free port found for a sweep's local dashboard, and the sweep died
    got = _init_ray_in(tmp_path, TAKEN_PORT)
    assert got["cpu"] == 1 and got["dashboard"].startswith("127.0.0.1:")
    assert int(got["dashboard"].rsplit(":", 1)[1]) != got["taken"]
