"""Token lengths measured before a sweep: percentiles, what max_length cuts or drops, and the dry run's table.

    pytest -q tests/test_lengths.py
"""

from __future__ import annotations

import pyarrow.parquet as pq

from tests.conftest import formatter_for
from vlm_core.data.lengths import image_token_count, measure, percentile
from vlm_core.presets import get_preset


def test_nearest_rank_percentiles():
    values = list(range(1, 101))  # 1..100
    assert [percentile(values, q) for q in (50, 95, 99, 100)] == [50, 95, 99, 100]
    assert percentile([7], 50) == 7 and percentile([], 99) == 0
    assert percentile([1, 2, 3, 1000], 50) == 2 and percentile([1, 2, 3, 1000], 99) == 1000


def test_measure_counts_what_max_length_cuts_and_drops(tiny_cfg):
    fmt = formatter_for(tiny_cfg, "chat", max_length=80, num_image_tokens=16)

    def rec(*turns):
        conv = []
        for q, a in turns:
            conv += [{"from": "human", "value": q}, {"from": "gpt", "value": a}]
        conv[0]["value"] = "<image>\n" + conv[0]["value"]
        return {"id": str(len(turns)), "image": "x.jpg", "conversations": conv}

    short = rec(("What is it?", "A cat."))
    multi = rec(("What is it?", "A cat."), ("And then?", " ".join(["more"] * 60)))  # second answer cannot fit
    single_long = rec(("Describe it.", " ".join(["long"] * 90)))  # its only answer cannot fit
    broken = {"id": "b", "image": "x.jpg", "conversations": [{"from": "human", "value": "no marker"},
                                                              {"from": "gpt", "value": "x"}]}
    stats = measure([short, multi, single_long, broken], fmt)
    lengths = sorted(fmt.length_of(fmt.encode_full(r["conversations"])) for r in (short, multi, single_long))
    assert stats.rows == 3 and stats.unformattable == 1 and stats.max == lengths[-1] and stats.p50 == lengths[1]
    assert lengths[0] <= 80 < lengths[1]
    assert stats.over == 2 and stats.cut == 1 and stats.turns_dropped == 1 and stats.dropped == 1
    assert stats.over_share == round(2 / 3, 4)


def test_image_tokens_come_from_the_encoder_config_without_weights(tiny_cfg):
    from vlm_core.model.vlm import VisionLanguageModel

    local = get_preset("local")
    assert image_token_count(tiny_cfg) == 16 and image_token_count(local) == 49
    dense = get_preset("tiny")
    dense.projector.name = "dense_sti"
    assert image_token_count(dense) == VisionLanguageModel.build(dense).num_image_tokens


def test_dry_run_prints_each_variants_lengths_under_each_formatter(variants, corpus, capsys):
    from sweeps.driver import SweepConfig, run_sweep

    cfg = SweepConfig(data=str(variants), images=str(corpus / "images"), preset="tiny", grid="paper19",
                      stage="all", paper_ids=[3, 9, 13], dry_run=True)
    result = run_sweep(cfg)
    out = capsys.readouterr().out
    rows = result["token_lengths"]
    # paper rows 3 and 9 are raw, row 13 (10kRandom) is chat: three (dataset, formatter) pairs
    assert sorted((r["dataset"], r["format"]) for r in rows) == [
        ("10kRandom", "chat, 16 image tokens"), ("10kRandom", "raw, 16 image tokens"),
        ("20kUmap", "raw, 16 image tokens")]
    for r in rows:
        n = sum(pq.ParquetFile(variants / r["dataset"] / f).metadata.num_rows
                for f in ("train-00000.parquet", "val-00000.parquet"))
        assert r["rows"] + r["unformattable"] == n and r["p50"] <= r["p95"] <= r["p99"] <= r["max"]
        assert r["max_length"] == 256 and r["over"] == 0
    chat = next(r for r in rows if r["format"].startswith("chat"))
    assert "s1-10kRandom-nodense-chat-cosine-e6-b8" in chat["trials"]
    assert "token lengths (LLM tokens per sample" in out and "| 10kRandom | chat, 16 image tokens |" in out


def test_dry_run_without_data_says_lengths_were_not_measured(tmp_path, capsys):
    from sweeps.driver import SweepConfig, run_sweep

    result = run_sweep(SweepConfig(data=str(tmp_path / "none"), images=str(tmp_path), preset="tiny",
                                   paper_ids=[3], stage="1", dry_run=True))
    assert result["token_lengths"] is None
    assert "token lengths: not measured" in capsys.readouterr().out


def test_a_sample_over_only_by_the_templates_tail_loses_nothing_and_is_not_counted(tiny_cfg):
    conv = [{"from": "human", "value": "<image>\nWhat is it?"}, {"from": "gpt", "value": "A cat."}]
    probe = formatter_for(tiny_cfg, "chat", max_length=256, num_image_tokens=16).encode_full(conv)
    tail = len(probe.input_ids) - probe.answer_ends[-1]  # SmolLM2's template: a newline after <|im_end|>
    assert tail >= 1
    fmt = formatter_for(tiny_cfg, "chat", max_length=fmt_len(probe, 16) - tail, num_image_tokens=16)
    stats = measure([{"id": "a", "image": "x.jpg", "conversations": conv}], fmt)
    assert stats.max > stats.max_length and stats.over == 0 and stats.cut == 0 and stats.dropped == 0
    enc = fmt.encode(conv)
    assert not enc.truncated and enc.labels[-1] != -100  # the whole answer and its end of turn are kept


def fmt_len(enc, image_tokens: int) -> int:
    return len(enc.input_ids) - 1 + image_tokens


def test_unreadable_rows_are_counted_apart_not_raised(tiny_cfg):
    fmt = formatter_for(tiny_cfg, "chat", max_length=256, num_image_tokens=16)
    rows = [{"id": "j", "image": "x.jpg", "conversations": "{not json"}, {"id": "n", "conversations": []}, "row"]
    stats = measure(rows, fmt)
    assert stats.rows == 0 and stats.unformattable == 3
