"""``umap.png``: the 2-D UMAP of the fit sample, coloured by cluster, with the points sampled into the
per-cluster variant ringed in black. The title says what was embedded and by which model (``data build``
passes e.g. "UMAP of human turns (all-MiniLM-L6-v2)"); it is also stored in the PNG's ``Title`` text chunk
(``PIL.Image.open(path).text["Title"]``) and in the manifest (``plot.title``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

DEFAULT_TITLE = "UMAP of the embeddings"


def plot_umap(space, sampled_ids: set[str], path: str | Path, title: str | None = None) -> Path:
    """Write the plot to ``path`` (atomically) with ``title`` (default: :data:`DEFAULT_TITLE` and the fit)."""
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
    if title is None:
        title = f"{DEFAULT_TITLE}: {len(labels)} fit rows, {space.method} k={space.k}"
    ax.set_title(title, fontsize=10)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(fontsize=6, markerscale=1.5, loc="best", ncol=2)
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, metadata={"Title": title})
    plt.close(fig)
    tmp.replace(path)
    return path
