"""UMAP's kernel cache (``data_pipeline.umap_kernels``): three processes racing on an empty cache each get the same
finite coordinates, the cache is filled once, and a later process reads it without writing and gets them again.

    pytest -q tests/test_umap_kernels.py
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from data_pipeline.umap_kernels import KERNEL_CACHE_ENV

pytestmark = pytest.mark.slow  # each process imports UMAP (and compiles or loads its kernels)

SCRIPT = """
import sys, time
from pathlib import Path
import numpy as np
go, out = Path(sys.argv[1]), sys.argv[2]
from data_pipeline.config import ClusterConfig, UmapConfig
from data_pipeline.reduce import assign, fit_space
rng = np.random.default_rng(0)
centres = rng.normal(size=(4, 32))
emb = (centres[rng.integers(0, 4, 120)] + 0.3 * rng.normal(size=(120, 32))).astype(np.float32)
while not go.exists():  # start together: the race is on the first compile
    time.sleep(0.01)
space = fit_space(emb[:80], UmapConfig(n_components=4, n_neighbors=10), ClusterConfig(method="kmeans", k=4), 0,
                  plot=False)
coords, clusters = assign(space, emb[80:])
np.save(out, coords)
"""


def _start(tmp_path: Path, name: str, cache: str) -> subprocess.Popen:
    env = {**os.environ, KERNEL_CACHE_ENV: cache, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    return subprocess.Popen([sys.executable, "-c", SCRIPT, str(tmp_path / "go"), str(tmp_path / f"{name}.npy")],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _files(cache: Path) -> dict[str, int]:
    return {str(p.relative_to(cache)): p.stat().st_mtime_ns for p in cache.rglob("*") if p.is_file()
            and p.name != ".lock"}


def test_processes_racing_on_an_empty_cache_get_identical_finite_coordinates(tmp_path):
    cache = tmp_path / "kernels"
    procs = {name: _start(tmp_path, name, str(cache)) for name in ("a", "b", "c")}
    time.sleep(1.0)
    (tmp_path / "go").touch()
    for name, p in procs.items():
        out, _ = p.communicate(timeout=300)
        assert p.returncode == 0, f"{name}: {out[-3000:]}"
    coords = {name: np.load(tmp_path / f"{name}.npy") for name in procs}
    for name, c in coords.items():
        assert c.shape == (40, 4) and np.isfinite(c).all(), name
        np.testing.assert_array_equal(c, coords["a"], err_msg=name)
    (folder,) = [p for p in cache.iterdir() if p.is_dir()]  # one folder: this machine's versions and CPU
    filled = _files(folder)
    assert any(n.endswith(".nbi") and "umap" in n for n in filled), sorted(filled)[:20]  # umap-learn's kernels too
    assert any(n.endswith(".nbc") and "pynndescent" in n for n in filled)

    later = _start(tmp_path, "later", str(cache))
    (tmp_path / "go").touch()
    out, _ = later.communicate(timeout=300)
    assert later.returncode == 0, out[-3000:]
    np.testing.assert_array_equal(np.load(tmp_path / "later.npy"), coords["a"])
    assert _files(folder) == filled  # read, not written again
