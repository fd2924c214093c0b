"""The whole preparation through Ray Data on the sample corpus: outputs, determinism, rerun, rejections."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from data_pipeline.build import TooFewRows, build
from data_pipeline.config import BuildConfig, ClusterConfig, UmapConfig, VariantSpec
from data_pipeline.repetition import REPEAT_TOP10_SHARE

VARIANTS = [VariantSpec("10kRandom", "random", 30), VariantSpec("20kUmap", "umap", 40)]


@pytest.fixture(scope="module")
def source(corpus, tmp_path_factory):
    """The sample corpus plus a few broken lines, so that every rejection path shows up."""
    src = tmp_path_factory.mktemp("src") / "sharegpt4v.jsonl"
    lines = (corpus / "sharegpt4v_sample.jsonl").read_text().splitlines()
    bad = ['{"id": "truncated", "image": "coco/x.jpg", "conv',
           json.dumps({"id": "nomarker", "image": "coco/train2017/1.jpg",
                       "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]}),
           json.dumps({"image": "coco/train2017/1.jpg", "conversations": []})]
    duplicate = lines[1]  # the same record again (same id), as when two shards of a download overlap
    src.write_text("\n".join(lines[:5] + bad + lines[5:] + [duplicate]) + "\n")
    return src


def _cfg(source, corpus, out, **kw) -> BuildConfig:
    return BuildConfig(source=str(source), images=str(corpus / "images"), out=str(out), variants=VARIANTS,
                       umap=UmapConfig(n_components=5, fit_sample=50), cluster=ClusterConfig(k_range=[3, 4, 5]),
                       val_fraction=0.2, shard_lines=16, **kw)


@pytest.fixture(scope="module")
def built(ray_local, source, corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("data")
    return out, build(_cfg(source, corpus, out))


def test_build_writes_variants_manifest_rejections_and_plot(built, source):
    out, manifest = built
    n_lines = len(source.read_text().splitlines())
    counts = manifest["counts"]
    assert counts["read"] == n_lines
    assert counts["rejected_validate"] == 3 and counts["rejected_filter"] > 0
    assert counts["embedded"] == n_lines - counts["rejected_total"]
    rejected = [json.loads(line) for line in (out / "rejected.jsonl").read_text().splitlines()]
    assert len(rejected) == counts["rejected_total"]
    by_line = {r["line"]: r for r in rejected}
    assert "malformed JSON" in by_line[6]["reason"] and by_line[7]["reason"] == "no <image> marker"
    assert by_line[7]["id"] == "nomarker" and "id" in by_line[8]["reason"]
    assert all(r["image"].startswith("sam/") for r in rejected if r["stage"] == "filter")
    dup_id = json.loads(source.read_text().splitlines()[1])["id"]
    assert counts["rejected_dedupe"] == 1 and by_line[n_lines]["stage"] == "dedupe"
    assert by_line[n_lines]["reason"] == f"duplicate id {dup_id!r} (first seen at line 2)"
    for v in VARIANTS:
        train = pq.read_table(out / v.name / "train-00000.parquet")
        val = pq.read_table(out / v.name / "val-00000.parquet")
        info = manifest["variants"][v.name]
        assert train.num_rows + info["val_own"] == info["sampled"] == v.size  # exact size
        ids = train["id"].to_pylist() + val["id"].to_pylist()
        assert not set(train["id"].to_pylist()) & set(val["id"].to_pylist())
        assert all(i.startswith(("easyvqa", "photo")) for i in ids)
        assert all(json.loads(c)[0]["value"].startswith("<image>\n") for c in train["conversations"].to_pylist())
        assert (info["train"], info["val"]) == (train.num_rows, val.num_rows)
    per = manifest["variants"]["20kUmap"]["per_cluster"]
    assert sum(per.values()) == 40 and manifest["clusters"]["k"] == len(manifest["clusters"]["per_cluster_all"])
    assert max(per.values()) - min(per.values()) <= max(1, 40 // len(per)) or min(
        manifest["clusters"]["per_cluster_all"].values()) < 40 // len(per)  # equal, unless a cluster ran out
    assert manifest["embedding"]["dim"] == 384 and manifest["source"]["sha256"]
    # real easy-vqa questions, three a record (this small corpus: 81 % distinct, top-10 share 33 %): no warning
    emb = manifest["embedding"]
    assert emb["text"] == "human" and emb["packaged"] and emb["revision"] is None and emb["folder"]
    assert emb["distinct_fraction"] > 0.75 and emb["top10_share"] < REPEAT_TOP10_SHARE and not emb["repeated"]
    assert sum(t["count"] for t in emb["top_texts"]) <= counts["embedded"] and len(emb["top_texts"]) == 10
    assert [w for w in manifest["warnings"] if "repeat an id" in w] and not [
        w for w in manifest["warnings"] if "--embed.text" in w]
    assert manifest["plot"]["title"].startswith("UMAP of human turns (all-MiniLM-L6-v2)")
    assert (out / "umap.png").stat().st_size > 10_000 and (out / "artifacts" / "umap_clusters.joblib").is_file()


def test_every_variant_is_scored_on_the_same_heldout_rows(built):
    from vlm_core.data.dataset import is_validation

    out, manifest = built
    vals = {v.name: pq.read_table(out / v.name / "val-00000.parquet") for v in VARIANTS}
    train_ids = {v.name: set(pq.read_table(out / v.name / "train-00000.parquet")["id"].to_pylist())
                 for v in VARIANTS}
    first = vals[VARIANTS[0].name]
    assert first.num_rows > 0 and all(t.equals(first) for t in vals.values())  # the same rows, row for row
    heldout = first["id"].to_pylist()
    assert len(set(heldout)) == len(heldout)  # each once
    assert all(is_validation(i, 0.2, 0) for i in heldout)  # _cfg's val_fraction, the default seed
    assert not any(set(heldout) & ids for ids in train_ids.values())  # in no variant's train
    # it is the union of what each variant drew into val: each variant's own share is in it ...
    own = sum(manifest["variants"][v.name]["val_own"] for v in VARIANTS)
    assert max(manifest["variants"][v.name]["val_own"] for v in VARIANTS) <= len(heldout) <= own
    # ... and more than either variant's own share here (the two samples overlap only in part)
    assert len(heldout) > min(manifest["variants"][v.name]["val_own"] for v in VARIANTS)


def test_rerun_reuses_stages_and_gives_identical_outputs(built, source, corpus):
    out, first = built
    before = {v.name: pq.read_table(out / v.name / "train-00000.parquet") for v in VARIANTS}
    again = build(_cfg(source, corpus, out))
    assert again["reused_stages"] == ["rows"]
    assert again["clusters"] == first["clusters"], (again["clusters"], first["clusters"])
    for v in VARIANTS:
        assert pq.read_table(out / v.name / "train-00000.parquet").equals(before[v.name])  # same rows, once
        assert sorted(p.name for p in (out / v.name).iterdir()) == ["train-00000.parquet", "val-00000.parquet"]
    assert again["counts"] == first["counts"]


def test_same_seed_in_a_fresh_folder_gives_identical_parquet(built, source, corpus, tmp_path):
    out, _ = built
    build(_cfg(source, corpus, tmp_path))
    for v in VARIANTS:
        for split in ("train", "val"):
            a = pq.read_table(out / v.name / f"{split}-00000.parquet")
            b = pq.read_table(tmp_path / v.name / f"{split}-00000.parquet")
            assert a.equals(b), (v.name, split)


def test_local_ray_dashboard_serves_on_loopback_only(ray_local):
    """The dashboard (the HTTP API that accepts job submissions and shows logs) of a local cluster listens on
    127.0.0.1 only. Ray itself maps a loopback ``_node_ip_address`` to the node's address for GCS and raylet."""
    import psutil
    import ray

    url = ray.worker.get_dashboard_url()
    assert url.startswith("127.0.0.1:")
    port = int(url.rsplit(":", 1)[1])
    listening = {c.laddr.ip for c in psutil.net_connections("inet") if c.status == "LISTEN" and c.laddr.port == port}
    assert listening == {"127.0.0.1"}


def test_variant_larger_than_the_data_stops_before_fitting(ray_local, source, corpus, tmp_path):
    cfg = _cfg(source, corpus, tmp_path)
    cfg.variants = [VariantSpec("huge", "random", 10_000)]
    with pytest.raises(TooFewRows, match=r"rows passed the checks and variant 'huge' asks for 10000 \(rejected: "):
        build(cfg)
    assert (tmp_path / "rejected.jsonl").is_file() and not (tmp_path / "artifacts").exists()  # nothing was fitted


def test_an_images_root_one_folder_too_high_stops_before_fitting_naming_the_right_one(ray_local, corpus, tmp_path):
    # the easy slip: --images corpus instead of corpus/images; every row's image is then "not found"
    cfg = _cfg(corpus / "sharegpt4v_sample.jsonl", corpus, tmp_path / "out")
    cfg.images = str(corpus)
    with pytest.raises(TooFewRows) as err:
        build(cfg)
    rows = [json.loads(line) for line in (corpus / "sharegpt4v_sample.jsonl").read_text().splitlines()]
    coco = sum(r["image"].startswith("coco/") for r in rows)  # the rest are not COCO images: filtered anyway
    message = str(err.value)
    assert "\n" not in message and message.startswith(
        f"data build: 0 of {len(rows)} rows passed the checks and variant '20kUmap' asks for 40 (rejected: {coco} "
        f"image: image not found; {len(rows) - coco} filter: image path not under 'coco/'")
    assert f"the images are under {corpus / 'images'}, not {corpus}: pass --images {corpus / 'images'}" in message
    rejected = [json.loads(line) for line in (tmp_path / "out" / "rejected.jsonl").read_text().splitlines()]
    assert len(rejected) == len(rows) and sum(r["stage"] == "image" for r in rejected) == coco > len(rows) / 2
    assert not (tmp_path / "out" / "artifacts").exists() and not (tmp_path / "out" / "20kUmap").exists()


def test_translation_through_ray_marks_failures_and_keeps_english(ray_local, corpus, tmp_path):
    """Dictionary translation in the actor pool: translated rows keep their English, failures are rejected."""
    from data_pipeline.translate import TranslatorConfig
    from tests.test_translate import FIXTURE_ENTRIES, write_dictd

    words = {"is": "adalah", "there": "ada", "a": "sebuah", "shape": "bentuk", "no": "tidak", "not": "tidak",
             "does": "apakah", "contain": "berisi", "color": "warna", "circle": "lingkaran", "triangle": "segitiga",
             "rectangle": "persegi panjang", "blue": "biru", "green": "hijau", "gray": "abu-abu", "black": "hitam",
             "brown": "cokelat", "yellow": "kuning", "teal": "hijau kebiruan", "present": "hadir", "of": "dari"}
    prefix = write_dictd(tmp_path, FIXTURE_ENTRIES + [(w, f"<x>\n{t}\ngloss") for w, t in words.items()])
    cfg = BuildConfig(source=str(corpus / "sharegpt4v_sample.jsonl"), images=str(corpus / "images"),
                      out=str(tmp_path / "out"), variants=[VariantSpec("5Random", "random", 5)],
                      translate=TranslatorConfig(name="dictionary", dictionary=prefix, min_coverage=0.6),
                      umap=UmapConfig(n_components=3, fit_sample=30), cluster=ClusterConfig(k=2), shard_lines=32)
    manifest = build(cfg)
    assert manifest["counts"]["rejected_translate"] > 0 and manifest["counts"]["embedded"] >= 5
    rejected = [json.loads(line) for line in (tmp_path / "out" / "rejected.jsonl").read_text().splitlines()]
    failed = [r for r in rejected if r["stage"] == "translate"]
    assert len(failed) == manifest["counts"]["rejected_translate"]
    assert all(r["reason"].startswith("translation failed: ") and "coverage" in r["reason"] for r in failed)
    table = pq.read_table(tmp_path / "out" / "5Random" / "train-00000.parquet")
    for conv, en in zip(table["conversations"].to_pylist(), table["conversations_en"].to_pylist()):
        conv, en = json.loads(conv), json.loads(en)
        assert conv[0]["value"].startswith("<image>\n") and conv != en
    assert manifest["translation"]["translator"] == "dictionary"
