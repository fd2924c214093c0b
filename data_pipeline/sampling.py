"""Exact-size, seeded sampling: uniform (``10kRandom``) and equal per cluster (``20kUmap``).

Per-cluster allocation is water-filling: every cluster gets an equal share; a cluster smaller than its share
gives all it has and the remainder is spread over the clusters that still have rows, until the target is met
exactly. Ids are sorted first, so the result depends only on (ids, clusters, size, seed).

    >>> from data_pipeline.sampling import allocate
    >>> allocate({0: 5, 1: 100, 2: 100}, 60)
    {0: 5, 1: 28, 2: 27}
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from vlm_core.base.errors import VlmSweepError


class SamplingError(VlmSweepError, ValueError):
    """A variant asks for more rows than the data has; the message says how to fix it."""


def _check_size(name: str, size: int, available: int) -> None:
    if size > available:
        raise SamplingError(f"variant {name!r} asks for {size} records but only {available} passed the filters; "
                            f"lower its size (e.g. --variants '[{{name: {name}, size: {available}, ...}}]')")


def allocate(counts: dict[int, int], size: int) -> dict[int, int]:
    """Equal allocation with redistribution; sums to ``size`` exactly (``size`` ≤ total)."""
    alloc = {c: 0 for c in counts}
    remaining = size
    open_clusters = sorted(c for c in counts if counts[c] > 0)
    while remaining > 0 and open_clusters:
        share, extra = divmod(remaining, len(open_clusters))
        for i, c in enumerate(open_clusters):
            take = min(share + (1 if i < extra else 0), counts[c] - alloc[c])
            alloc[c] += take
            remaining -= take
        open_clusters = [c for c in open_clusters if alloc[c] < counts[c]]
    return alloc


def sample_random(ids: list[str], size: int, seed: int, name: str = "random") -> list[str]:
    _check_size(name, size, len(ids))
    pool = sorted(ids)
    pick = np.random.default_rng(seed).choice(len(pool), size=size, replace=False)
    return sorted(pool[i] for i in pick)


def sample_per_cluster(ids: list[str], clusters: list[int], size: int, seed: int,
                       name: str = "umap") -> tuple[list[str], dict[int, int]]:
    """Returns the chosen ids and how many came from each cluster."""
    _check_size(name, size, len(ids))
    by_cluster: dict[int, list[str]] = {}
    for rid, c in sorted(zip(ids, clusters)):
        by_cluster.setdefault(int(c), []).append(rid)
    alloc = allocate({c: len(v) for c, v in by_cluster.items()}, size)
    rng = np.random.default_rng(seed)
    chosen = []
    for c in sorted(by_cluster):
        members = by_cluster[c]
        pick = rng.choice(len(members), size=alloc[c], replace=False)
        chosen.extend(members[i] for i in pick)
    return sorted(chosen), {c: n for c, n in alloc.items()}


def cluster_counts(clusters: list[int]) -> dict[int, int]:
    return dict(sorted(Counter(int(c) for c in clusters).items()))
