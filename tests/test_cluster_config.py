"""cluster.yaml matches the hardware profiles; .rayignore keeps data, outputs and secrets out of uploads."""

from __future__ import annotations

import fnmatch
from pathlib import Path

import pytest
import yaml

from sweeps.profiles import PROFILES, check_fits, trial_resources

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cluster():
    return yaml.safe_load((ROOT / "cluster.yaml").read_text())


def test_head_has_no_gpus_and_image_is_a_ray_gpu_image(cluster):
    types = cluster["available_node_types"]
    assert types[cluster["head_node_type"]]["resources"].get("GPU", 0) == 0
    assert cluster["docker"]["image"].startswith("rayproject/ray:") and "-gpu" in cluster["docker"]["image"]


@pytest.mark.parametrize("backend", ["a100-40g", "a100-80g"])
def test_every_gpu_profile_fits_its_node_type(cluster, backend):
    node = cluster["available_node_types"][backend]["resources"]
    assert node["GPU"] >= 1 and node["accelerator_type:A100"] == node["GPU"]
    for name in PROFILES:
        if name == "cpu":
            continue
        check_fits(trial_resources(name, backend), node, f"{name} on {backend}")


def test_rayignore_keeps_data_outputs_and_secrets_out():
    patterns = [p.strip() for p in (ROOT / ".rayignore").read_text().splitlines() if p.strip() and p[0] != "#"]

    def ignored(path: str) -> bool:
        return any(fnmatch.fnmatch(path, p.rstrip("/")) or path.startswith(p) or
                   fnmatch.fnmatch(Path(path).name, p) for p in patterns)

    for path in (".venv/", "runs/", "data/", "corpus/", "wandb/", "x.safetensors", ".env", "id.pem"):
        assert ignored(path), path
    for path in ("vlm_core/model.py", "pyproject.toml", "cluster.yaml"):
        assert not ignored(path), path
