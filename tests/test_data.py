"""Samples and batches: dynamic padding, stable splits, skipped samples counted, bad lines named."""

from __future__ import annotations

import json

import pytest

from vlm_core.data.dataset import Collator, ConversationDataset, read_records, split_records
from vlm_core.model.conversation import IGNORE_INDEX


def test_batches_pad_to_their_longest_sample_not_max_length(tiny_model, corpus):
    records = read_records(corpus / "sharegpt4v_sample.jsonl")[:6]
    ds = ConversationDataset(records, tiny_model.formatter, tiny_model.vision.preprocess, corpus / "images")
    batch = Collator(tiny_model.tokenizer.pad_token_id)([ds[i] for i in range(len(ds))])
    lengths = [len(ex.encoded.input_ids) for ex in ds.examples]
    assert batch["input_ids"].shape == (6, max(lengths)) and max(lengths) < tiny_model.cfg.format.max_length
    assert batch["attention_mask"].sum(1).tolist() == lengths
    assert (batch["labels"][batch["attention_mask"] == 0] == IGNORE_INDEX).all()
    assert batch["pixel_values"].shape == (6, 3, 64, 64)


def test_samples_cut_to_whole_turns_are_counted(tiny_model, corpus, caplog):
    good = read_records(corpus / "sharegpt4v_sample.jsonl")[0]
    turns = [{"from": "human", "value": "<image>\nWhat is it?"}, {"from": "gpt", "value": "A shape."}]
    for _ in range(60):
        turns += [{"from": "human", "value": "And then?"}, {"from": "gpt", "value": "More of the same shape."}]
    long = {"id": "long", "image": good["image"], "conversations": turns}
    ds = ConversationDataset([good, long], tiny_model.formatter, tiny_model.vision.preprocess, corpus / "images")
    assert len(ds) == 2 and not ds.skipped
    enc = ds.examples[1].encoded
    assert ds.cut["samples"] == 1 and ds.cut["turns"] == enc.turns_dropped > 0
    assert tiny_model.formatter.length_of(enc) <= tiny_model.cfg.format.max_length
    assert "1 of 2 samples are longer than format.max_length=256 and were cut to whole turns" in caplog.text


def test_untrainable_and_malformed_records_are_counted_not_silently_dropped(tiny_model, corpus, caplog):
    good = read_records(corpus / "sharegpt4v_sample.jsonl")[0]
    too_long = {"id": "long", "image": good["image"], "conversations": [
        {"from": "human", "value": "<image>\n" + "why " * 400}, {"from": "gpt", "value": "ok"}]}
    no_marker = {"id": "nomark", "image": good["image"], "conversations": [
        {"from": "human", "value": "hi"}, {"from": "gpt", "value": "ok"}]}
    missing = {"id": "noconv", "image": good["image"]}
    no_image = {"id": "noimage", "conversations": good["conversations"]}
    not_a_record = ["a", "list"]
    ds = ConversationDataset([good, too_long, no_marker, missing, no_image, not_a_record], tiny_model.formatter,
                             tiny_model.vision.preprocess, corpus / "images")
    assert len(ds) == 1 and sum(ds.skipped.values()) == 5
    assert ds.skipped["longer than format.max_length"] == 1 and any("exactly one" in k for k in ds.skipped)
    assert ds.skipped["missing conversations"] == 1 and ds.skipped["missing image"] == 1
    assert "skipping record long" in caplog.text and "skipping record noconv" in caplog.text
    assert "skipping record noimage" in caplog.text and "not an object" in caplog.text


def test_split_is_stable_per_record_id():
    records = [{"id": f"r{i}"} for i in range(2000)]
    train, val = split_records(records, 0.1)
    assert 150 < len(val) < 250
    val_ids = {r["id"] for r in val}
    _, val2 = split_records(list(reversed(records[:500])), 0.1)  # other order, smaller corpus
    assert {r["id"] for r in val2} == {r["id"] for r in records[:500] if r["id"] in val_ids}


def test_bad_jsonl_line_names_file_and_line(tmp_path):
    f = tmp_path / "bad.jsonl"
    f.write_text(json.dumps({"id": 1}) + "\n{not json\n")
    with pytest.raises(ValueError, match=r"bad\.jsonl:2: not valid JSON"):
        read_records(f)


@pytest.mark.parametrize("name, content, message", [
    ("cut.json", b'[{"id": 1, "image": "a.jpg", "conversations": []}, {"id": 2, "ima', r"cut\.json:1: not valid JSON"),
    ("latin1.jsonl", b'{"id": 1}\n{"id": "caf\xe9"}\n', r"latin1\.jsonl:2: not UTF-8"),
    ("scalars.jsonl", b'{"id": 1}\n42\n', r"scalars\.jsonl: record 2 .* is a int"),
    ("dict.json", b'{"id": 1}', r"dict\.json: expected a JSON list"),
    ("broken.parquet", b"PAR1 not really", r"broken\.parquet: not a readable Parquet file"),
    ("absent.jsonl", None, r"absent\.jsonl: no such file"),
])
def test_unreadable_data_files_are_named_with_the_fix(tmp_path, name, content, message):
    from vlm_core.data.dataset import DataError

    f = tmp_path / name
    if content is not None:
        f.write_bytes(content)
    with pytest.raises(DataError, match=message):
        read_records(f)


def test_a_byte_order_mark_is_not_a_bad_line(tmp_path):
    f = tmp_path / "bom.jsonl"
    f.write_bytes("\ufeff".encode() + b'{"id": 1}\n{"id": 2}\n')
    assert [r["id"] for r in read_records(f)] == [1, 2]
