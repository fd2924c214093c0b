"""``vlm-sweep data build``: ShareGPT4V → validated, filtered, translated, embedded, UMAP-clustered, sampled.

A Ray Data pipeline (local Ray by default, any cluster through ``RAY_ADDRESS``; on a multi-node cluster the
output folder must be shared storage):

    1  source shards ─► validate ─► image-prefix filter (─► image check)      read tasks, ½ CPU each
       ─► translate (actor pool) ─► embed --embed.text (actor pool)           _work/rows-<key>/
    2  repetition of the embedded texts (hash counts) ─► warn when mostly repeats     manifest.json
    3  UMAP + clustering fitted on a bounded sample, in one task              artifacts/
       (the plot's 2-d UMAP of the same sample in a second task, at the same time)
    4  transform + assign every row, in one task (file order, fixed batches) ─► sample variants ─► write
       (train: a variant's records whose id hashes into train; val: the common held-out set, the same rows for
       every variant — see :func:`common_heldout`)

Rows rejected at any step flow on with their reason (later steps skip them), so one pass yields both the
kept rows and ``rejected.jsonl``. Actor pools are sized so that read tasks keep a CPU share: on 2 cores a
pool that took every CPU stalled the read for ever.

Each intermediate is keyed by a hash of everything that produced it and reused by a rerun, which then says
so. Outputs are replaced atomically, never appended to, so reruns never duplicate rows. Every dropped row is
in ``rejected.jsonl`` with its line, id, step (its ``stage`` field) and reason, and counted in ``manifest.json``.

**Repeated embedded texts.** ``--embed.text`` (``human`` by default: the study's choice; ``assistant``;
``both``) picks what is embedded. In ShareGPT4V's caption files every human turn is one of ~10 fixed prompts,
so embedding the human turns clusters prompt templates, not content. The manifest's ``embedding`` section
records ``distinct_texts``, ``distinct_fraction``, ``top10_share`` (the share of embedded rows held by the 10
most common embedded texts) and those texts (80 characters) with their counts; ``data build`` logs a warning,
also kept in ``manifest["warnings"]``, naming these figures and ``--embed.text`` when the texts are mostly
repeats (thresholds: :data:`REPEAT_TOP10_SHARE`, :data:`REPEAT_DISTINCT_FRACTION`, see
:func:`repetition_warning`).

**Assets.** With ``--assets DIR`` (or ``$VLM_SWEEP_ASSETS``), a hub ``embed.model`` whose revision ``DIR`` holds
is rewritten to that folder, and the translator is given ``DIR`` (``translate.assets``; its hub id and revision
stay its cache key), in the driver, before the configs reach the Ray Data actors (which do not see the driver's
environment).

    vlm-sweep data sample-corpus --out corpus
    vlm-sweep data build --source corpus/sharegpt4v_sample.jsonl --images corpus/images --out data \
        --variants '[{name: 10kRandom, kind: random, size: 300}, {name: 20kUmap, kind: umap, size: 400}]'
    vlm-sweep data caption-fixture --out fixture --n-rows 400   # the caption files' shape, small
    vlm-sweep data build --source fixture/sharegpt4v_instruct_gpt4-vision_cap100k.json --images fixture/images \
        --out data-captions --embed.text assistant --variants '[{name: 20kUmap, kind: umap, size: 100}]'
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import sys
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from vlm_core.assets.hub import assets_dir, localize
from vlm_core.base.hashing import file_sha256, json_digest, seeded_digest
from vlm_core.base.logs import ProgressBar, event
from vlm_core.base.outputs import atomic_dir, atomic_path, atomic_write_text, check_output_dir
from vlm_core.base.ray_env import init_ray, largest_node
from vlm_core.config import IMAGE_MARKER
from vlm_core.data.dataset import is_validation

from .config import BuildConfig
from .embed import TEXT_LABELS, EmbedBatch, model_label, resolve_model
from .plot import plot_umap
from .records import (
    SourceError,
    _is_json_list,
    json_list_to_jsonl,
    plan_shards,
)
from .reduce import MIN_FIT_ROWS, assign_rows, fit_plot_layout, fit_space
from .repetition import repeated_texts, repetition_stats, repetition_warning
from .row_steps import TranslateStep, filter_batch, read_shards_batch, reason_group
from .sampling import cluster_counts, sample_per_cluster, sample_random
from .translate import build_translator

log = logging.getLogger(__name__)
DONE = "_DONE"

def _key(*parts: Any) -> str:
    return json_digest(list(parts), 16)


# ------------------------------------------------------------------------------------------------ helpers
def _write_done(path: Path, info: dict) -> None:
    (path / DONE).write_text(json.dumps(info, indent=2))


def _done(path: Path) -> dict | None:
    f = path / DONE
    return json.loads(f.read_text()) if f.is_file() else None


def _part_names():
    """Write-task files named by task index alone, so that a folder lists in the same order on every run."""
    from ray.data.datasource import FilenameProvider

    class PartNames(FilenameProvider):
        def get_filename_for_task(self, write_uuid: str, task_index: int) -> str:
            return f"part-{task_index:06d}.parquet"

    return PartNames()


def _ray_write(ds, target: Path) -> None:
    import ray.data

    with atomic_dir(target) as tmp:
        # half a CPU: the step's actors keep theirs, and a write needing a whole one would wait forever on 2 cores
        ds.write_parquet(str(tmp.resolve()), filename_provider=_part_names(), ray_remote_args={"num_cpus": 0.5},
                         mode=ray.data.SaveMode.OVERWRITE)  # a fresh temp folder: nothing to overwrite but our own


def _reason_counts(path: Path) -> tuple[int, Counter]:
    import pyarrow.compute as pc
    import pyarrow.dataset as pads

    table = pads.dataset(path, format="parquet").to_table(columns=["reason", "stage"])
    total = table.num_rows
    rejected = table.filter(pc.not_equal(table["reason"], ""))
    counts = Counter(f"{s}: {reason_group(r)}" for r, s in zip(rejected["reason"].to_pylist(),
                                                                rejected["stage"].to_pylist()))
    return total, counts


def _rejected_rows(path: Path) -> list[dict]:
    import pyarrow.compute as pc
    import pyarrow.dataset as pads

    d = pads.dataset(path, format="parquet")
    cols = ["line", "id", "stage", "reason", "image", "conversations"]
    return d.to_table(columns=cols, filter=pc.field("reason") != "").to_pylist()


def _duplicate_rows(dataset) -> list[dict]:
    """Rows (otherwise kept) whose id an earlier line already has: step ``dedupe``, reason naming that line."""
    import pyarrow.compute as pc

    kept = dataset.to_table(columns=["id", "line"], filter=pc.field("reason") == "")
    first: dict[str, int] = {}
    dups = []
    for rid, line in sorted(zip(kept["id"].to_pylist(), kept["line"].to_pylist()), key=lambda t: t[1]):
        if rid in first:
            dups.append((rid, line))
        else:
            first[rid] = line
    if not dups:
        return []
    rows = dataset.to_table(columns=["line", "id", "image", "conversations"],
                            filter=pc.field("line").isin([line for _, line in dups])).to_pylist()
    for r in rows:
        r.update(stage="dedupe", reason=f"duplicate id {r['id']!r} (first seen at line {first[r['id']]})")
    return sorted(rows, key=lambda r: r["line"])


def common_heldout(own_vals: list) -> Any:
    """Every variant's val split is the same rows: each sampled record whose id hashes into val, whichever variant
    drew it (a record's split is a hash of its id, so none of these is in any variant's train). Why: the sweep
    ranks trials of different variants together (Tune's best trial, the stage tables, the plots), which means
    something only when every trial is scored on the same rows. Rows in id, line order, each once."""
    import pyarrow as pa

    if not own_vals:
        return pa.table({})
    rows = pa.concat_tables(own_vals).sort_by([("id", "ascending"), ("line", "ascending")])
    lines = rows["line"].to_pylist()
    keep = [i == 0 or lines[i] != lines[i - 1] for i in range(len(lines))]
    return rows.filter(pa.array(keep, pa.bool_()))


def _fit_sample_ids(ids: list[str], n: int, seed: int) -> set[str]:
    """A deterministic, order-independent sample: the ``n`` ids with the smallest seeded hash."""
    if len(ids) <= n:
        return set(ids)
    keyed = sorted(ids, key=lambda i: seeded_digest(seed, i))
    return set(keyed[:n])


@dataclass
class ActorPlan:
    """Ray resources of each pipeline step, sized so that the read tasks always keep a share of the CPUs."""

    read_cpus: float
    translate_actors: int
    translate_cpus: float
    translate_gpus: float
    embed_actors: int
    embed_cpus: float
    embed_gpus: float


def plan_actors(cfg: BuildConfig, resources: dict[str, float], node_cpus: float | None = None) -> ActorPlan:
    """On GPUs: one embedding actor per GPU (sharing it with a seq2seq translator). On CPUs: reads get 0.5 CPU,
    a translator 0.5 CPU (a dictionary) or one CPU (a model), and embedding actors the rest, at least one. No actor
    asks more than ``node_cpus`` (the largest node's; default: the whole cluster's): a request no one node holds
    would wait for ever on a cluster of small nodes."""
    gpus, cpus = int(resources.get("gpu", 0)), float(resources.get("cpu", 1))
    node_cpus = cpus if node_cpus is None else max(0.5, min(node_cpus, cpus))
    model_translator = cfg.translate.name == "seq2seq"
    uses_translator = cfg.translate.name != "none"
    if gpus:
        share = 0.5 if model_translator else 1.0
        return ActorPlan(0.5, gpus if uses_translator else 0, 0.5, share if model_translator else 0.0,
                         cfg.embed.actors or gpus, min(1.0, node_cpus), share)
    t_cpus = (1.0 if model_translator and cpus >= 4 else 0.5) if uses_translator else 0.0
    t_cpus = min(t_cpus, node_cpus)
    left = max(1.0, cpus - 0.5 - t_cpus)
    n = cfg.embed.actors or max(1, int(left))
    each = min(left / n, node_cpus)
    if not cfg.embed.actors:  # capped by the node size: as many more actors as the CPUs left hold
        n = max(n, int(left // each))
    return ActorPlan(0.5, 1 if uses_translator else 0, t_cpus, 0.0, n, each, 0.0)


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": sys.version.split()[0]}
    for pkg in ("ray", "torch", "transformers", "sentence-transformers", "umap-learn", "scikit-learn", "pyarrow",
                "vlm-sweep"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def _write_parquet_atomic(table, path: Path) -> None:
    import pyarrow.parquet as pq

    with atomic_path(path) as tmp:  # disk full, killed writer: the previous file (if any) stays, no half file
        pq.write_table(table, tmp)


def localized_models(cfg: BuildConfig):
    """(embedding model to load, the revision to pass with it, translator config): the embedder's hub id rewritten
    to the assets folder's copy (``--assets`` or ``$VLM_SWEEP_ASSETS``) when it holds its revision; the translator
    told the assets folder (``translate.assets``), keeping its hub id and revision for its cache key."""
    root = assets_dir(cfg.assets)
    if cfg.assets and not Path(cfg.assets).expanduser().is_dir():
        raise SourceError(f"assets folder {cfg.assets} is not a folder; pass --assets with the folder written by "
                          f"`vlm-sweep assets download`")
    assets = str(root.resolve()) if root is not None else None  # absolute: actors run elsewhere
    embed_model, embed_revision = resolve_model(cfg.embed.model), cfg.embed.revision if cfg.embed.model else None
    if cfg.embed.model:
        local = localize(cfg.embed.model, cfg.embed.revision, assets)
        if local != cfg.embed.model:
            embed_model, embed_revision = local, None  # the folder holds that revision
    # the translator keeps its hub id and revision (its cache key) and is told where the files are
    translate = replace(cfg.translate, assets=assets) if cfg.translate.model and assets else cfg.translate
    return embed_model, embed_revision, translate


# -------------------------------------------------------------------------------------------------- build
@dataclass
class BuildRun:
    """What the steps of one ``build`` share: its config and folders, and what they record for the manifest."""

    cfg: BuildConfig
    out: Path
    work: Path
    source: Path
    src_hash: str
    jsonl: Path
    """The source as JSONL (a JSON list is converted once into ``work``)."""
    source_errors: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    reused: list[str] = field(default_factory=list)
    """Steps whose output a rerun reused."""
    warnings: list[str] = field(default_factory=list)
    """Also logged; kept in the manifest."""
    placed_by_nearest: int = 0
    """Rows UMAP's transform left without coordinates, placed on their nearest fit-sample point (step 4)."""

    def warn(self, message: str) -> None:
        log.warning("%s", message)
        self.warnings.append(message)


@dataclass
class EmbeddedRows:
    """Step 1's output: every source row validated, filtered, translated and embedded (rejections kept)."""

    folder: Path
    n_read: int
    reasons: Counter
    embed_model: str
    embed_revision: str | None
    translate_cfg: Any
    translator_id: str
    plan: ActorPlan


@dataclass
class KeptRows:
    """Step 2's output: the rows that passed every check, duplicates of an earlier id set aside."""

    dataset: Any  # pyarrow.dataset over the embedded rows
    filter: Any  # pyarrow expression selecting the kept rows
    duplicates: list[dict]
    repetition: dict[str, Any]


def build(cfg: BuildConfig) -> dict[str, Any]:
    """Run the pipeline, step by step; returns the manifest (also written to ``OUT/manifest.json``)."""
    import ray

    t_start = time.perf_counter()
    run = start_run(cfg)
    resources = init_ray()
    bar = ProgressBar(5, "data build", "steps")

    def done(step: int, what: str, timing: str | None = None) -> None:
        took = f" ({run.timings[timing]:.0f} s)" if timing in run.timings else ""
        event("data · step %d/5 %s%s", step, what, took)
        bar.step(note=what)

    rows = embed_rows(run, resources)                       # 1  read, validate, filter, translate, embed
    done(1, f"read {rows.n_read} rows, checked, filtered and embedded them", "read_validate_translate_embed_s")
    kept = keep_rows(run, rows)                             # 2  duplicates, repetition of the embedded texts
    n_kept = check_enough_rows(run, rows, kept)             #    enough to fit and to fill every variant?
    done(2, f"set aside {len(kept.duplicates)} repeated ids; {n_kept} rows kept")
    space, space_ref, plot_ref, fit_ids, dim = fit_space_on_sample(run, kept)   # 3  UMAP + clusters
    done(3, f"UMAP fitted on {len(fit_ids)} rows, {space.k} clusters", "fit_s")
    ids, clusters = assign_clusters(run, rows, kept, space_ref)                 # 4  every row's cluster
    done(4, f"assigned {len(ids)} rows to clusters", "assign_s")
    space.sample_coords_2d = ray.get(plot_ref)                                  #    the plot's 2-d layout
    variants = sample_and_write_variants(run, kept, ids, clusters)    # 5  variants, common held-out set
    done(5, "sampled and wrote " + ", ".join(f"{k} ({v['train']} train)" for k, v in variants.items()),
         "sample_write_s")
    bar.close()
    write_rejected(run, rows, kept)
    plot_title = write_space(run, space)
    manifest = {
        "source": {"path": str(run.source.resolve()), "sha256": run.src_hash,
                   "format": "json" if run.jsonl != run.source else "jsonl", "read_errors": run.source_errors},
        "counts": rejection_counts(rows, len(ids)),
        "rejected_by_reason": dict(sorted(rows.reasons.items(), key=lambda kv: -kv[1])),
        "variants": variants,
        "clusters": {"method": space.method, "k": space.k, "silhouette_by_k": space.silhouette,
                     "per_cluster_all": cluster_counts(clusters), "fit_sample": len(fit_ids),
                     "placed_by_nearest": run.placed_by_nearest},
        "embedding": {"model": cfg.embed.model or rows.embed_model, "revision": cfg.embed.revision,
                      "folder": rows.embed_model if Path(rows.embed_model).expanduser().is_dir() else None,
                      "packaged": cfg.embed.model is None, "dim": dim, "text": cfg.embed.text,
                      "text_description": f"{TEXT_LABELS[cfg.embed.text]} (English), {IMAGE_MARKER} removed",
                      **{k: kept.repetition[k] for k in ("distinct_texts", "distinct_fraction", "top10_share",
                                                         "top_texts")},
                      "repeated": repeated_texts(kept.repetition)},
        "translation": {"translator": cfg.translate.name, "id": rows.translator_id, "model": cfg.translate.model,
                        "revision": getattr(cfg.translate, "revision", None),
                        "folder": rows.translate_cfg.model if rows.translate_cfg.model and
                        Path(rows.translate_cfg.model).expanduser().is_dir() else None},
        "plot": {"path": "umap.png", "title": plot_title},
        "warnings": run.warnings,
        "params": cfg.to_dict(), "seed": cfg.seed, "versions": _versions(),
        "ray_plan": rows.plan.__dict__, "reused_stages": run.reused,
        "timings_s": {k: round(v, 2) for k, v in run.timings.items()},
        "wall_s": round(time.perf_counter() - t_start, 2), "ray_resources": resources,
    }
    atomic_write_text(run.out / "manifest.json", json.dumps(manifest, indent=2, default=str))
    if run.reused:
        print(f"reused finished steps: {', '.join(run.reused)} (delete {run.work} to recompute)")
    return manifest


def start_run(cfg: BuildConfig) -> BuildRun:
    """Check the inputs and the output folder (before Ray starts); a JSON-list source becomes JSONL once."""
    out, source = Path(cfg.out), Path(cfg.source)
    if not source.is_file():
        raise SourceError(f"source file {source} does not exist; pass --source with a ShareGPT4V .json or .jsonl")
    if not Path(cfg.images).is_dir():
        raise SourceError(f"image root {cfg.images} is not a folder; pass --images with the folder that holds "
                          f"the records' image paths")
    check_output_dir(out, 0, "data build --out")
    work = out / "_work"
    work.mkdir(exist_ok=True)
    src_hash = file_sha256(source)
    run = BuildRun(cfg, out, work, source, src_hash, source)
    if _is_json_list(source):
        run.jsonl = work / f"source-{src_hash[:16]}.jsonl"
        err_file = work / f"{run.jsonl.name}.error"
        if not run.jsonl.is_file():
            _, err = json_list_to_jsonl(source, run.jsonl)
            err_file.write_text(err or "")
        if err_file.is_file() and err_file.read_text():
            run.source_errors.append(err_file.read_text())
            log.error("%s", run.source_errors[-1])
    return run


def read_and_filter(run: BuildRun, plan: ActorPlan):
    """The pass's first steps as a lazy Ray Data dataset: the JSONL cut into shards of ``shard_lines`` lines, each
    read and validated by a task, then filtered by image prefix (and opened with ``check_images``); rejected rows
    stay in the stream with their ``reason``. ``bench/caption_stream.py`` streams it alone at the caption files'
    real sizes."""
    import ray

    cfg = run.cfg
    shards = plan_shards(run.jsonl, cfg.shard_lines)
    ds = ray.data.from_items([{"path": s.path, "start": s.start, "end": s.end, "first_line": s.first_line}
                              for s in shards], override_num_blocks=max(1, len(shards)))
    ds = ds.map_batches(read_shards_batch, batch_size=1, num_cpus=plan.read_cpus)
    return ds.map_batches(filter_batch, fn_args=(cfg.image_prefix, cfg.check_images, cfg.images),
                          num_cpus=plan.read_cpus)


def embed_rows(run: BuildRun, resources: dict[str, float]) -> EmbeddedRows:
    """Step 1, one streaming pass: read + validate + filter (tasks) → translate → embed (actor pools) → Parquet in
    ``_work/rows-<key>``, keyed by everything that produced it (a rerun with the same inputs reuses it)."""
    import ray

    cfg, t0 = run.cfg, time.perf_counter()
    embed_model, embed_revision, translate_cfg = localized_models(cfg)  # before any config reaches an actor
    translator_id = build_translator(translate_cfg).id if cfg.translate.name != "none" else "none"
    key = _key(run.src_hash, cfg.image_prefix, cfg.check_images, str(Path(cfg.images).resolve()), translator_id,
               embed_model, embed_revision, cfg.embed.text, "rows-v2")
    folder = run.work / f"rows-{key}"
    plan = plan_actors(cfg, resources, largest_node("CPU"))
    if _done(folder):
        run.reused.append("rows")
        log.info("reusing validated, translated and embedded rows from %s", folder)
    else:
        ds = read_and_filter(run, plan)
        if plan.translate_actors:
            ds = ds.map_batches(TranslateStep, fn_constructor_args=(
                translate_cfg.to_dict(), str((run.work / "translation_cache").resolve())),
                batch_size=cfg.translate.batch_size, compute=ray.data.ActorPoolStrategy(size=plan.translate_actors),
                num_cpus=plan.translate_cpus, num_gpus=plan.translate_gpus)
        threads = None if plan.embed_gpus else max(1, math.ceil(plan.embed_cpus))  # 1.5 CPUs → 2 threads
        ds = ds.map_batches(EmbedBatch, fn_constructor_args=(embed_model, cfg.embed.batch_size, threads,
                                                             cfg.embed.text, embed_revision),
                            batch_size=cfg.embed.rows_per_call,
                            compute=ray.data.ActorPoolStrategy(size=plan.embed_actors),
                            num_cpus=plan.embed_cpus, num_gpus=plan.embed_gpus)
        _ray_write(ds, folder)
        _write_done(folder, {"key": key})
    n_read, reasons = _reason_counts(folder)
    run.timings["read_validate_translate_embed_s"] = time.perf_counter() - t0
    return EmbeddedRows(folder, n_read, reasons, embed_model, embed_revision, translate_cfg, translator_id, plan)


def keep_rows(run: BuildRun, rows: EmbeddedRows) -> KeptRows:
    """Step 2: later copies of an id are quarantined (``dedupe``; the first copy is kept), and the repetition of
    the embedded texts is measured (a warning when they are mostly repeats)."""
    import pyarrow.compute as pc
    import pyarrow.dataset as pads

    dataset = pads.dataset(rows.folder, format="parquet")
    duplicates = _duplicate_rows(dataset)
    if duplicates:
        rows.reasons.update(f"dedupe: {reason_group(d['reason'])}" for d in duplicates)
        run.warn(f"{len(duplicates)} rows repeat an id already seen (e.g. {duplicates[0]['id']} at line "
                 f"{duplicates[0]['line']}); quarantined as 'dedupe'")
    keep = (pc.field("reason") == "") & ~pc.field("line").isin([d["line"] for d in duplicates])
    repetition = repetition_stats(dataset, keep, run.cfg.embed.text)
    if (warning := repetition_warning(repetition, run.cfg.embed.text)):
        run.warn(warning)
    return KeptRows(dataset, keep, duplicates, repetition)


class TooFewRows(SourceError):
    """Too few rows passed the checks to fit the space or to fill a variant: the build stops before fitting."""


def check_enough_rows(run: BuildRun, rows: EmbeddedRows, kept: KeptRows) -> int:
    """Step 2's check: enough rows passed to fit UMAP and to fill every variant, else stop here, before fitting,
    with ``rejected.jsonl`` written and one line giving the counts by reason and the likely fix. Returns the count."""
    n_kept = rows.n_read - sum(rows.reasons.values())  # every rejection and repeated id is counted once there
    needs = [(MIN_FIT_ROWS, "the UMAP fit needs")] + [(v.size, f"variant {v.name!r} asks for")
                                                       for v in run.cfg.variants]
    need, why = max(needs, key=lambda n: n[0])
    if n_kept >= need:
        return n_kept
    write_rejected(run, rows, kept)
    reasons = "; ".join(f"{n} {reason}" for reason, n in rows.reasons.most_common(3))
    more = f" and {len(rows.reasons) - 3} more kinds" if len(rows.reasons) > 3 else ""
    raise TooFewRows(f"data build: {n_kept} of {rows.n_read} rows passed the checks and {why} {need} (rejected: "
                     f"{reasons or 'none'}{more}); {_likely_fix(run, rows)}; every rejected row with its reason is "
                     f"in {run.out / 'rejected.jsonl'}")


def _likely_fix(run: BuildRun, rows: EmbeddedRows) -> str:
    """The fix for the commonest reason: where the images are when the ``--images`` root is off by a folder."""
    import pyarrow.compute as pc
    import pyarrow.dataset as pads

    top = rows.reasons.most_common(1)[0][0] if rows.reasons else ""
    if not top.startswith("image: image not found"):
        if top.startswith("filter:"):
            return f"the records' image paths are not under --image-prefix {run.cfg.image_prefix!r}; set it"
        return "fix the rows' problem, or lower the variants' sizes"
    missing = pads.dataset(rows.folder, format="parquet").to_table(
        columns=["image"], filter=(pc.field("stage") == "image")).slice(0, 1)["image"].to_pylist()
    root = Path(run.cfg.images)
    if not missing:
        return f"check --images {root}"
    rel = missing[0]
    candidates = [root.parent] + sorted(p for p in root.iterdir() if p.is_dir())
    found = next((c for c in candidates if (c / rel).is_file()), None)
    if found is not None:
        return f"the images are under {found}, not {root}: pass --images {found}"
    return (f"the records' image paths (e.g. {rel}) are read relative to --images {root}, and {root / rel} is not "
            f"there; pass the folder that holds them")


def fit_space_on_sample(run: BuildRun, kept: KeptRows):
    """Step 3: UMAP + clustering fitted on a bounded, order-independent sample, in one Ray task; the plot's 2-d
    layout of the same sample in a second task at the same time. Returns the fitted space, its object ref (for
    the assigning task), the plot layout's ref, the fit sample's ids and the embedding width."""
    import pyarrow.compute as pc
    import ray

    cfg, t0 = run.cfg, time.perf_counter()
    ids = kept.dataset.to_table(columns=["id"], filter=kept.filter)["id"].to_pylist()
    fit_ids = _fit_sample_ids(ids, cfg.umap.fit_sample, cfg.seed)
    fit_table = kept.dataset.to_table(columns=["id", "embedding"],
                                      filter=kept.filter & pc.field("id").isin(list(fit_ids)))
    fit_table = fit_table.sort_by("id")  # the fit must not depend on how the rows were laid out in files
    fit_emb = np.stack(fit_table["embedding"].to_numpy(zero_copy_only=False)).astype(np.float32)
    emb_ref = ray.put(fit_emb)
    space_ref = ray.remote(fit_space).options(num_cpus=1).remote(
        emb_ref, cfg.umap, cfg.cluster, cfg.seed, fit_table["id"].to_pylist(), plot=False)
    plot_ref = ray.remote(fit_plot_layout).options(num_cpus=1).remote(emb_ref, cfg.umap, cfg.seed)
    space = ray.get(space_ref)
    run.timings["fit_s"] = time.perf_counter() - t0
    return space, space_ref, plot_ref, fit_ids, int(fit_emb.shape[1])


def assign_clusters(run: BuildRun, rows: EmbeddedRows, kept: KeptRows, space_ref) -> tuple[list[str], list[int]]:
    """Step 4: every kept row's cluster, by one Ray task reading the rows in file order (UMAP's transform depends
    on batching: :func:`data_pipeline.reduce.assign_rows`)."""
    import ray

    t0 = time.perf_counter()
    assigned = ray.get(ray.remote(assign_rows).options(num_cpus=1).remote(space_ref, str(rows.folder.resolve())))
    if assigned["placed_by_nearest"]:
        run.warn(f"UMAP's transform gave {assigned['placed_by_nearest']} of {len(assigned['id'])} rows no "
                 "coordinates (no neighbours in the fit sample); each took the coordinates and cluster of its "
                 "nearest fit-sample point (manifest: clusters.placed_by_nearest)")
    run.placed_by_nearest = assigned["placed_by_nearest"]
    duplicate_lines = {d["line"] for d in kept.duplicates}
    keep = [i for i, line in enumerate(assigned["line"]) if line not in duplicate_lines]
    run.timings["assign_s"] = time.perf_counter() - t0
    return [assigned["id"][i] for i in keep], [assigned["cluster"][i] for i in keep]


def sample_and_write_variants(run: BuildRun, kept: KeptRows, ids: list[str], clusters: list[int]) -> dict[str, Any]:
    """Step 5: each variant sampled (``random``: uniform; ``umap``: equal per cluster) and written: its train split
    and the common held-out set (:func:`common_heldout`), each folder replaced whole. Returns the manifest's
    ``variants``."""
    import pyarrow as pa
    import pyarrow.compute as pc

    cfg, t0 = run.cfg, time.perf_counter()
    cluster_of = dict(zip(ids, clusters))
    info: dict[str, Any] = {}
    drawn: dict[str, tuple[Any, Any]] = {}  # variant -> (its sampled rows, which hash into val)
    for v in cfg.variants:
        if v.kind == "random":
            chosen, per_cluster = sample_random(ids, v.size, cfg.seed, v.name), None
        else:
            chosen, per_cluster = sample_per_cluster(ids, clusters, v.size, cfg.seed, v.name)
        columns = ["id", "image", "conversations", "n_turns", "line"] + \
            (["conversations_en"] if cfg.translate.name != "none" else [])
        table = kept.dataset.to_table(columns=columns, filter=kept.filter & pc.field("id").isin(chosen))
        table = table.append_column("cluster", pa.array([cluster_of[i] for i in table["id"].to_pylist()],
                                                        pa.int64()))
        table = table.sort_by([("id", "ascending"), ("line", "ascending")])
        is_val = pa.array([is_validation(i, cfg.val_fraction, cfg.seed) for i in table["id"].to_pylist()])
        drawn[v.name] = table, is_val
        info[v.name] = {"kind": v.kind, "size": v.size, "sampled": table.num_rows,
                        "val_own": int(pc.sum(is_val).as_py() or 0),
                        "per_cluster": per_cluster or cluster_counts(table["cluster"].to_pylist())}
    heldout = common_heldout([t.filter(m) for t, m in drawn.values()])
    for name, (table, is_val) in drawn.items():
        vdir = run.out / name
        if vdir.exists():
            shutil.rmtree(vdir)  # replaced whole: a rerun never leaves stale or duplicated files
        vdir.mkdir(parents=True)
        train_t = table.filter(pc.invert(is_val))
        _write_parquet_atomic(train_t, vdir / "train-00000.parquet")
        _write_parquet_atomic(heldout, vdir / "val-00000.parquet")
        info[name] = {**info[name], "train": train_t.num_rows, "val": heldout.num_rows}
    run.timings["sample_write_s"] = time.perf_counter() - t0
    return info


def write_rejected(run: BuildRun, rows: EmbeddedRows, kept: KeptRows) -> None:
    """``rejected.jsonl``: every dropped row with its line, id, step (the ``stage`` field), reason and a prefix of
    its raw text, in line order; unreadable parts of the source last."""
    rejected = _rejected_rows(rows.folder) + kept.duplicates
    rejected.sort(key=lambda r: (r["line"], r["stage"]))
    with atomic_path(run.out / "rejected.jsonl") as tmp, tmp.open("w", encoding="utf-8") as f:
        for r in rejected:
            f.write(json.dumps({"line": r["line"], "id": r["id"], "stage": r["stage"], "reason": r["reason"],
                                "image": r["image"], "raw": r["conversations"][:300]}, ensure_ascii=False) + "\n")
        for e in run.source_errors:
            f.write(json.dumps({"line": None, "id": None, "stage": "read", "reason": e}) + "\n")


def write_space(run: BuildRun, space) -> str:
    """The fitted UMAP + clusterer (``artifacts/``, for reuse) and the plot of the fit sample with the umap
    variants' rows ringed; returns the plot's title."""
    import joblib

    cfg = run.cfg
    artifacts = run.out / "artifacts"
    artifacts.mkdir(exist_ok=True)
    joblib.dump({"umap": space.umap, "clusterer": space.clusterer, "k": space.k, "method": space.method},
                artifacts / "umap_clusters.joblib")
    sampled_umap = {i for v in cfg.variants if v.kind == "umap" for i in _variant_ids(run.out / v.name)}
    title = (f"UMAP of {TEXT_LABELS[cfg.embed.text]} ({model_label(cfg.embed.model)})\n"
             f"{len(space.sample_ids)} fit rows, {space.method} k={space.k}")
    plot_umap(space, sampled_umap, run.out / "umap.png", title=title)
    return title


def rejection_counts(rows: EmbeddedRows, embedded: int) -> dict[str, int]:
    """The manifest's ``counts``: rows read, rejected per step and in all, and embedded (kept)."""
    by_step = Counter()
    for r, c in rows.reasons.items():
        by_step[r.split(":")[0]] += c
    return {"read": rows.n_read, **{f"rejected_{st}": by_step.get(st, 0)
                                    for st in ("validate", "filter", "image", "translate", "dedupe")},
            "rejected_total": sum(rows.reasons.values()), "embedded": embedded}


def _variant_ids(vdir: Path) -> list[str]:
    import pyarrow.dataset as pads

    return pads.dataset(vdir, format="parquet").to_table(columns=["id"])["id"].to_pylist()

