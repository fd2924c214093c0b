"""UMAP + clustering: fitted once on a bounded sample, then applied to every row in one ordered pass.

``fit_space`` (UMAP n-d and the clusterer) and ``fit_plot_layout`` (the 2-d UMAP of the plot) run as two Ray tasks at
once (UMAP and clustering are global); ``assign_rows`` is the Ray task that reads the embedded rows' Parquet in file
order and transforms them in fixed batches of ``transform_batch`` (UMAP's transform depends on batching, so batch
size and order are pinned), assigning each row to a cluster. k for k-means is either given or the candidate with the
best silhouette score on the fit sample; HDBSCAN clusters the sample and other rows take the label of their nearest
sample point (HDBSCAN has no out-of-sample predict).
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .config import ClusterConfig, UmapConfig
from .umap_kernels import call_kind, call_kinds, compile_once, umap_module

log = logging.getLogger(__name__)


@dataclass
class FittedSpace:
    """Everything fitted on the sample; pickled into ``artifacts/`` for reuse."""

    umap: Any  # umap.UMAP, n_components-d
    clusterer: Any  # KMeans, or a 1-NN classifier over HDBSCAN's sample labels
    k: int
    method: str
    silhouette: dict[int, float] = field(default_factory=dict)
    sample_ids: list[str] = field(default_factory=list)
    sample_coords_2d: np.ndarray | None = None  # for the plot
    sample_labels: np.ndarray | None = None
    n_components: int = 10
    transform_batch: int = 1024


MIN_FIT_ROWS = 5
"""Fewest rows UMAP and the clusterer are fitted on (``data build`` stops before fitting on fewer)."""


SMALL_DATA_ROWS = 4096
"""umap-learn's threshold: below it a fit finds exact neighbours (pairwise distances), at or above it runs
NN-descent (pynndescent) — two sets of kernels, and two sets for ``transform`` (``UMAP._small_data``)."""
WARM_UP_ROWS = 64
"""Rows of the warm-up call that compiles (or loads) a call's kernels under the kernel cache's lock."""


def _umap(n_components: int, cfg: UmapConfig, seed: int, n_rows: int, **extra):
    umap = umap_module()  # its numba kernels read from this machine's cache (data_pipeline.umap_kernels)
    # init="pca": the default spectral init is not reproducible under a fixed random_state (measured: three
    # fits of the same 50 rows gave three layouts); PCA init gave identical layouts every time.
    return umap.UMAP(n_components=n_components, n_neighbors=min(cfg.n_neighbors, max(2, n_rows - 1)),
                     min_dist=cfg.min_dist, metric="cosine", random_state=seed, n_jobs=1, init="pca", **extra)


def _fit_transform(n_components: int, cfg: UmapConfig, seed: int, embeddings: np.ndarray):
    """A fitted UMAP and the fit rows' coordinates; the kernels compiled (or loaded) first on a few of the rows, on
    the fit's own neighbour path (:data:`SMALL_DATA_ROWS`), under the kernel cache's lock (``compile_once``)."""
    approximate = len(embeddings) >= SMALL_DATA_ROWS
    rows = embeddings[:WARM_UP_ROWS]
    compile_once(call_kind("fit", approximate), lambda: _warm_up_model(n_components, cfg, seed, rows, approximate),
                 fill=not approximate)
    reducer = _umap(n_components, cfg, seed, len(embeddings))
    return reducer, reducer.fit_transform(embeddings)


def _warm_up_model(n_components: int, cfg: UmapConfig, seed: int, rows: np.ndarray, approximate: bool):
    """A UMAP fitted on a few rows, a few epochs, on the neighbour path a fit of ``approximate`` size takes."""
    return _umap(n_components, cfg, seed, len(rows), n_epochs=5, force_approximation_algorithm=approximate).fit(rows)


def fill_kernel_cache(paths: tuple[bool, ...] = (False, True), dim: int = 384, seed: int = 0) -> list[str]:
    """Compile (or load) the kernels of a fit and a transform on each neighbour path of ``paths`` (False: exact, below
    :data:`SMALL_DATA_ROWS` fit rows; True: NN-descent) into this machine's kernel cache (``python -m
    data_pipeline.fill_kernels``), on random rows of the embedder's width and dtype (numba specialises on types, not
    sizes). Returns the kinds."""
    rows = np.random.default_rng(seed).normal(size=(WARM_UP_ROWS, dim)).astype(np.float32)
    cfg = UmapConfig()
    for approximate in paths:
        compile_once(call_kind("fit", approximate),
                     lambda: _warm_up_model(cfg.n_components, cfg, seed, rows, approximate))
        compile_once(call_kind("transform", approximate),
                     lambda: _warm_up_model(cfg.n_components, cfg, seed, rows, approximate).transform(rows[:8]))
    return call_kinds(paths)


def fit_plot_layout(embeddings: np.ndarray, umap_cfg: UmapConfig, seed: int) -> np.ndarray:
    """The fit sample's 2-d UMAP coordinates, for the plot only (``FittedSpace.sample_coords_2d``)."""
    return _fit_transform(2, umap_cfg, seed, embeddings)[1]


def fit_space(embeddings: np.ndarray, umap_cfg: UmapConfig, cluster_cfg: ClusterConfig, seed: int,
              sample_ids: list[str] | None = None, plot: bool = True) -> FittedSpace:
    """Fit UMAP (n-d) and the clusterer on ``embeddings`` (the fit sample), and the plot's 2-d layout unless
    ``plot`` is False (the build fits that in a task of its own, at the same time: :func:`fit_plot_layout`)."""
    from sklearn.cluster import HDBSCAN, KMeans
    from sklearn.metrics import silhouette_score
    from sklearn.neighbors import KNeighborsClassifier

    n = len(embeddings)
    if n < MIN_FIT_ROWS:
        raise ValueError(f"only {n} rows to fit UMAP/clustering; at least {MIN_FIT_ROWS} are needed")
    reducer, coords = _fit_transform(umap_cfg.n_components, umap_cfg, seed, embeddings)
    coords_2d = fit_plot_layout(embeddings, umap_cfg, seed) if plot else None
    scores: dict[int, float] = {}
    if cluster_cfg.method == "kmeans":
        if cluster_cfg.k is not None:
            k = min(cluster_cfg.k, n)
        else:
            for cand in [c for c in cluster_cfg.k_range if c < n]:
                labels = KMeans(cand, n_init=4, random_state=seed).fit_predict(coords)
                scores[cand] = float(silhouette_score(coords, labels, sample_size=min(n, 5000),
                                                      random_state=seed))
            if not scores:
                raise ValueError(f"no k in cluster.k_range {cluster_cfg.k_range} is below the {n} fit rows")
            k = max(scores, key=lambda c: (scores[c], -c))
            log.info("k-means: silhouette by k %s → k=%d", {c: round(s, 3) for c, s in scores.items()}, k)
        clusterer = KMeans(k, n_init=4, random_state=seed).fit(coords)
        labels = clusterer.labels_
    else:
        labels = HDBSCAN(min_cluster_size=min(cluster_cfg.min_cluster_size, max(2, n // 2))).fit_predict(coords)
        clusterer = KNeighborsClassifier(n_neighbors=1).fit(coords, labels)
        k = len(set(labels.tolist()))
    return FittedSpace(reducer, clusterer, k, cluster_cfg.method, scores, list(sample_ids or []), coords_2d,
                       np.asarray(labels), umap_cfg.n_components, umap_cfg.transform_batch)


def assign(space: FittedSpace, embeddings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One batch of rows: their n-d UMAP coordinates and clusters (:func:`assign_counted` without the count)."""
    coords, clusters, _ = assign_counted(space, embeddings)
    return coords, clusters


def assign_counted(space: FittedSpace, embeddings: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """One batch of rows: their n-d UMAP coordinates, clusters, and how many rows were placed by nearest fit point.
    A row UMAP's transform leaves without coordinates (NaN: umap-learn's answer for a point it finds no neighbours
    for; seen once in CI, on a build whose texts were mostly ten repeated prompts) takes those of its nearest
    fit-sample point (:func:`nearest_fit_coords`) instead of failing the build or being dropped."""
    emb = np.asarray(embeddings, dtype=np.float32)
    # the warm-up transforms with a copy: a transform on NN-descent's index advances its search state
    compile_once(call_kind("transform", not space.umap._small_data),
                 lambda: copy.deepcopy(space.umap).transform(emb[:WARM_UP_ROWS]), fill=space.umap._small_data)
    coords = space.umap.transform(emb).astype(np.float32)
    lost = placed_by_nearest(coords)
    if lost.any():
        coords[lost] = nearest_fit_coords(space, emb[lost])
    return coords, np.asarray(space.clusterer.predict(coords), dtype=np.int64), int(lost.sum())


def placed_by_nearest(coords: np.ndarray) -> np.ndarray:
    """Which rows of a transform's output have no finite coordinates (a boolean mask)."""
    return ~np.isfinite(coords).all(axis=1)


def nearest_fit_coords(space: FittedSpace, embeddings: np.ndarray) -> np.ndarray:
    """The UMAP coordinates of each row's nearest fit-sample point by cosine distance (the fit's metric), as UMAP
    itself places a row identical to a fit point. The fit sample's embeddings are the fitted UMAP's own copy
    (``_raw_data``: umap-learn keeps it for ``transform``)."""
    fit = np.asarray(space.umap._raw_data, dtype=np.float32)
    nearest = np.argmax(_unit_rows(embeddings) @ _unit_rows(fit).T, axis=1)
    return np.asarray(space.umap.embedding_, dtype=np.float32)[nearest]


def _unit_rows(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def assign_rows(space: FittedSpace, folder: str) -> dict[str, Any]:
    """Every row of the rows Parquet in ``folder`` that has no ``reason``, assigned to a cluster: part files in name
    order, rows in file order, transformed in consecutive batches of ``space.transform_batch`` rows (the last one
    shorter), so the same files give the same batches and clusters on every run. Returns ``id``, ``line`` and
    ``cluster`` lists in that order, and ``placed_by_nearest``: how many rows UMAP gave no coordinates and
    :func:`assign_counted` placed on their nearest fit-sample point."""
    import pyarrow.compute as pc
    import pyarrow.dataset as pads

    size = space.transform_batch
    out: dict[str, Any] = {"id": [], "line": [], "cluster": [], "placed_by_nearest": 0}
    carry = None

    def assign_batch(batch: np.ndarray) -> None:
        _, clusters, placed = assign_counted(space, batch)
        out["cluster"] += clusters.tolist()
        out["placed_by_nearest"] += placed

    fragments = sorted(pads.dataset(folder, format="parquet").get_fragments(), key=lambda f: f.path)
    for fragment in fragments:
        table = fragment.to_table(columns=["id", "line", "embedding"], filter=pc.field("reason") == "")
        if not table.num_rows:
            continue
        out["id"] += table["id"].to_pylist()
        out["line"] += table["line"].to_pylist()
        emb = np.stack(table["embedding"].to_numpy(zero_copy_only=False)).astype(np.float32)
        emb = emb if carry is None else np.concatenate([carry, emb])
        whole = len(emb) // size * size
        for i in range(0, whole, size):
            assign_batch(emb[i:i + size])
        carry = emb[whole:]
    if carry is not None and len(carry):
        assign_batch(carry)
    return out
