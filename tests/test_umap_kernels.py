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


WARM_UP_SCRIPT = """
import json, sys
import numpy as np
from numba.core.dispatcher import Dispatcher
from data_pipeline import reduce
from data_pipeline.config import ClusterConfig, UmapConfig

def compiled():
    return {f"{name}.{attr}": len(obj.signatures) for name, module in list(sys.modules.items())
            if module is not None and name.split(".")[0] in ("umap", "pynndescent")
            for attr, obj in list(vars(module).items()) if isinstance(obj, Dispatcher)}

after_warm_up = []
compile_once = reduce.compile_once
def spy(kind, warm_up, fill=True):
    compile_once(kind, lambda: (warm_up(), after_warm_up.append((kind, compiled()))), fill)
reduce.compile_once = spy

rows = int(sys.argv[1])
rng = np.random.default_rng(0)
n = rows + 40
emb = (rng.normal(size=(8, 32))[rng.integers(0, 8, n)] + 0.3 * rng.normal(size=(n, 32))).astype(np.float32)
space = reduce.fit_space(emb[:rows], UmapConfig(n_components=4, n_neighbors=10), ClusterConfig(method="kmeans", k=4),
                         0, plot=False)
after_fit = compiled()
coords, _ = reduce.assign(space, emb[rows:])
print(json.dumps({"kinds": [k for k, _ in after_warm_up], "fit_new": sorted(k for k, n in after_fit.items()
                  if n > after_warm_up[0][1].get(k, 0)), "transform_new": sorted(
                  k for k, n in compiled().items() if n > after_warm_up[1][1].get(k, 0)),
                  "finite": bool(np.isfinite(coords).all())}))
"""


@pytest.mark.parametrize("rows, path", [(80, "exact"), (4200, "nndescent")])
def test_the_warm_up_under_the_lock_compiles_every_kernel_the_real_call_runs(tmp_path, rows, path):
    """The lock covers only the warm-up (a few rows), so the real fit and transform run unlocked beside other
    processes': that is safe only if they compile nothing the warm-up did not (a kernel first compiled outside the
    lock would be written to the cache outside it). Checked on both of umap-learn's neighbour paths (exact below
    4,096 fit rows, on an empty cache; NN-descent at or above, on a cache ``python -m data_pipeline.fill_kernels
    --nn-descent`` filled from other rows), by numba's own record of compiled signatures."""
    env = {**os.environ, KERNEL_CACHE_ENV: str(tmp_path / "kernels"),
           "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    if path == "nndescent":  # a build never compiles NN-descent's kernels into the cache: filled beforehand
        filled = subprocess.run([sys.executable, "-m", "data_pipeline.fill_kernels", "--nn-descent"], env=env,
                                capture_output=True, text=True, timeout=600)
        assert filled.returncode == 0, filled.stderr[-3000:]
    got = subprocess.run([sys.executable, "-c", WARM_UP_SCRIPT, str(rows)], env=env, capture_output=True, text=True,
                         timeout=600)
    assert got.returncode == 0, got.stderr[-3000:]
    import json

    result = json.loads(got.stdout.strip().splitlines()[-1])
    assert result["kinds"] == [f"fit-{path}", f"transform-{path}"]
    assert result["fit_new"] == [] and result["transform_new"] == [], result
    assert result["finite"]
