"""Typed configuration of ``vlm-sweep data build``.

    vlm-sweep data build --help          # every option below, with these docstrings
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from vlm_core.assets.hub import default_revision
from vlm_core.config import check_field, from_dict

from .embed import EMBED_TEXTS
from .translate import TranslatorConfig


@dataclass
class VariantSpec:
    """One output dataset."""

    name: str
    """Folder name under the output, e.g. ``20kUmap``."""
    kind: Literal["umap", "random"]
    """``umap``: equal allocation per cluster; ``random``: uniform sample."""
    size: int
    """Exact number of records (train + val) to sample."""

    def __post_init__(self) -> None:
        check_field(bool(self.name) and "/" not in self.name, "variants.name", f"{self.name!r} is not a folder name")
        check_field(self.kind in ("umap", "random"), f"variants[{self.name}].kind", "must be 'umap' or 'random'")
        check_field(self.size >= 1, f"variants[{self.name}].size", "must be >= 1")


def default_variants() -> list[VariantSpec]:
    return [VariantSpec("10kRandom", "random", 10_000), VariantSpec("20kUmap", "umap", 20_000)]


@dataclass
class EmbedConfig:
    """Sentence embeddings of each record's text, which UMAP and the clustering group."""

    model: str | None = None
    """sentence-transformers model: hub id or folder. Default: the packaged all-MiniLM-L6-v2 (384-d)."""
    revision: str | None = None
    """Hub commit (or branch / tag) of ``model`` when it is a hub id, passed to ``SentenceTransformer``; ignored
    for a folder and for the packaged default. Unset for ``sentence-transformers/all-MiniLM-L6-v2``: the project's
    pin (``vlm_core.assets.hub.PINNED_REVISIONS``). A hub id loads from the assets folder (``--assets``) when it holds
    this revision."""
    text: Literal["human", "assistant", "both"] = "human"
    """What is embedded: ``human`` (the human turns: the study's choice), ``assistant`` (the assistant turns) or
    ``both`` (human turns, a newline, assistant turns); English, ``<image>`` removed. On ShareGPT4V's caption
    files every human turn is one of ~10 fixed prompts, so ``human`` clusters prompt templates: ``data build``
    warns when the embedded texts are mostly repeats; ``assistant`` clusters the captions."""
    batch_size: int = 128
    """Texts per forward pass of the embedding model."""
    rows_per_call: int = 4096
    """Rows handed to each embedding actor call (Ray Data's batch). sentence-transformers sorts one call's texts by
    length before cutting them into ``batch_size`` batches, so a call of a few thousand rows pads about as little
    as one plain ``encode`` over everything (measured in BENCHMARKS.md); a call of ``batch_size`` rows pads much
    more."""
    actors: int | None = None
    """Embedding actors. Default: one per GPU, else CPUs - 1 (so read tasks keep a CPU), at least 1."""

    def __post_init__(self) -> None:
        check_field(self.text in EMBED_TEXTS, "embed.text",
                    f"{self.text!r} is not one of {', '.join(repr(t) for t in EMBED_TEXTS)}")
        for name in ("model", "revision"):
            value = getattr(self, name)
            check_field(value is None or (isinstance(value, str) and value.strip() == value and bool(value)),
                        f"embed.{name}", "must be None or a non-empty string without surrounding spaces")

        self.revision = default_revision(self.model, self.revision)  # a hub id the project pins gets its pin
        check_field(self.batch_size >= 1, "embed.batch_size", "must be >= 1")
        check_field(self.rows_per_call >= self.batch_size, "embed.rows_per_call",
                    f"{self.rows_per_call} must be >= embed.batch_size ({self.batch_size})")
        check_field(self.actors is None or self.actors >= 1, "embed.actors", "must be >= 1")


@dataclass
class UmapConfig:
    """Dimensionality reduction before clustering."""

    n_components: int = 10
    """Output dimensions."""
    n_neighbors: int = 15
    """UMAP neighbourhood size."""
    min_dist: float = 0.0
    """UMAP min_dist (0 suits clustering)."""
    fit_sample: int = 20_000
    """UMAP is fitted on at most this many rows (chosen by id hash), then applied to every row in parallel."""
    transform_batch: int = 1024
    """Fixed rows per transform call: UMAP's transform depends on batching, so it is pinned."""

    def __post_init__(self) -> None:
        check_field(self.n_components >= 2, "umap.n_components", "must be >= 2")
        check_field(self.fit_sample >= 10, "umap.fit_sample", "must be >= 10")


@dataclass
class ClusterConfig:
    """Clustering of the UMAP coordinates."""

    method: Literal["kmeans", "hdbscan"] = "kmeans"
    """``kmeans`` (k fixed or chosen by silhouette) or ``hdbscan`` (noise points form their own cluster -1)."""
    k: int | None = None
    """k-means clusters. Default: the k in ``k_range`` with the best silhouette score on the fit sample."""
    k_range: list[int] = field(default_factory=lambda: [4, 6, 8, 10, 12, 16, 20])
    """Candidates when ``k`` is unset."""
    min_cluster_size: int = 25
    """HDBSCAN's min_cluster_size."""

    def __post_init__(self) -> None:
        check_field(self.method in ("kmeans", "hdbscan"), "cluster.method", "must be 'kmeans' or 'hdbscan'")
        check_field(self.k is None or self.k >= 2, "cluster.k", "must be >= 2")
        check_field(all(k >= 2 for k in self.k_range) and bool(self.k_range), "cluster.k_range", "needs values >= 2")


@dataclass
class BuildConfig:
    """The whole preparation."""

    source: str
    """ShareGPT4V records: a JSON list (``.json``) or JSON Lines (``.jsonl``), read streaming."""
    images: str
    """Root folder the records' ``image`` paths are relative to."""
    out: str
    """Output folder (variants, manifest.json, rejected.jsonl, umap.png, artifacts/)."""
    variants: list[VariantSpec] = field(default_factory=default_variants)
    """Datasets to sample."""
    image_prefix: str = "coco/"
    """Keep records whose image path starts with this (the COCO filter); empty keeps all."""
    check_images: bool = True
    """Decode every kept image as training will (``vlm_core.data.images.open_rgb``) and quarantine, with a reason, the
    missing, empty, truncated, undecodable and oversized ones (``false`` skips the decode: faster on a trusted
    folder, but a bad image then stops training by name)."""
    verbose: bool = False
    """Ray's and Ray Data's own output (progress, every stage) and every INFO line on the console too (they always
    go to ``OUT/logs/vlm-sweep.log``)."""
    translate: TranslatorConfig = field(default_factory=TranslatorConfig)
    """English → Indonesian translation (``none`` keeps English)."""
    embed: EmbedConfig = field(default_factory=EmbedConfig)
    """Sentence embeddings: model, revision, and what is embedded (``--embed.text``)."""
    umap: UmapConfig = field(default_factory=UmapConfig)
    """Dimensionality reduction before clustering."""
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    """Clustering of the UMAP coordinates."""
    val_fraction: float = 0.05
    """Validation share of each variant, assigned by a hash of the record id (stable across variants)."""
    seed: int = 0
    """Seeds UMAP, clustering and sampling."""
    shard_lines: int = 20_000
    """Source lines per read task."""
    assets: str | None = None
    """Assets folder from ``vlm-sweep assets download`` (default: ``$VLM_SWEEP_ASSETS``, else none): hub ids of
    ``embed.model`` and ``translate.model`` whose pinned revision it holds load from it. The driver rewrites them
    to that folder before the Ray Data actors start (the actors do not see the driver's environment); the
    manifest records the id, the revision and the folder used."""

    def __post_init__(self) -> None:
        check_field(self.assets is None or (isinstance(self.assets, str) and bool(self.assets.strip())),
                    "assets", "must be None or a folder path")
        check_field(0 <= self.val_fraction < 1, "val_fraction", "must be in [0, 1)")
        check_field(self.shard_lines >= 1, "shard_lines", "must be >= 1")
        names = [v.name for v in self.variants]
        check_field(len(set(names)) == len(names), "variants", f"duplicate names in {names}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "BuildConfig":
        d = dict(d)
        d["variants"] = [v if isinstance(v, VariantSpec) else VariantSpec(**v) for v in d.get("variants", [])] \
            if "variants" in d else default_variants()
        return from_dict(cls, d)
