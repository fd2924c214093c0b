"""cluster.yaml matches the hardware profiles; .rayignore keeps data, outputs and secrets out of uploads."""

from __future__ import annotations

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
    # matched the way `ray job submit` matches it: Ray's own (vendored) gitignore-rule PathSpec
    from ray._private.thirdparty.pathspec import PathSpec

    spec = PathSpec.from_lines("gitwildmatch", (ROOT / ".rayignore").read_text().splitlines())
    for path in (".venv/lib/x.py", "runs/main/report.md", "data/20kUmap/train-00000.parquet", "corpus/a.jsonl",
                 "wandb/run/x", "x.safetensors", "sub/model.bin", "old/weights.pth", "ckpt/last.ckpt",
                 "runs/x/checkpoints/epoch-001/projector.safetensors", "artifacts/umap_clusters.joblib", ".env",
                 ".env.local", "id.pem", "hf.token", ".cache/huggingface/x", ".huggingface/token", ".netrc"):
        assert spec.match_file(path), path
    for path in ("vlm_core/model.py", "pyproject.toml", "cluster.yaml", "sweeps/driver.py", "README.md"):
        assert not spec.match_file(path), path
