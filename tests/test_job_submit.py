"""README "Running on a cluster", end to end: a real head node started with token authentication ON
(``ray start --head``, token from ``ray get-auth-token --generate``), and the README's own command
``ray job submit --address http://127.0.0.1:<port> --working-dir . -- vlm-sweep sweep ...``, run from the project
root and executed on the head by the ``vlm-sweep`` console script found on the head's PATH (as ``pip install``
puts it on every node of ``cluster.yaml``).

Checked: a submission without the token (or with a wrong one) is refused with Ray's auth error and starts
nothing; the one with the token (``RAY_AUTH_MODE=token`` + ``~/.ray/auth_token``, what a laptop uses) runs the
tiny sweep, whose lineage and report exist; ``init_ray`` joins the head through ``RAY_ADDRESS`` with the token,
and without it fails in seconds with the fix, leaving ``RAY_AUTH_MODE`` unset. One head serves the whole module;
its token lives in a temporary "laptop" HOME (the developer's ~/.ray is never read or written), its temp dir is
private, and the teardown checks that none of its processes is left.

    pytest -q tests/test_job_submit.py
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
# inherited settings that would change whose token a process uses, or which cluster it joins
AUTH_ENV = ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_API_SERVER_ADDRESS")
MARKER = "VLM_SWEEP_TEST_HEAD"  # in the environment of every process of this module's head, for the teardown
HEAD_RESOURCE = "vlm_sweep_token_head"  # only this head has it: proves a client joined it, not a new local Ray
SWEEP_ID = "s1-20kUmap-nodense-raw-linear-e3-b1"


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _head_processes(marker: str) -> list[int]:
    """Pids of this head's processes: ``marker`` in their environment, which every process the head starts
    inherits (workers rename themselves and leave the process group, so neither finds them all)."""
    pids = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if marker.encode() in (proc / "environ").read_bytes().split(b"\0"):
                pids.append(int(proc.name))
        except OSError:  # gone, or not ours
            continue
    return sorted(set(pids) - {os.getpid()})


def _ray(*args: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "ray"), *args], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def token_head():
    """A separate head node with token authentication, plus the environments of three clients: ``laptop`` (the
    token in its ~/.ray/auth_token and ``RAY_AUTH_MODE=token``, as README tells a user), ``anonymous`` (nothing
    set, as the README before tokens) and ``wrong_token``."""
    work = Path(tempfile.mkdtemp(prefix="vlmjs-"))  # short path: Ray's unix sockets live under --temp-dir
    laptop_home, anon_home = work / "laptop", work / "anon"
    laptop_home.mkdir()
    anon_home.mkdir()
    base = {k: v for k, v in os.environ.items() if k not in AUTH_ENV}
    base.update(PATH=f"{BIN}:{base['PATH']}", RAY_USAGE_STATS_ENABLED="0")

    gen = _ray("get-auth-token", "--generate", env={**base, "HOME": str(laptop_home)}, timeout=60)
    token_file = laptop_home / ".ray" / "auth_token"  # where --generate writes it: ~/.ray/auth_token
    assert gen.returncode == 0 and token_file.is_file(), gen.stderr[-2000:]
    token = token_file.read_text()
    assert gen.stdout == token and len(token) >= 32

    gcs, dash, client, agent_grpc, agent_http, runtime_env, metrics = _free_ports(7)
    address = f"http://127.0.0.1:{dash}"
    tag = uuid.uuid4().hex
    marker = f"{MARKER}={tag}"
    # The head keeps the developer's HOME (model / font caches) and reads the token through RAY_AUTH_TOKEN_PATH;
    # a cluster.yaml node reads the same file at ~/.ray/auth_token. PATH starts with .venv/bin, where the
    # editable install put `vlm-sweep`, as `pip install` puts it on every cluster node's PATH.
    # RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S=0: on SIGTERM stop at once instead of draining the node for up to 30 s
    head_env = {**base, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_file),
                "RAY_API_SERVER_ADDRESS": address, "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0", MARKER: tag}
    head = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", "--num-cpus", "2", f"--port={gcs}",
         f"--temp-dir={work / 'ray'}", f"--resources={json.dumps({HEAD_RESOURCE: 1})}",
         "--dashboard-host", "127.0.0.1", f"--dashboard-port={dash}", f"--ray-client-server-port={client}",
         f"--dashboard-agent-grpc-port={agent_grpc}", f"--dashboard-agent-listen-port={agent_http}",
         f"--runtime-env-agent-port={runtime_env}", f"--metrics-export-port={metrics}",
         "--include-dashboard=true"],
        env=head_env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    clients = {
        "laptop": {**base, "HOME": str(laptop_home), "RAY_AUTH_MODE": "token"},
        "anonymous": {**base, "HOME": str(anon_home)},
        "wrong_token": {**base, "HOME": str(anon_home), "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "0" * len(token)},
    }
    try:
        deadline = time.time() + 120
        while True:
            probe = _ray("job", "list", "--address", address, env=clients["laptop"])
            if probe.returncode == 0:
                break
            assert head.poll() is None, "ray start --head exited"
            assert time.time() < deadline, f"the head's job server did not answer in 120 s: {probe.stderr[-1500:]}"
            time.sleep(2)
        yield {"address": address, "gcs": f"127.0.0.1:{gcs}", "clients": clients}
    finally:
        # SIGTERM to `ray start --block` alone, which stops its node; then SIGKILL whatever is left
        head.send_signal(signal.SIGTERM)
        try:
            head.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        for _ in range(10):  # then anything of this head still running: the rest of its group and beyond
            for pid in _head_processes(marker):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            if head.poll() is not None and not _head_processes(marker):
                break
            time.sleep(1)
        head.wait(timeout=10)
        shutil.rmtree(work, ignore_errors=True)  # token, homes and the head's session dirs
        assert not _head_processes(marker), "processes of the test's head node are still running"


def _readme_submit(address: str, env: dict[str, str], job_id: str, sweep_args: list[str]):
    """README's command, from the project root: ``ray job submit --address URL --working-dir . -- vlm-sweep
    sweep ...``; ``--submission-id`` to poll it and ``--no-wait`` because following the logs holds a websocket
    that the dashboard drops now and then under load (close code 1006), which would fail the test, not the job."""
    return _ray("job", "submit", "--address", address, "--submission-id", job_id, "--no-wait",
                "--working-dir", ".", "--", "vlm-sweep", "sweep", *sweep_args, env=env)


@pytest.fixture()
def sweep_args(variants, corpus, tmp_path):
    out = tmp_path / "job-sweep"
    return out, ["--data", str(variants), "--images", str(corpus / "images"), "--preset", "tiny", "--stage", "1",
                 "--limit", "1", "--wandb", "offline", "--out", str(out)]


@pytest.mark.parametrize("client, error", [("anonymous", "Authentication required"),
                                           ("wrong_token", "Authentication failed")])
def test_submission_without_the_token_is_refused(token_head, sweep_args, client, error):
    address, clients = token_head["address"], token_head["clients"]
    job_id = f"vlm-sweep-refused-{client}-{os.getpid()}"
    submit = _readme_submit(address, clients[client], job_id, sweep_args[1])
    log = submit.stdout + submit.stderr
    assert submit.returncode != 0 and error in log, log[-3000:]
    listing = _ray("job", "list", "--address", address, env=clients["laptop"])
    assert listing.returncode == 0 and job_id not in listing.stdout + listing.stderr


def test_tiny_sweep_submitted_as_a_ray_job(token_head, sweep_args):
    address, env = token_head["address"], token_head["clients"]["laptop"]
    out, args = sweep_args
    job_id = f"vlm-sweep-test-{os.getpid()}"
    submit = _readme_submit(address, env, job_id, args)
    log = submit.stdout + submit.stderr
    assert submit.returncode == 0, log[-4000:]
    deadline, status = time.time() + 500, ""
    while time.time() < deadline:
        status = _ray("job", "status", "--address", address, job_id, env=env).stdout.lower()
        if any(s in status for s in ("succeeded", "failed", "stopped")):
            break
        time.sleep(3)
    logs = _ray("job", "logs", "--address", address, job_id, env=env).stdout
    assert f"job '{job_id}' succeeded" in status, status[-1000:] + logs[-4000:]
    lineage = json.loads((out / "lineage.json").read_text())
    assert list(lineage) == [SWEEP_ID] and Path(lineage[SWEEP_ID]["checkpoint"]).is_dir()
    assert (out / "report.md").is_file() and (out / "trials.csv").is_file() and (out / "report.html").is_file()
    assert re.search(r"sweep: done, 1 trials, 0 stopped by ASHA, 0 failed\. Report: \S+report\.md", logs), logs[-3000:]
    # the job ran from the uploaded working dir, which .rayignore keeps small (no .venv, no outputs)
    assert "Uploading package" in log or "working_dir" in log


INIT_RAY = """
import json, os
from vlm_core.base.ray_env import RayUnreachable, init_ray
try:
    resources, error = init_ray(), None
except RayUnreachable as e:
    resources, error = None, str(e)
print(json.dumps({"resources": resources, "error": error, "mode": os.environ.get("RAY_AUTH_MODE")}))
"""


def _init_ray_in(env: dict[str, str]) -> dict:
    run = subprocess.run([sys.executable, "-c", INIT_RAY], env=env, cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


def test_init_ray_joins_the_token_head_through_RAY_ADDRESS(token_head):
    got = _init_ray_in({**token_head["clients"]["laptop"], "RAY_ADDRESS": token_head["gcs"]})
    assert got["error"] is None and got["resources"].get(HEAD_RESOURCE) == 1, got  # this head, not a new local Ray
    assert got["mode"] == "token"


def test_init_ray_without_the_token_names_the_fix_and_keeps_auth_env_unset(token_head):
    # 2 connection attempts instead of Ray's 20 (one a second): the refusal is the same, only sooner
    env = {**token_head["clients"]["anonymous"], "RAY_ADDRESS": token_head["gcs"], "RAY_NUM_REDIS_GET_RETRIES": "2"}
    started = time.time()
    got = _init_ray_in(env)
    assert got["resources"] is None and "export RAY_AUTH_MODE=token" in got["error"], got
    assert got["mode"] is None  # not set to "disabled" on the way: a cluster named by RAY_ADDRESS keeps its auth
    assert time.time() - started < 60
