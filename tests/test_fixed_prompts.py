"""``--embed.text`` on a file in the shape of ShareGPT4V's caption files (fixed prompts, long captions).

Real ``data build`` runs (Ray Data, the packaged all-MiniLM-L6-v2, UMAP, k-means) on
``data_pipeline.caption_fixture``: every human turn is one of ten fixed prompts, so embedding the human turns
(the default) must be reported as mostly repeats and cluster by prompt; embedding the captions must not.

    .venv/bin/python -m pytest -q tests/test_fixed_prompts.py
"""

from __future__ import annotations

import json
import logging
from collections import Counter

import numpy as np
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
from PIL import Image
from sklearn.metrics import adjusted_rand_score

from data_pipeline.build import build
from data_pipeline.caption_fixture import CAPTION_FILE, CAPTION_PROMPTS, SCENES, write_caption_fixture
from data_pipeline.config import BuildConfig, ClusterConfig, EmbedConfig, UmapConfig, VariantSpec
from data_pipeline.repetition import REPEAT_TOP10_SHARE

N_ROWS = 400
K = 10


class _Warnings(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture(scope="module")
def fixture(tmp_path_factory):
    out = tmp_path_factory.mktemp("captions")
    info = write_caption_fixture(out, N_ROWS, seed=0)
    records = {r["id"]: r for r in json.loads((out / CAPTION_FILE).read_text())}
    coco = {i: r for i, r in records.items() if r["image"].startswith("coco/")}
    return out, info, coco


def _scene(caption: str) -> str:
    """The scene a caption was composed from: the one whose objects it names most often."""
    return max(SCENES, key=lambda s: sum(caption.count(o) for o in SCENES[s]["objects"] + SCENES[s]["place"]))


@pytest.fixture(scope="module")
def builds(ray_local, fixture, tmp_path_factory):
    """One build per ``--embed.text`` (the COCO filter keeps about half the rows), with the warnings logged."""
    src, info, coco = fixture
    result = {}
    for text in ("human", "assistant", "both"):
        out = tmp_path_factory.mktemp(f"data-{text}")
        handler = _Warnings()
        logger = logging.getLogger("data_pipeline.build")
        logger.addHandler(handler)
        try:
            manifest = build(BuildConfig(
                source=str(src / CAPTION_FILE), images=str(src / "images"), out=str(out),
                variants=[VariantSpec("all", "random", len(coco)), VariantSpec("20kUmap", "umap", 60)],
                embed=EmbedConfig(text=text, batch_size=64), umap=UmapConfig(n_components=5, fit_sample=N_ROWS),
                cluster=ClusterConfig(k=K), shard_lines=100))
        finally:
            logger.removeHandler(handler)
        table = pads.dataset(out / "all", format="parquet").to_table(columns=["id", "cluster"])
        clusters = dict(zip(table["id"].to_pylist(), table["cluster"].to_pylist()))
        result[text] = {"out": out, "manifest": manifest, "warnings": handler.messages, "clusters": clusters}
    return result


def _labels(coco: dict, clusters: dict) -> tuple[list, list, list]:
    ids = sorted(coco)
    prompts = [coco[i]["conversations"][0]["value"] for i in ids]
    scenes = [_scene(coco[i]["conversations"][1]["value"]) for i in ids]
    return prompts, scenes, [clusters[i] for i in ids]


def test_fixture_has_the_caption_files_shape(fixture):
    src, info, coco = fixture
    records = json.loads((src / CAPTION_FILE).read_text())  # one JSON list, like the real file
    assert isinstance(records, list) and len(records) == info["rows"] == N_ROWS
    assert 0.40 < info["coco_rows"] / N_ROWS < 0.60 and info["coco_rows"] == len(coco)
    assert info["distinct_prompts"] == len(CAPTION_PROMPTS)
    assert 800 < info["mean_caption_chars"] < 1100 and info["max_caption_chars"] > 1.5 * info["mean_caption_chars"]
    roots = Counter(r["image"].split("/")[0] for r in records)
    assert set(roots) == {"coco", "sam", "llava", "wikiart", "share_textvqa", "web-celebrity", "web-landmark"}
    for r in records:
        human, gpt = r["conversations"]
        assert human["from"] == "human" and gpt["from"] == "gpt"
        assert human["value"].endswith("\n<image>") and human["value"][:-len("\n<image>")] in CAPTION_PROMPTS
        assert 100 <= len(gpt["value"].split()) <= 300
        assert r["id"] == r["image"].rsplit("/", 1)[1].rsplit(".", 1)[0]
        with Image.open(src / "images" / r["image"]) as img:
            assert img.format == "JPEG" and img.size == (64, 64)
    assert all(r["image"].startswith("coco/train2017/000000") for r in coco.values())


def test_human_turns_are_reported_as_fixed_prompts_and_warned_about(builds, fixture):
    _, _, coco = fixture
    b = builds["human"]
    emb = b["manifest"]["embedding"]
    n = b["manifest"]["counts"]["embedded"]
    prompts_kept = {r["conversations"][0]["value"].split("\n")[0] for r in coco.values()}
    assert n == len(coco) and emb["text"] == "human"
    assert emb["distinct_texts"] == len(prompts_kept) and emb["top10_share"] == 1.0 >= REPEAT_TOP10_SHARE
    assert emb["repeated"] and sum(t["count"] for t in emb["top_texts"]) == n
    assert {t["text"] for t in emb["top_texts"]} == prompts_kept  # the prompts themselves, <image> removed
    assert Counter(r["conversations"][0]["value"].split("\n")[0] for r in coco.values()).most_common(1)[0][1] \
        == emb["top_texts"][0]["count"]
    logged = [m for m in b["warnings"] if "--embed.text" in m]
    assert len(logged) == 1 and logged == [w for w in b["manifest"]["warnings"] if "--embed.text" in w]
    assert f"{emb['distinct_texts']} distinct texts in {n} rows" in logged[0]
    assert "100.0%" in logged[0] and "--embed.text assistant" in logged[0]
    # every row of a prompt lands in the same cluster: the clusters are the prompt templates
    prompts, _, clusters = _labels(coco, b["clusters"])
    assert all(len({c for p2, c in zip(prompts, clusters) if p2 == p}) == 1 for p in set(prompts))


def test_assistant_turns_are_distinct_and_cluster_by_content(builds, fixture):
    _, _, coco = fixture
    b, human = builds["assistant"], builds["human"]
    emb, n = b["manifest"]["embedding"], b["manifest"]["counts"]["embedded"]
    assert emb["text"] == "assistant" and emb["distinct_texts"] == n
    assert emb["top10_share"] == round(10 / n, 4) < REPEAT_TOP10_SHARE and not emb["repeated"]
    assert all(t["count"] == 1 and len(t["text"]) <= 80 for t in emb["top_texts"])
    assert not [m for m in b["warnings"] if "--embed.text" in m] and b["manifest"]["warnings"] == []
    prompts, scenes, clusters = _labels(coco, b["clusters"])
    _, _, human_clusters = _labels(coco, human["clusters"])
    assert clusters != human_clusters
    ari_prompt_h, ari_prompt_a = adjusted_rand_score(prompts, human_clusters), adjusted_rand_score(prompts, clusters)
    ari_scene_h, ari_scene_a = adjusted_rand_score(scenes, human_clusters), adjusted_rand_score(scenes, clusters)
    assert ari_prompt_h > 0.5 and abs(ari_prompt_a) < 0.1, (ari_prompt_h, ari_prompt_a)
    assert ari_scene_a > 0.3 and abs(ari_scene_h) < 0.1, (ari_scene_a, ari_scene_h)


def test_both_embeds_the_prompt_then_the_caption(builds, fixture):
    from data_pipeline.embed import load_embedder

    _, _, coco = fixture
    b = builds["both"]
    emb = b["manifest"]["embedding"]
    assert emb["text"] == "both" and emb["distinct_texts"] == b["manifest"]["counts"]["embedded"]
    assert not emb["repeated"] and b["manifest"]["warnings"] == []
    def joined(r: dict) -> str:  # prompt (marker removed), newline, caption: as one line, like top_texts
        return " ".join(f"{r['conversations'][0]['value'].replace('<image>', '')}\n"
                        f"{r['conversations'][1]['value']}".split())

    top = emb["top_texts"][0]["text"]
    assert any(joined(r).startswith(top.rstrip("…")) for r in coco.values())
    # the stored embedding of a row is MiniLM's of its prompt, a newline and its caption, not of either alone
    rows = pads.dataset(next((b["out"] / "_work").glob("rows-*")), format="parquet").to_table(
        columns=["id", "embedding", "reason"]).to_pylist()
    row = next(r for r in rows if not r["reason"])
    rec = coco[row["id"]]
    prompt, caption = rec["conversations"][0]["value"][:-len("\n<image>")], rec["conversations"][1]["value"]
    model = load_embedder(None, "cpu")
    joined, alone_p, alone_c = model.encode([f"{prompt}\n{caption}", prompt, caption], normalize_embeddings=True)
    stored = np.asarray(row["embedding"], dtype=np.float32)
    assert float(stored @ joined) > 0.999
    assert float(stored @ alone_p) < 0.99 and float(stored @ alone_c) < 0.999
    assert builds["both"]["clusters"] != builds["human"]["clusters"]


@pytest.mark.parametrize("text, words", [("human", "human turns"), ("assistant", "assistant turns"),
                                          ("both", "human + assistant turns")])
def test_umap_plot_title_says_what_was_embedded(builds, text, words):
    b = builds[text]
    title = b["manifest"]["plot"]["title"]
    assert title.startswith(f"UMAP of {words} (all-MiniLM-L6-v2)") and f"k={K}" in title
    with Image.open(b["out"] / "umap.png") as img:  # the PNG's Title text chunk: what the figure was given
        assert img.text["Title"] == title
    assert b["manifest"]["params"]["embed"]["text"] == text


def test_variants_are_written_for_every_choice(builds):
    for b in builds.values():
        per = b["manifest"]["variants"]["20kUmap"]["per_cluster"]
        assert sum(per.values()) == 60
        t = pq.read_table(b["out"] / "20kUmap" / "train-00000.parquet")
        assert all(json.loads(c)[0]["value"].startswith("<image>\n") for c in t["conversations"].to_pylist())
