"""Data pipeline stages as pure functions (no Ray): validation, sharding, filtering, sampling, clustering."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_pipeline.config import ClusterConfig, UmapConfig
from data_pipeline.records import json_list_to_jsonl, plan_shards, read_shard, validate_record
from data_pipeline.reduce import assign, assign_counted, assign_rows, fit_space
from data_pipeline.row_steps import FilterBatch
from data_pipeline.sampling import SamplingError, allocate, sample_per_cluster, sample_random

GOOD = {"id": "r1", "image": "coco/train2017/1.jpg",
        "conversations": [{"from": "human", "value": "What is this?\n<image>"}, {"from": "gpt", "value": "A cat."},
                          {"from": "human", "value": "Colour?"}, {"from": "gpt", "value": "Grey."}]}


def test_valid_record_is_normalised_with_image_first_and_turns_kept():
    fields, reason = validate_record(GOOD)
    assert reason is None
    turns = json.loads(fields["conversations"])
    assert turns[0]["value"] == "<image>\nWhat is this?" and len(turns) == 4 and fields["n_turns"] == 4
    assert fields["human_text"] == "What is this?\nColour?"
    assert fields["assistant_text"] == "A cat.\nGrey."  # flat strings: what --embed.text chooses from


@pytest.mark.parametrize("mutate, reason", [
    (lambda r: r.pop("id"), "id"),
    (lambda r: r.update(id="  "), "id"),
    (lambda r: r.pop("image"), "image"),
    (lambda r: r.update(image=7), "image"),
    (lambda r: r.pop("conversations"), "conversations"),
    (lambda r: r.update(conversations="hi"), "conversations"),
    (lambda r: r["conversations"][0].update(value="What is this?"), "no <image>"),
    (lambda r: r["conversations"][2].update(value="<image> again"), "2 <image> markers"),
    (lambda r: r["conversations"][0].update(value="x"), "no <image>"),
    (lambda r: r["conversations"].reverse(), "out of order"),
    (lambda r: r["conversations"][1].update(value="   "), "empty"),
    (lambda r: r["conversations"].pop(), "end with a gpt turn"),
    (lambda r: r["conversations"][0].update(value="<image>"), "nothing but <image>"),
])
def test_bad_records_get_a_reason(mutate, reason):
    rec = json.loads(json.dumps(GOOD))
    mutate(rec)
    fields, why = validate_record(rec)
    assert fields is None and reason in why


def test_marker_only_in_a_later_human_turn_is_rejected():
    rec = json.loads(json.dumps(GOOD))
    rec["conversations"][0]["value"] = "What is this?"
    rec["conversations"][2]["value"] = "<image>\nColour?"
    assert validate_record(rec) == (None, "<image> marker is not in the first human turn")


def test_shards_cover_every_line_once_with_line_numbers(tmp_path):
    f = tmp_path / "src.jsonl"
    lines = [json.dumps({**GOOD, "id": f"r{i}"}) for i in range(10)]
    lines[3] = "{broken"
    f.write_bytes(("\n".join(lines) + "\n").encode() + b'{"id": "\xff\xfe"}\n')
    shards = plan_shards(f, 4)
    assert [s.first_line for s in shards] == [1, 5, 9]
    rows = [r for s in shards for r in read_shard(s)]
    assert [r["line"] for r in rows] == list(range(1, 12))
    bad = {r["line"]: r["reason"] for r in rows if r["reason"]}
    assert set(bad) == {4, 11} and "malformed JSON" in bad[4] and "not UTF-8" in bad[11]
    assert [r["id"] for r in rows if not r["reason"]] == [f"r{i}" for i in range(10) if i != 3]


def test_json_list_is_streamed_and_a_truncated_one_keeps_what_came_before(tmp_path):
    src = tmp_path / "a.json"
    src.write_text(json.dumps([{**GOOD, "id": f"r{i}"} for i in range(5)]))
    n, err = json_list_to_jsonl(src, tmp_path / "a.jsonl")
    assert n == 5 and err is None and len((tmp_path / "a.jsonl").read_text().splitlines()) == 5
    src.write_text(src.read_text()[:-40])  # cut inside the last record
    n, err = json_list_to_jsonl(src, tmp_path / "b.jsonl")
    assert n == 4 and "truncated after record 4" in err


def test_filter_marks_non_coco_missing_empty_and_corrupt_images(tmp_path):
    from PIL import Image

    (tmp_path / "coco").mkdir()
    Image.new("RGB", (8, 8), "red").save(tmp_path / "coco" / "ok.jpg")
    (tmp_path / "coco" / "empty.jpg").write_bytes(b"")
    (tmp_path / "coco" / "bad.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    images = ["coco/ok.jpg", "sam/x.jpg", "coco/missing.jpg", "coco/empty.jpg", "coco/bad.jpg"]
    batch = {"image": images, "reason": [""] * 5, "stage": [""] * 5}
    out = FilterBatch("coco/", True, str(tmp_path))(batch)
    assert out["reason"][0] == "" and "not under 'coco/'" in out["reason"][1]
    assert "not found" in out["reason"][2] and "0 bytes" in out["reason"][3]
    assert "not a readable image" in out["reason"][4]
    assert out["stage"] == ["", "filter", "image", "image", "image"]
    assert FilterBatch("coco/", False, str(tmp_path))(batch)["reason"][2] == ""  # no check: path only


def test_allocation_is_exact_balanced_and_redistributes():
    assert allocate({0: 5, 1: 100, 2: 100}, 60) == {0: 5, 1: 28, 2: 27}
    assert allocate({0: 10, 1: 10}, 20) == {0: 10, 1: 10}
    alloc = allocate({c: 50 + c for c in range(7)}, 100)
    assert sum(alloc.values()) == 100 and max(alloc.values()) - min(alloc.values()) <= 1


def test_sampling_is_exact_seeded_and_refuses_oversize():
    ids = [f"id{i:04d}" for i in range(500)]
    clusters = [0] * 20 + [1] * 200 + [2] * 280
    a, per = sample_per_cluster(ids, clusters, 90, seed=3)
    b, _ = sample_per_cluster(list(reversed(ids)), list(reversed(clusters)), 90, seed=3)
    assert a == b and len(a) == len(set(a)) == 90 and per == {0: 20, 1: 35, 2: 35}
    assert sample_random(ids, 77, 1) == sample_random(list(reversed(ids)), 77, 1) != sample_random(ids, 77, 2)
    assert len(sample_random(ids, 77, 1)) == 77
    with pytest.raises(SamplingError, match="asks for 501 records but only 500"):
        sample_random(ids, 501, 0, "10kRandom")


@pytest.mark.slow  # UMAP's numba kernels compile in every new process
def test_umap_clusters_separate_blobs_and_assignment_matches(tmp_path):
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(3, 32)) * 5
    emb = np.concatenate([c + rng.normal(size=(60, 32)) for c in centers]).astype(np.float32)
    truth = np.repeat([0, 1, 2], 60)
    space = fit_space(emb, UmapConfig(n_components=4, n_neighbors=10), ClusterConfig(k_range=[2, 3, 5]), seed=0,
                      sample_ids=[str(i) for i in range(180)])
    assert space.k == 3 and set(space.silhouette) == {2, 3, 5}
    # every true blob maps to one cluster
    assert all(len(set(space.sample_labels[truth == t].tolist())) == 1 for t in range(3))
    coords, clusters = assign(space, emb[:40])
    assert coords.shape == (40, 4) and (clusters == space.sample_labels[:40]).mean() > 0.9
    # the build's pass over the rows' Parquet: rows with a reason skipped, file order kept, batches of
    # transform_batch rows whatever the files' sizes (3 files of 50 / 7 / 123 rows, batches of 64)
    space.transform_batch = 64
    reasons = ["" if i % 9 else "validate: bad" for i in range(180)]
    table = pa.table({"id": [f"r{i:03d}" for i in range(180)], "line": list(range(180)), "reason": reasons,
                      "embedding": list(emb)})
    for name, (a, b) in {"part-000002.parquet": (57, 180), "part-000000.parquet": (0, 50),
                         "part-000001.parquet": (50, 57)}.items():
        pq.write_table(table.slice(a, b - a), tmp_path / name)
    out = assign_rows(space, str(tmp_path))
    kept = [i for i in range(180) if reasons[i] == ""]
    assert out["line"] == kept and out["id"] == [f"r{i:03d}" for i in kept]
    by_batch = np.concatenate([assign(space, emb[kept][i:i + 64])[1] for i in range(0, len(kept), 64)])
    assert out["cluster"] == by_batch.tolist()
    assert out["placed_by_nearest"] == 0

    # a row UMAP's transform gives no coordinates (umap-learn's NaN for a point without neighbours) is placed on
    # its nearest fit-sample point, counted, and the batch's other rows keep their own coordinates
    lonely = [3, 70, 150]
    real = space.umap
    space.umap = _NoNeighboursFor(real, emb[lonely])
    coords, clusters, placed = assign_counted(space, emb[:180])
    space.umap = real
    assert placed == 3 and np.isfinite(coords).all()
    np.testing.assert_array_equal(coords[lonely], real.embedding_[lonely])
    assert (clusters[lonely] == space.sample_labels[lonely]).all()
    assert (clusters == space.sample_labels).mean() > 0.9
    space.umap = _NoNeighboursFor(real, emb[lonely])
    assert assign_rows(space, str(tmp_path))["placed_by_nearest"] == sum(reasons[i] == "" for i in lonely)
    space.umap = real


class _NoNeighboursFor:
    """A fitted UMAP whose transform answers NaN for the given rows, as umap-learn does for a row it finds no
    neighbours for (``init_graph_transform``); everything else is the real fit's."""

    def __init__(self, fitted, rows: np.ndarray):
        self._fitted, self._rows = fitted, rows

    def __getattr__(self, name):
        return getattr(self._fitted, name)

    def transform(self, x: np.ndarray) -> np.ndarray:
        out = np.array(self._fitted.transform(x))  # a copy: for its own fit data UMAP returns embedding_ itself
        out[(x[:, None, :] == self._rows[None]).all(-1).any(1)] = np.nan
        return out


@pytest.mark.parametrize("cpus", [2, 4, 16])
@pytest.mark.parametrize("translator", ["none", "dictionary", "seq2seq"])
def test_actor_plan_leaves_the_read_tasks_a_cpu_share(cpus, translator):
    """A pool that takes every CPU stalls the read tasks (seen on 2 cores): the plan must fit with reads running."""
    from data_pipeline.build import plan_actors
    from data_pipeline.config import BuildConfig
    from data_pipeline.translate import TranslatorConfig

    cfg = BuildConfig(source="s", images="i", out="o", translate=TranslatorConfig(name=translator, model="m"))
    p = plan_actors(cfg, {"cpu": cpus})
    used = p.read_cpus + p.translate_actors * p.translate_cpus + p.embed_actors * p.embed_cpus
    assert p.read_cpus > 0 and used <= cpus and p.embed_actors >= 1
    assert (p.translate_actors > 0) == (translator != "none")
    g = plan_actors(cfg, {"cpu": cpus, "gpu": 2})
    assert g.embed_actors == 2 and g.embed_gpus + g.translate_gpus <= 1.0
    # a cluster of 1-CPU nodes (tests/test_multinode.py): no request larger than a node, the same CPUs in use
    small = plan_actors(cfg, {"cpu": cpus}, node_cpus=1)
    assert max(small.read_cpus, small.translate_cpus, small.embed_cpus) <= 1 and small.embed_actors >= 1
    assert small.read_cpus + small.translate_actors * small.translate_cpus + \
        small.embed_actors * small.embed_cpus <= cpus


def test_reasons_are_counted_by_kind_not_by_row():
    from data_pipeline.row_steps import reason_group

    assert reason_group("malformed JSON (Expecting value at column 5)") == "malformed JSON"
    assert reason_group("image not found: /data/coco/1.jpg") == reason_group("image not found: /data/coco/2.jpg")
    assert reason_group("translation failed: coverage 0.22 < 0.50 (2/9 words found)") == \
        "translation failed: coverage N < N"
    assert reason_group("no <image> marker") == "no <image> marker"


def _stats(texts: list[str]) -> dict:
    """``repetition_stats`` of ``texts`` through a real Parquet dataset, as ``data build`` computes them."""
    import tempfile

    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.dataset as pads
    import pyarrow.parquet as pq

    from data_pipeline.embed import text_hash
    from data_pipeline.repetition import repetition_stats

    folder = tempfile.mkdtemp()
    n = len(texts)
    pq.write_table(pa.table({"embed_hash": pa.array([text_hash(t) for t in texts] + [0], pa.int64()),
                             "human_text": texts + ["rejected"], "assistant_text": [""] * (n + 1),
                             "reason": [""] * n + ["bad"], "line": list(range(1, n + 2))}),
                   f"{folder}/part.parquet", row_group_size=7)  # several batches: the top-text scan must stop
    return repetition_stats(pads.dataset(folder, format="parquet"), pc.field("reason") == "", "human")


def test_repetition_stats_count_distinct_texts_and_the_top10_share():
    from data_pipeline.repetition import TOP_TEXT_CHARS, repeated_texts, repetition_warning

    prompts = [f"Describe image number {i} in great detail, please, naming every element you can see in it." for i in
               range(12)]
    rows = [prompts[i % 3] for i in range(90)] + [prompts[3 + i % 9] for i in range(10)]  # 3 prompts hold 90 %
    s = _stats(rows)
    assert (s["rows"], s["distinct_texts"], s["distinct_fraction"]) == (100, 12, 0.12)
    assert s["top10_share"] == 0.98 and [t["count"] for t in s["top_texts"][:3]] == [30, 30, 30]
    assert len(s["top_texts"]) == 10 and all(len(t["text"]) <= TOP_TEXT_CHARS for t in s["top_texts"])
    first = s["top_texts"][0]["text"]  # one of the three (ties are ordered by hash), cut to 80 characters
    assert len(first) == TOP_TEXT_CHARS and first.endswith("…") and any(p.startswith(first[:-1]) for p in prompts[:3])
    assert repeated_texts(s)
    w = repetition_warning(s, "human")
    assert "12 distinct texts in 100 rows (12.0%)" in w and "98.0%" in w and "--embed.text assistant" in w
    distinct = _stats([f"question {i}" for i in range(100)])
    assert distinct["distinct_texts"] == 100 and distinct["top10_share"] == 0.1 and not repeated_texts(distinct)
    assert repetition_warning(distinct, "human") is None
    # few rows, all distinct: the 10 most common trivially hold them all, which is no reason to warn
    assert not repeated_texts(_stats([f"q{i}" for i in range(8)]))
    # many templates spread evenly (top-10 share 2 %) are still mostly repeats: < 5 % of the texts are distinct
    spread = _stats([f"template {i % 500}" for i in range(20_000)])
    assert spread["top10_share"] == 0.02 and spread["distinct_fraction"] == 0.025 and repeated_texts(spread)


def test_embed_batch_embeds_the_chosen_text_and_hashes_it():
    from data_pipeline.embed import EmbedBatch, text_hash

    batch = {"human_text": ["What is this?", "Colour?"], "assistant_text": ["A grey cat on a red sofa.", "Blue."],
             "reason": ["", "rejected"]}
    out = {t: EmbedBatch(None, 8, text=t)(batch) for t in ("human", "assistant", "both")}
    expect = {"human": "What is this?", "assistant": "A grey cat on a red sofa.",
              "both": "What is this?\nA grey cat on a red sofa."}
    model = EmbedBatch(None, 8).model
    for t, o in out.items():
        assert o["embed_hash"][0] == text_hash(expect[t]) and o["embed_hash"][1] == 0
        ref = model.encode([expect[t]], normalize_embeddings=True)[0]
        assert float(o["embedding"][0] @ ref) > 0.9999 and not o["embedding"][1].any()
    assert float(out["human"]["embedding"][0] @ out["assistant"]["embedding"][0]) < 0.9
    # a batch without assistant_text (bench/data_build.py's) still embeds the human turns
    assert EmbedBatch(None, 8)({"human_text": ["hi"], "reason": [""]})["embedding"].shape == (1, 384)


def test_an_embedding_does_not_depend_on_how_many_rows_share_the_call():
    """``embed.rows_per_call`` only changes how texts are grouped (and padded) on the way through the model."""
    from data_pipeline.embed import EmbedBatch

    texts = ["a red circle", "Is there a blue triangle in the image, next to the green square?", "no",
             "What colour is the shape?", "yes", "Describe the image in detail, naming every shape and its colour.",
             "a", "Which shape is it?"]
    embed = EmbedBatch(None, 2)
    whole = embed({"human_text": texts, "reason": [""] * 8})["embedding"]
    parts = [embed({"human_text": texts[i:i + 3], "reason": [""] * len(texts[i:i + 3])})["embedding"]
             for i in range(0, 8, 3)]
    assert np.allclose(whole, np.concatenate(parts), atol=1e-5)


@pytest.mark.parametrize("kw, field", [({"text": "gpt"}, "embed.text"), ({"revision": ""}, "embed.revision"),
                                       ({"model": " x"}, "embed.model"), ({"batch_size": 0}, "embed.batch_size"),
                                       ({"rows_per_call": 64}, "embed.rows_per_call")])
def test_embed_config_names_the_bad_field(kw, field):
    from data_pipeline.config import EmbedConfig
    from vlm_core.base.errors import ConfigError

    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        EmbedConfig(**kw)


def test_assets_folder_rewrites_hub_ids_before_the_actors(tmp_path, monkeypatch):
    """embed.model / translate.model hub ids load from the assets folder's copy at their revision: the driver
    rewrites the embedder's and hands the translator the folder (actors do not see its environment), the
    translator keeping its hub id and revision (its cache key); other revisions and folders are left alone."""
    import shutil

    from data_pipeline.build import localized_models
    from data_pipeline.config import BuildConfig, EmbedConfig
    from data_pipeline.embed import load_embedder
    from data_pipeline.records import SourceError
    from data_pipeline.translate import TranslatorConfig
    from vlm_core.assets.hub import ASSETS_ENV, MINILM, OPUS_MT_EN_ID, asset_folder
    from vlm_core.assets.packaged import minilm_path

    monkeypatch.delenv(ASSETS_ENV, raising=False)
    assets = tmp_path / "assets"
    copy = asset_folder(assets, MINILM, "abc123")
    shutil.copytree(minilm_path(), copy)  # what `vlm-sweep assets download` leaves: the real model files
    marian = asset_folder(assets, OPUS_MT_EN_ID, "main")
    marian.mkdir(parents=True)

    def cfg(**kw):
        return BuildConfig(source="s", images="i", out="o", embed=EmbedConfig(model=MINILM, revision="abc123"),
                           translate=TranslatorConfig(name="seq2seq", model=OPUS_MT_EN_ID, revision="main"), **kw)

    model, revision, translate = localized_models(cfg(assets=str(assets)))
    assert (model, revision) == (str(copy), None)
    assert (translate.model, translate.revision, translate.assets) == (OPUS_MT_EN_ID, "main", str(assets))
    from vlm_core.assets.hub import resolve

    assert resolve(translate.model, translate.revision, "translate.model", translate.assets).path == str(marian)
    assert load_embedder(model, "cpu").encode(["a cat"]).shape == (1, 384)  # the copy is a working model
    monkeypatch.setenv(ASSETS_ENV, str(assets))  # the environment variable works the same in the driver
    assert localized_models(cfg())[0] == str(copy)
    other = cfg(assets=str(assets))
    other.embed.revision = "fedcba"  # not in the folder: the hub id stays, with its revision
    assert localized_models(other)[:2] == (MINILM, "fedcba")
    monkeypatch.delenv(ASSETS_ENV)
    assert localized_models(cfg())[:2] == (MINILM, "abc123") and localized_models(cfg())[2].assets is None
    with pytest.raises(SourceError, match="--assets"):
        localized_models(cfg(assets=str(tmp_path / "missing")))
