"""cluster.yaml matches the hardware profiles, installs the project from pyproject.toml (no copied pins), and runs
every node with token authentication; .rayignore keeps data, outputs and secrets out of uploads and file mounts.

    pytest -q tests/test_cluster_config.py
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

from sweeps.cluster.node_types import ClusterShape
from sweeps.profiles import PROFILES, trial_resources

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cluster():
    return yaml.safe_load((ROOT / "cluster.yaml").read_text())


def test_head_has_no_gpus_and_image_is_a_ray_gpu_image(cluster):
    types = cluster["available_node_types"]
    assert types[cluster["head_node_type"]]["resources"].get("GPU", 0) == 0
    assert cluster["docker"]["image"].startswith("rayproject/ray:") and "-gpu" in cluster["docker"]["image"]


@pytest.mark.parametrize("backend", ["a100-40g", "a100-80g"])
def test_every_gpu_profile_lands_on_its_own_node_type_only(cluster, backend):
    # the two types differ only by card size: each backend's requests fit its type and not the other (a trial's
    # CUDA memory cap is a fraction of the card it lands on)
    shape = ClusterShape.from_config(cluster, "cluster.yaml")
    node = cluster["available_node_types"][backend]["resources"]
    assert node["GPU"] >= 1 and node["accelerator_type:A100"] == 1
    for name in PROFILES:
        if name == "cpu":
            continue
        request = trial_resources(name, backend).per_worker()
        assert [t.name for t in shape.holders(request)] == [backend], (name, request)


def test_rayignore_keeps_data_outputs_and_secrets_out():
    # matched the way `ray job submit` matches it: Ray's own (vendored) gitignore-rule PathSpec
    from ray._private.thirdparty.pathspec import PathSpec

    spec = PathSpec.from_lines("gitwildmatch", (ROOT / ".rayignore").read_text().splitlines())
    for path in (".venv/lib/x.py", "runs/main/report.md", "data/20kUmap/train-00000.parquet", "corpus/a.jsonl",
                 "wandb/run/x", "x.safetensors", "sub/model.bin", "old/weights.pth", "ckpt/last.ckpt",
                 "runs/x/checkpoints/epoch-001/projector.safetensors", "artifacts/umap_clusters.joblib", ".env",
                 ".env.local", "id.pem", "hf.token", ".cache/huggingface/x", ".huggingface/token", ".netrc",
                 ".ray/auth_token", "auth_token", "vlm_sweep.egg-info/PKG-INFO"):
        assert spec.match_file(path), path
    for path in ("vlm_core/model/vlm.py", "pyproject.toml", "cluster.yaml", "sweeps/driver.py", "README.md"):
        assert not spec.match_file(path), path


def _pyproject() -> dict:
    import tomllib

    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_ray_accepts_the_config():
    # what `ray up` runs first: defaults for the provider filled in, then Ray's JSON schema
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(yaml.safe_load((ROOT / "cluster.yaml").read_text())))


def test_setup_installs_the_project_itself_and_copies_no_pins(cluster):
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    text = (ROOT / "cluster.yaml").read_text()
    project = _pyproject()["project"]
    names = {canonicalize_name(Requirement(d).name) for d in project["dependencies"]}
    assert {"torch", "ray"} <= names
    # no `pkg==version` of any pyproject dependency (the old hand-copied list drifted), and no pin at all
    pins = re.findall(r"([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?\s*==\s*[0-9]", text)
    assert not {canonicalize_name(p) for p in pins} & names, pins
    assert not pins, f"cluster.yaml pins {pins}: install the project, whose pyproject.toml holds the pins"
    # the project checkout is mounted on every node, from the project root (`ray up` runs there)...
    mounts = cluster["file_mounts"]
    project_mounts = [remote for remote, local in mounts.items() if (ROOT / local).resolve() == ROOT]
    assert len(project_mounts) == 1, mounts
    mounted = project_mounts[0]
    # ...and pip-installed from there (not as -e: the mount is a copy), which puts `vlm-sweep` on PATH
    installs = [shlex.split(c) for c in cluster["setup_commands"] if "pip" in c and "install" in c]
    assert installs and all(c[-1].rstrip("/") == mounted.rstrip("/") and "-e" not in c for c in installs), installs
    assert project["scripts"]["vlm-sweep"] == "sweeps.cli:main"
    assert "vlm-sweep sweep" in text  # the documented job runs that console script


def test_file_mounts_skip_what_rayignore_keeps_out(cluster):
    assert ".rayignore" in cluster["rsync_filter"]


def test_every_node_runs_with_token_auth_and_the_generated_token(cluster):
    # Ray 2.60: `ray get-auth-token --generate` writes ~/.ray/auth_token; every Ray process reads the token from
    # there (unless RAY_AUTH_TOKEN / RAY_AUTH_TOKEN_PATH say otherwise) and enforces it with RAY_AUTH_MODE=token
    from ray._private.authentication.authentication_token_setup import _get_default_token_path

    default = _get_default_token_path().relative_to(Path.home()).as_posix()
    assert default == ".ray/auth_token"
    assert cluster["file_mounts"].get(f"/home/ray/{default}") == f"~/{default}", cluster["file_mounts"]
    assert "--env RAY_AUTH_MODE=token" in cluster["docker"]["run_options"]
    assert not any("RAY_AUTH_MODE=disabled" in " ".join(map(str, v)) for v in cluster.values() if isinstance(v, list))
