"""UMAP's numba kernels, compiled once per machine and read back by every later process, never written by two at once.

umap-learn compiles its kernels with numba in every process that fits or applies UMAP (``@numba.njit`` without
``cache=True``; pynndescent caches its own next to its sources): measured here, a fresh process spends ~10 s of a
300-row fit and ~3 s of its transform compiling, against ~0.5 s reading the same kernels from a disk cache
(BENCHMARKS.md "UMAP kernel cache"). A data build fits and applies UMAP in several Ray workers, and every test or
rerun pays again.

So, in each process that uses UMAP:

* :func:`umap_module` points numba's cache at one folder per machine *and* versions —
  ``$VLM_SWEEP_KERNEL_CACHE`` or ``~/.cache/vlm-sweep/numba``, then a key of the numba, llvmlite, umap-learn and
  pynndescent versions, Python's, and the CPU's name and features — so a cache another version or CPU wrote is
  never read, then turns caching on for umap-learn's kernels too;
* :func:`compile_once` runs a *warm-up* — the same UMAP call on a few rows, which compiles or loads every kernel the
  real call runs — holding an exclusive lock on that folder (``flock``: per node, released if the process dies), the
  first time the process makes a call of that kind: two processes never write the same kernel files at once (numba
  writes each file atomically, but an index and the data files it names are written separately: two writers can
  leave an index naming another writer's data, the kind of corruption behind a transform that returned NaN in CI
  before). The real call then runs unlocked, on kernels already in memory, beside other processes' calls: the
  lock covers compiling (or reading the cache), never a 20k-row fit's minutes of work. A process that finds the
  lock held while the kernels are not yet in the cache compiles in memory instead of waiting (on an empty cache
  the processes of a build compile at the same time, as without the cache; one of them fills it).

``VLM_SWEEP_KERNEL_CACHE=off`` turns it off (every process compiles, as umap-learn does by default).
"""

from __future__ import annotations

import contextlib
import os
import platform
import sys
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator

from vlm_core.base.hashing import json_digest

KERNEL_CACHE_ENV = "VLM_SWEEP_KERNEL_CACHE"
LOCK_FILE = ".lock"

_state: dict[str, Any] = {"dir": None, "used": set()}


def call_kind(call: str, approximate: bool) -> str:
    """The name :func:`compile_once` keys a UMAP call by: ``fit`` or ``transform`` on umap-learn's exact-neighbour
    path or its NN-descent path (each compiles kernels of its own)."""
    return f"{call}-{'nndescent' if approximate else 'exact'}"


def call_kinds(paths: tuple[bool, ...]) -> list[str]:
    """The kinds of a fit and a transform on each neighbour path of ``paths`` (False: exact; True: NN-descent)."""
    return [call_kind(call, approximate) for approximate in paths for call in ("fit", "transform")]


def cache_key() -> str:
    """What the cached kernels depend on: library versions, Python, and the CPU they were compiled for."""
    from importlib.metadata import version

    import llvmlite.binding as ll

    return json_digest({"numba": version("numba"), "llvmlite": version("llvmlite"),
                        "umap-learn": version("umap-learn"), "pynndescent": version("pynndescent"),
                        "python": sys.version.split()[0], "machine": platform.machine(),
                        "cpu": ll.get_host_cpu_name(), "features": ll.get_host_cpu_features().flatten()}, 12)


def cache_dir() -> Path | None:
    """This machine's kernel cache folder (None when ``VLM_SWEEP_KERNEL_CACHE=off``)."""
    root = os.environ.get(KERNEL_CACHE_ENV)
    if root == "off":
        return None
    base = Path(root).expanduser() if root else Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() \
        / "vlm-sweep" / "numba"
    return base / cache_key()


def _folder_lock(folder: Path):
    """The kernel folder's lock: ``flock`` on its lock file, per node, released if the process dies (filelock's
    ``FileLock``, what vlm_core.base.outputs.build_once locks with; a transformers dependency)."""
    from filelock import FileLock

    return FileLock(Path(folder) / LOCK_FILE)


@contextlib.contextmanager
def _locked(folder: Path | None) -> Iterator[None]:
    """:func:`_folder_lock` held; nothing when the cache is off."""
    if folder is None:
        yield
        return
    with _folder_lock(folder):
        yield


def umap_module():
    """``umap``, imported with its kernels cached in :func:`cache_dir` (see the module docstring)."""
    if _state["dir"] is None:
        folder = cache_dir()
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)
            import numba

            numba.config.CACHE_DIR = str(folder)  # what a kernel's cache locator reads when caching is enabled
            os.environ["NUMBA_CACHE_DIR"] = str(folder)  # and processes started from this one
        # importing pynndescent compiles (and, with the folder set, writes) its kernels that declare signatures:
        # under the lock too, like every other write of the folder
        with _locked(folder):
            import pynndescent  # noqa: F401  (its @njit(cache=True) kernels now cache in the folder too)
            import umap

        if folder is not None:
            _enable_caching(("umap", "pynndescent"))
            # a few kernels use dynamic globals (pynndescent's nn_descent): numba compiles them each time and says so
            from numba.core.errors import NumbaWarning

            warnings.filterwarnings("ignore", message="Cannot cache compiled function", category=NumbaWarning)
        _state["dir"] = folder or False
    import umap

    return umap


def _enable_caching(packages: tuple[str, ...]) -> None:
    """Turn on numba's disk cache for every not-yet-compiled kernel of ``packages`` (umap-learn's are not cached;
    pynndescent's, imported before ``CACHE_DIR`` was set, would cache beside their sources)."""
    for dispatcher in _dispatchers(packages):
        if not dispatcher.signatures:
            dispatcher.enable_caching()


def _dispatchers(packages: tuple[str, ...]):
    """Every numba kernel (``Dispatcher``) defined at module level in the imported modules of ``packages``."""
    from numba.core.dispatcher import Dispatcher

    for name, module in list(sys.modules.items()):
        if module is None or name.split(".")[0] not in packages:
            continue
        yield from (obj for obj in list(vars(module).values()) if isinstance(obj, Dispatcher))


def _disable_caching(packages: tuple[str, ...]) -> None:
    """Stop this process from writing the shared cache: every kernel of ``packages`` that has a cache gets numba's
    ``NullCache`` again, and numba's cache folder moves to a private one removed at exit — pynndescent makes kernels
    with ``cache=True`` on the fly (its NN-descent closures), and those would otherwise write the shared folder
    unlocked."""
    import atexit
    import shutil
    import tempfile

    import numba
    from numba.core.caching import NullCache

    private = tempfile.mkdtemp(prefix="vlm-sweep-numba-")
    atexit.register(shutil.rmtree, private, True)
    numba.config.CACHE_DIR = private
    os.environ["NUMBA_CACHE_DIR"] = private
    for dispatcher in _dispatchers(packages):
        dispatcher._cache = NullCache()  # what Dispatcher.__init__ sets when caching is off


def compile_once(kind: str, warm_up: Callable[[], object], fill: bool = True) -> None:
    """The first time this process makes a UMAP call of ``kind`` (a fit or a transform, on one of umap-learn's two
    neighbour paths: each compiles kernels of its own), run ``warm_up`` — that call on a few rows, on objects the real
    call does not use — holding the cache folder's lock, and mark ``kind`` filled (``<kind>.done`` in the folder);
    later calls of ``kind`` skip it. With the cache off there is nothing to protect and nothing is run: the real call
    compiles.

    When another process holds the lock and ``kind`` is not yet filled, it is compiling these kernels into the cache
    right now: rather than wait for it (on a cold cache each process would compile in turn, on one core), this process
    stops using the cache and compiles in memory, as umap-learn does, at the same time. Once ``kind`` is filled,
    later processes wait for the lock (a load takes about a second) and read the cache.

    ``fill=False``: read ``kind``'s kernels if they are filled, but never compile them into the cache here (compile
    in memory instead): for the NN-descent path, whose kernels cost a build ~90 s more to compile into the cache than
    in memory (BENCHMARKS.md "UMAP's kernel cache"); ``python -m data_pipeline.fill_kernels --nn-descent`` fills
    them."""
    umap_module()
    folder = _state["dir"]
    if kind in _state["used"]:
        return
    if folder:
        from filelock import Timeout

        marker = Path(folder) / f"{kind}.done"
        filled = marker.exists()
        lock, held = _folder_lock(folder), False
        if fill or filled:
            try:
                lock.acquire(timeout=-1 if filled else 0)  # filled: wait for a load; not filled: only if free
                held = True
            except Timeout:
                pass
        if not held:
            _disable_caching(("umap", "pynndescent"))
            _state["dir"] = False
        else:
            try:
                warm_up()
                if not filled:
                    marker.touch()
            finally:
                lock.release()
    _state["used"].add(kind)
