"""``vlm-sweep data build``: ShareGPT4V → validated, filtered, translated, embedded, UMAP-clustered, sampled.

A Ray Data pipeline (local Ray by default, any cluster through ``RAY_ADDRESS``; on a multi-node cluster the
output folder must be shared storage):

    1  source shards ─► validate ─► image-prefix filter (─► image check)      read tasks, ½ CPU each
       ─► translate (actor pool) ─► embed the human turns (actor pool)        _work/rows-<key>/
    2  UMAP + clustering fitted on a bounded sample, in one task              artifacts/
    3  transform + assign every row (fixed batches, order kept) ─► sample variants ─► write

Rows rejected at any step flow on with their reason (later steps skip them), so one pass yields both the
kept rows and ``rejected.jsonl``. Actor pools are sized so that read tasks keep a CPU share: on 2 cores a
pool that took every CPU stalled the read for ever.

Each intermediate is keyed by a hash of everything that produced it and reused by a rerun, which then says
so. Outputs are replaced atomically, never appended to, so reruns never duplicate rows. Every dropped row is
in ``rejected.jsonl`` with its line, id, stage and reason, and counted in ``manifest.json``.

    vlm-sweep data sample-corpus --out corpus
    vlm-sweep data build --source corpus/sharegpt4v_sample.jsonl --images corpus/images --out data \
        --variants '[{name: 10kRandom, kind: random, size: 300}, {name: 20kUmap, kind: umap, size: 400}]'
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import shutil
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .config import BuildConfig
from .records import (
    IMAGE_MARKER,
    Shard,
    SourceError,
    _is_json_list,
    file_sha256,
    json_list_to_jsonl,
    plan_shards,
    read_shard,
    rows_to_batch,
)

log = logging.getLogger(__name__)
DONE = "_DONE"


def _key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------- stage UDFs
def read_shards_batch(batch: dict[str, Any]) -> dict[str, list]:
    """``map_batches`` over shard descriptors → validated rows (rejections included, with a reason)."""
    rows = []
    for path, start, end, first in zip(batch["path"], batch["start"], batch["end"], batch["first_line"]):
        rows.extend(read_shard(Shard(str(path), int(start), int(end), int(first))))
    return rows_to_batch(rows)


class FilterBatch:
    """Image-prefix filter and, optionally, an image check; failing rows get a reason (never dropped here)."""

    def __init__(self, prefix: str, check_images: bool, image_root: str):
        self.prefix, self.check, self.root = prefix, check_images, Path(image_root)

    def _image_problem(self, rel: str) -> str | None:
        from vlm_core.images import image_problem

        return image_problem(self.root / rel)  # decoded in full, as training will: truncated files fail here

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        reasons, stages = list(batch["reason"]), list(batch["stage"])
        for i, image in enumerate(batch["image"]):
            if reasons[i]:
                continue
            if self.prefix and not str(image).startswith(self.prefix):
                reasons[i], stages[i] = f"image path not under {self.prefix!r}", "filter"
            elif self.check and (problem := self._image_problem(str(image))):
                reasons[i], stages[i] = problem, "image"
        batch = dict(batch)
        batch["reason"], batch["stage"] = reasons, stages
        return batch


def filter_batch(batch: dict[str, Any], prefix: str, check_images: bool, image_root: str) -> dict[str, Any]:
    """Task form of ``FilterBatch`` (fuses with the read task: no actor holding a CPU)."""
    return FilterBatch(prefix, check_images, image_root)(batch)


class TranslateStage:
    """Wraps ``translate.TranslateBatch``: failed translations become rejections with their reason."""

    def __init__(self, cfg_dict: dict, cache_dir: str):
        from .translate import TranslateBatch

        self.inner = TranslateBatch(cfg_dict, cache_dir)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        english = list(batch["conversations"])
        reasons, stages = list(batch["reason"]), list(batch["stage"])
        todo = [i for i, r in enumerate(reasons) if not r]  # rows rejected upstream pass through untouched
        conversations = list(english)
        if todo:
            out = self.inner({"conversations": [english[i] for i in todo]})
            for j, i in enumerate(todo):
                if out["translation_ok"][j]:
                    conversations[i] = out["conversations"][j]
                else:
                    reasons[i], stages[i] = f"translation failed: {out['translation_error'][j]}", "translate"
        result = dict(batch)
        result["conversations"], result["conversations_en"] = conversations, english
        result["reason"], result["stage"] = reasons, stages
        return result


# ------------------------------------------------------------------------------------------------ helpers
def _check_output(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    probe = out / ".write-probe"
    try:
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise SourceError(f"output folder {out} is not writable ({e}); choose another --out") from e


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

    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    # half a CPU: the stage's actors keep theirs, and a write needing a whole one would wait forever on 2 cores
    ds.write_parquet(str(tmp.resolve()), filename_provider=_part_names(), ray_remote_args={"num_cpus": 0.5},
                     mode=ray.data.SaveMode.OVERWRITE)  # a fresh temp folder: nothing to overwrite but our own
    if target.exists():
        shutil.rmtree(target)
    os.replace(tmp, target)


def _reason_counts(path: Path) -> tuple[int, Counter]:
    import pyarrow.compute as pc
    import pyarrow.dataset as pads

    table = pads.dataset(path, format="parquet").to_table(columns=["reason", "stage"])
    total = table.num_rows
    rejected = table.filter(pc.not_equal(table["reason"], ""))
    counts = Counter(f"{s}: {reason_group(r)}" for r, s in zip(rejected["reason"].to_pylist(),
                                                                rejected["stage"].to_pylist()))
    return total, counts


def reason_group(reason: str) -> str:
    """A reason without its row-specific details (paths, positions, numbers), for counting by kind."""
    head = re.split(r" \(|: /", reason)[0]
    return re.sub(r"\d+(\.\d+)?", "N", head)


def _rejected_rows(path: Path) -> list[dict]:
    import pyarrow.compute as pc
    import pyarrow.dataset as pads

    d = pads.dataset(path, format="parquet")
    cols = ["line", "id", "stage", "reason", "image", "conversations"]
    return d.to_table(columns=cols, filter=pc.field("reason") != "").to_pylist()


def _duplicate_rows(dataset) -> list[dict]:
    """Rows (otherwise kept) whose id an earlier line already has: stage ``dedupe``, reason naming that line."""
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


def _fit_sample_ids(ids: list[str], n: int, seed: int) -> set[str]:
    """A deterministic, order-independent sample: the ``n`` ids with the smallest seeded hash."""
    if len(ids) <= n:
        return set(ids)
    keyed = sorted(ids, key=lambda i: hashlib.sha256(f"{seed}:{i}".encode()).digest())
    return set(keyed[:n])


@dataclass
class ActorPlan:
    """Ray resources of each stage, sized so that the read tasks always keep a share of the CPUs."""

    read_cpus: float
    translate_actors: int
    translate_cpus: float
    translate_gpus: float
    embed_actors: int
    embed_cpus: float
    embed_gpus: float


def plan_actors(cfg: BuildConfig, resources: dict[str, float]) -> ActorPlan:
    """On GPUs: one embedding actor per GPU (sharing it with a seq2seq translator). On CPUs: reads get 0.5 CPU,
    a translator 0.5 CPU (a dictionary) or one CPU (a model), and embedding actors the rest, at least one."""
    gpus, cpus = int(resources.get("gpu", 0)), float(resources.get("cpu", 1))
    model_translator = cfg.translate.name == "seq2seq"
    uses_translator = cfg.translate.name != "none"
    if gpus:
        share = 0.5 if model_translator else 1.0
        return ActorPlan(0.5, gpus if uses_translator else 0, 0.5, share if model_translator else 0.0,
                         cfg.embed.actors or gpus, 1.0, share)
    t_cpus = (1.0 if model_translator and cpus >= 4 else 0.5) if uses_translator else 0.0
    left = max(1.0, cpus - 0.5 - t_cpus)
    n = cfg.embed.actors or max(1, int(left))
    return ActorPlan(0.5, 1 if uses_translator else 0, t_cpus, 0.0, n, left / n, 0.0)


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

    tmp = path.with_name(f".{path.name}.tmp")
    try:
        pq.write_table(table, tmp)
    except BaseException:  # disk full, killed writer: the previous file (if any) stays, no half file is left
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)


# -------------------------------------------------------------------------------------------------- build
def build(cfg: BuildConfig) -> dict[str, Any]:
    """Run the pipeline; returns the manifest (also written to ``OUT/manifest.json``)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.dataset as pads
    import ray
    from ray.data.expressions import col

    from vlm_core.data import is_validation
    from vlm_core.ray_env import init_ray

    from .embed import EmbedBatch, resolve_model
    from .reduce import AssignBatch, fit_space
    from .sampling import cluster_counts, sample_per_cluster, sample_random
    from .translate import build_translator

    t_start = time.perf_counter()
    out = Path(cfg.out)
    source = Path(cfg.source)
    if not source.is_file():
        raise SourceError(f"source file {source} does not exist; pass --source with a ShareGPT4V .json or .jsonl")
    if not Path(cfg.images).is_dir():
        raise SourceError(f"image root {cfg.images} is not a folder; pass --images with the folder that holds "
                          f"the records' image paths")
    _check_output(out)
    work = out / "_work"
    work.mkdir(exist_ok=True)
    timings: dict[str, float] = {}
    reused: list[str] = []

    src_hash = file_sha256(source)
    source_errors: list[str] = []
    if _is_json_list(source):
        jsonl = work / f"source-{src_hash[:16]}.jsonl"
        if not jsonl.is_file():
            n, err = json_list_to_jsonl(source, jsonl)
            (work / f"{jsonl.name}.error").write_text(err or "")
        err_file = work / f"{jsonl.name}.error"
        if err_file.is_file() and err_file.read_text():
            source_errors.append(err_file.read_text())
            log.error("%s", source_errors[-1])
    else:
        jsonl = source
    shards = plan_shards(jsonl, cfg.shard_lines)
    resources = init_ray()

    # ---- A+B: one streaming pass: read + validate + filter (tasks) → translate → embed (actor pools) → write
    t0 = time.perf_counter()
    translator_id = build_translator(cfg.translate).id if cfg.translate.name != "none" else "none"
    embed_model = resolve_model(cfg.embed.model)
    key = _key(src_hash, cfg.image_prefix, cfg.check_images, str(Path(cfg.images).resolve()), translator_id,
               embed_model, "rows-v1")
    rows_dir = work / f"rows-{key}"
    plan = plan_actors(cfg, resources)
    if _done(rows_dir):
        reused.append("rows")
        log.info("reusing validated, translated and embedded rows from %s", rows_dir)
    else:
        ds = ray.data.from_items([{"path": s.path, "start": s.start, "end": s.end, "first_line": s.first_line}
                                  for s in shards], override_num_blocks=max(1, len(shards)))
        ds = ds.map_batches(read_shards_batch, batch_size=1, num_cpus=plan.read_cpus)
        ds = ds.map_batches(filter_batch, fn_args=(cfg.image_prefix, cfg.check_images, cfg.images),
                            num_cpus=plan.read_cpus)
        if plan.translate_actors:
            ds = ds.map_batches(TranslateStage, fn_constructor_args=(
                cfg.translate.to_dict(), str((work / "translation_cache").resolve())),
                batch_size=cfg.translate.batch_size, compute=ray.data.ActorPoolStrategy(size=plan.translate_actors),
                num_cpus=plan.translate_cpus, num_gpus=plan.translate_gpus)
        threads = None if plan.embed_gpus else max(1, math.ceil(plan.embed_cpus))  # 1.5 CPUs → 2 threads
        ds = ds.map_batches(EmbedBatch, fn_constructor_args=(embed_model, cfg.embed.batch_size, threads),
                            batch_size=cfg.embed.batch_size,
                            compute=ray.data.ActorPoolStrategy(size=plan.embed_actors),
                            num_cpus=plan.embed_cpus, num_gpus=plan.embed_gpus)
        _ray_write(ds, rows_dir)
        _write_done(rows_dir, {"key": key})
    n_read, reasons = _reason_counts(rows_dir)
    timings["read_validate_translate_embed_s"] = time.perf_counter() - t0
    embedded = rows_dir

    # ---- C: fit UMAP + clusters on a bounded sample
    t0 = time.perf_counter()
    emb_ds = pads.dataset(embedded, format="parquet")
    duplicates = _duplicate_rows(emb_ds)  # later copies of an id: quarantined, the first copy is kept
    if duplicates:
        reasons.update(f"dedupe: {reason_group(d['reason'])}" for d in duplicates)
        log.warning("%d rows repeat an id already seen (e.g. %s at line %s); quarantined as 'dedupe'",
                    len(duplicates), duplicates[0]["id"], duplicates[0]["line"])
    dup_lines = [d["line"] for d in duplicates]
    ok_filter = (pc.field("reason") == "") & ~pc.field("line").isin(dup_lines)
    ids = emb_ds.to_table(columns=["id"], filter=ok_filter)["id"].to_pylist()
    fit_ids = _fit_sample_ids(ids, cfg.umap.fit_sample, cfg.seed)
    fit_table = emb_ds.to_table(columns=["id", "embedding"], filter=ok_filter & pc.field("id").isin(list(fit_ids)))
    fit_table = fit_table.sort_by("id")  # the fit must not depend on how the rows were laid out in files
    fit_emb = np.stack(fit_table["embedding"].to_numpy(zero_copy_only=False)).astype(np.float32)
    space_ref = ray.remote(fit_space).options(num_cpus=1).remote(
        fit_emb, cfg.umap, cfg.cluster, cfg.seed, fit_table["id"].to_pylist())
    space = ray.get(space_ref)
    timings["fit_s"] = time.perf_counter() - t0

    # ---- D: assign every row, sample, write
    t0 = time.perf_counter()
    assigned = (ray.data.read_parquet(str(embedded.resolve()), num_cpus=0.5)
                .select_columns(["id", "line", "embedding", "reason"])
                .filter(expr=col("reason") == "", num_cpus=0.5)
                .map_batches(AssignBatch, fn_constructor_args=([space_ref],), batch_size=cfg.umap.transform_batch,
                             compute=ray.data.ActorPoolStrategy(size=1), num_cpus=1)  # one: order-stable
                .select_columns(["id", "line", "cluster"])
                .to_pandas())
    assigned = assigned[~assigned["line"].isin(dup_lines)]
    timings["assign_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    all_ids, all_clusters = assigned["id"].tolist(), assigned["cluster"].astype(int).tolist()
    cluster_of = dict(zip(all_ids, all_clusters))
    variants_info: dict[str, Any] = {}
    for v in cfg.variants:
        if v.kind == "random":
            chosen, per_cluster = sample_random(all_ids, v.size, cfg.seed, v.name), None
        else:
            chosen, per_cluster = sample_per_cluster(all_ids, all_clusters, v.size, cfg.seed, v.name)
        columns = ["id", "image", "conversations", "n_turns", "line"] + \
            (["conversations_en"] if cfg.translate.name != "none" else [])
        table = emb_ds.to_table(columns=columns, filter=ok_filter & pc.field("id").isin(chosen))
        table = table.append_column("cluster", pa.array([cluster_of[i] for i in table["id"].to_pylist()],
                                                        pa.int64()))
        table = table.sort_by([("id", "ascending"), ("line", "ascending")])
        is_val = pa.array([is_validation(i, cfg.val_fraction, cfg.seed) for i in table["id"].to_pylist()])
        vdir = out / v.name
        if vdir.exists():
            shutil.rmtree(vdir)  # replaced whole: a rerun never leaves stale or duplicated files
        vdir.mkdir(parents=True)
        train_t, val_t = table.filter(pc.invert(is_val)), table.filter(is_val)
        _write_parquet_atomic(train_t, vdir / "train-00000.parquet")
        _write_parquet_atomic(val_t, vdir / "val-00000.parquet")
        variants_info[v.name] = {"kind": v.kind, "size": v.size, "train": train_t.num_rows, "val": val_t.num_rows,
                                 "per_cluster": per_cluster or cluster_counts(table["cluster"].to_pylist())}
    timings["sample_write_s"] = time.perf_counter() - t0

    # ---- rejected rows, artifacts, plot, manifest
    rejected = _rejected_rows(rows_dir) + duplicates
    rejected.sort(key=lambda r: (r["line"], r["stage"]))
    with (out / ".rejected.jsonl.tmp").open("w", encoding="utf-8") as f:
        for r in rejected:
            f.write(json.dumps({"line": r["line"], "id": r["id"], "stage": r["stage"], "reason": r["reason"],
                                "image": r["image"], "raw": r["conversations"][:300]}, ensure_ascii=False) + "\n")
        for e in source_errors:
            f.write(json.dumps({"line": None, "id": None, "stage": "read", "reason": e}) + "\n")
    os.replace(out / ".rejected.jsonl.tmp", out / "rejected.jsonl")
    artifacts = out / "artifacts"
    artifacts.mkdir(exist_ok=True)
    import joblib

    joblib.dump({"umap": space.umap, "clusterer": space.clusterer, "k": space.k, "method": space.method},
                artifacts / "umap_clusters.joblib")
    from .plot import plot_umap

    sampled_umap = {i for v in cfg.variants if v.kind == "umap"
                    for i in _variant_ids(out / v.name)}
    plot_umap(space, sampled_umap, out / "umap.png")

    by_stage = Counter()
    for r, c in reasons.items():
        by_stage[r.split(":")[0]] += c
    manifest = {
        "source": {"path": str(source.resolve()), "sha256": src_hash, "format": "json" if jsonl != source else "jsonl",
                   "read_errors": source_errors},
        "counts": {"read": n_read, **{f"rejected_{st}": by_stage.get(st, 0)
                                      for st in ("validate", "filter", "image", "translate", "dedupe")},
                   "rejected_total": sum(reasons.values()), "embedded": len(all_ids)},
        "rejected_by_reason": dict(sorted(reasons.items(), key=lambda kv: -kv[1])),
        "variants": variants_info,
        "clusters": {"method": space.method, "k": space.k, "silhouette_by_k": space.silhouette,
                     "per_cluster_all": cluster_counts(all_clusters), "fit_sample": len(fit_ids)},
        "embedding": {"model": embed_model, "dim": int(fit_emb.shape[1]), "text": "human turns (English), "
                      f"{IMAGE_MARKER} removed"},
        "translation": {"translator": cfg.translate.name, "id": translator_id},
        "params": cfg.to_dict(), "seed": cfg.seed, "versions": _versions(),
        "ray_plan": plan.__dict__, "reused_stages": reused, "timings_s": {k: round(v, 2) for k, v in timings.items()},
        "wall_s": round(time.perf_counter() - t_start, 2), "ray_resources": resources,
    }
    tmp = out / ".manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=2, default=str))
    os.replace(tmp, out / "manifest.json")
    if reused:
        print(f"reused finished stages: {', '.join(reused)} (delete {work} to recompute)")
    return manifest


def _variant_ids(vdir: Path) -> list[str]:
    import pyarrow.dataset as pads

    return pads.dataset(vdir, format="parquet").to_table(columns=["id"])["id"].to_pylist()

