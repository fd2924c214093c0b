"""``python -m data_pipeline.fill_kernels``: fill this machine's UMAP kernel cache (``data_pipeline.umap_kernels``)
before any build, as ``scripts/setup.sh`` does. A module of its own: the warm-up calls live in ``reduce``, which
imports ``umap_kernels``."""

from __future__ import annotations

from . import umap_kernels
from .reduce import fill_kernel_cache


def main(argv: list[str] | None = None) -> None:
    """``python -m data_pipeline.fill_kernels [--nn-descent]``: fill this machine's kernel cache with a fit and a
    transform on umap-learn's exact-neighbour path (what builds of fewer than 4,096 fit rows run: the main job's, the
    tests'), and with ``--nn-descent`` on NN-descent's too, unless filled. ``scripts/setup.sh`` runs it without the
    flag, so that a machine's first small build reads the kernels instead of compiling them (compiling into numba's
    cache costs about 1.6× compiling in memory; BENCHMARKS.md "UMAP's kernel cache"); a large build's NN-descent fit
    takes minutes, beside which its first compile is small, and fills that path itself."""
    import argparse

    ap = argparse.ArgumentParser(description="Fill this machine's UMAP kernel cache.")
    ap.add_argument("--nn-descent", action="store_true", help="also the NN-descent path (fits of >= 4,096 rows)")
    args = ap.parse_args(argv)
    paths = (False, True) if args.nn_descent else (False,)
    folder = umap_kernels.cache_dir()
    wanted = umap_kernels.call_kinds(paths)
    if folder is None or all((folder / f"{kind}.done").is_file() for kind in wanted):
        return
    print(f"UMAP's kernels compiled into {folder}: {', '.join(fill_kernel_cache(paths))}")


if __name__ == "__main__":
    main()
