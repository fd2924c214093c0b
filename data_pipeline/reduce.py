"""UMAP + clustering: fitted once on a bounded sample, applied to every row in parallel.

``fit_space`` runs in one Ray task (UMAP and clustering are global); ``AssignBatch`` is the ``map_batches``
UDF that transforms fixed-size batches (UMAP's transform depends on batching, so the batch size is pinned and
order preserved) and assigns each row to a cluster. k for k-means is either given or the candidate with the
best silhouette score on the fit sample; HDBSCAN clusters the sample and other rows take the label of their
nearest sample point (HDBSCAN has no out-of-sample predict).

    python -c "import numpy as np; from data_pipeline.reduce import fit_space; from data_pipeline.config import \
UmapConfig, ClusterConfig; s = fit_space(np.random.rand(300, 16).astype('f4'), UmapConfig(n_components=4), \
ClusterConfig(k=3), 0); print(s.k)"
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .config import ClusterConfig, UmapConfig

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


def _umap(n_components: int, cfg: UmapConfig, seed: int, n_rows: int):
    import umap

    # init="pca": the default spectral init is not reproducible under a fixed random_state (measured: three
    # fits of the same 50 rows gave three layouts); PCA init gave identical layouts every time.
    return umap.UMAP(n_components=n_components, n_neighbors=min(cfg.n_neighbors, max(2, n_rows - 1)),
                     min_dist=cfg.min_dist, metric="cosine", random_state=seed, n_jobs=1, init="pca")


def fit_space(embeddings: np.ndarray, umap_cfg: UmapConfig, cluster_cfg: ClusterConfig, seed: int,
              sample_ids: list[str] | None = None) -> FittedSpace:
    """Fit UMAP (n-d and 2-d for the plot) and the clusterer on ``embeddings`` (the fit sample)."""
    from sklearn.cluster import HDBSCAN, KMeans
    from sklearn.metrics import silhouette_score
    from sklearn.neighbors import KNeighborsClassifier

    n = len(embeddings)
    if n < 5:
        raise ValueError(f"only {n} rows to fit UMAP/clustering; at least 5 are needed")
    reducer = _umap(umap_cfg.n_components, umap_cfg, seed, n)
    coords = reducer.fit_transform(embeddings)
    coords_2d = _umap(2, umap_cfg, seed, n).fit_transform(embeddings)
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


class AssignBatch:
    """``map_batches`` UDF: ``embedding`` → ``umap`` (n-d) and ``cluster`` for rows without a reason."""

    def __init__(self, space_ref: list):
        import ray

        # an ObjectRef passed directly in fn_constructor_args arrives unresolved: it travels in a list
        self.space: FittedSpace = ray.get(space_ref[0]) if not isinstance(space_ref[0], FittedSpace) \
            else space_ref[0]

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        emb = np.asarray(batch["embedding"], dtype=np.float32)
        ok = np.array([not r for r in batch["reason"]], dtype=bool)
        coords = np.zeros((len(emb), self.space.n_components), dtype=np.float32)
        clusters = np.full(len(emb), -2, dtype=np.int64)  # -2: not assigned (rejected row)
        if ok.any():
            coords[ok] = self.space.umap.transform(emb[ok]).astype(np.float32)
            clusters[ok] = self.space.clusterer.predict(coords[ok])
        batch = dict(batch)
        batch["umap"], batch["cluster"] = coords, clusters
        return batch
