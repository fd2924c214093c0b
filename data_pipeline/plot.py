"""``umap.png``: the 2-D UMAP of the fit sample, coloured by cluster, with the points sampled into the
per-cluster variant ringed in black.

    python -c "from data_pipeline.plot import plot_umap; help(plot_umap)"
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def plot_umap(space, sampled_ids: set[str], path: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    coords, labels = space.sample_coords_2d, np.asarray(space.sample_labels)
    picked = np.array([i in sampled_ids for i in space.sample_ids], dtype=bool)
    fig, ax = plt.subplots(figsize=(7, 6), dpi=110)
    cmap = plt.get_cmap("tab20", max(space.k, 1))
    for j, c in enumerate(sorted(set(labels.tolist()))):
        m = labels == c
        ax.scatter(coords[m, 0], coords[m, 1], s=8, color=cmap(j % 20), alpha=0.7, linewidths=0,
                   label=f"cluster {c} ({int(m.sum())})")
    if picked.any():
        ax.scatter(coords[picked, 0], coords[picked, 1], s=18, facecolors="none", edgecolors="black",
                   linewidths=0.5, label=f"sampled ({int(picked.sum())})")
    ax.set_title(f"UMAP of human-turn embeddings: {len(labels)} fit rows, {space.method} k={space.k}")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(fontsize=6, markerscale=1.5, loc="best", ncol=2)
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)
    return path
