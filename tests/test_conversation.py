"""Formatting: labels on assistant tokens only, deterministic rendering, one BOS, image-safe truncation."""

from __future__ import annotations

import datetime as real_datetime

import pytest

from tests.conftest import formatter_for
from vlm_core.model.conversation import IGNORE_INDEX, FormatError, SampleSkipped

MULTI_TURN = [
    {"from": "human", "value": "<image>\nWhat colour is the shape?"},
    {"from": "gpt", "value": "It is blue."},
    {"from": "human", "value": "And its form?"},
    {"from": "gpt", "value": "A triangle."},
]


def trained_text(fmt, enc) -> list[str]:
    """Decode each maximal run of labelled tokens."""
    runs, cur = [], []
    for tid, lab in zip(enc.input_ids, enc.labels):
        if lab != IGNORE_INDEX:
            assert lab == tid
            cur.append(tid)
        elif cur:
            runs.append(fmt.tokenizer.decode(cur))
            cur = []
    if cur:
        runs.append(fmt.tokenizer.decode(cur))
    return runs


@pytest.mark.parametrize("which", ["smollm2", "llama3"])
def test_chat_labels_cover_only_assistant_turns_and_end_of_turn(which, tiny_cfg, llama_style_cfg):
    cfg = tiny_cfg if which == "smollm2" else llama_style_cfg
    fmt = formatter_for(cfg, "chat")
    enc = fmt.encode(MULTI_TURN)
    eot = "<|im_end|>" if which == "smollm2" else "<|eot_id|>"
    assert trained_text(fmt, enc) == [f"It is blue.{eot}", f"A triangle.{eot}"]
    # the generation header of a *next* turn is never appended, let alone trained on
    assert fmt.tokenizer.decode(enc.input_ids).rstrip().endswith(f"A triangle.{eot}")


@pytest.mark.parametrize("which", ["smollm2", "llama3"])
def test_raw_labels_cover_only_responses_and_eos(which, tiny_cfg, llama_style_cfg):
    cfg = tiny_cfg if which == "smollm2" else llama_style_cfg
    fmt = formatter_for(cfg, "raw")
    enc = fmt.encode(MULTI_TURN)
    eos = fmt.tokenizer.eos_token
    assert trained_text(fmt, enc) == [f"It is blue.{eos}", f"A triangle.{eos}"]
    text = fmt.tokenizer.decode(enc.input_ids)
    assert "<|start_header_id|>" not in text and "<|im_start|>user" not in text  # no template in raw mode


def test_image_marker_becomes_one_token_at_its_place(tiny_cfg):
    fmt = formatter_for(tiny_cfg, "chat")
    prefix = fmt.encode(MULTI_TURN)
    suffix = fmt.encode([{"from": "human", "value": "What colour is the shape?\n<image>"}, *MULTI_TURN[1:]])
    for enc in (prefix, suffix):
        assert enc.input_ids.count(fmt.image_token.id) == 1
        assert enc.input_ids[enc.image_index] == fmt.image_token.id
        assert enc.labels[enc.image_index] == IGNORE_INDEX
    assert suffix.image_index > prefix.image_index


def _freeze_clock(monkeypatch, day: real_datetime.datetime):
    from transformers.utils import chat_template_utils

    class FrozenDatetime(real_datetime.datetime):
        @classmethod
        def now(cls, tz=None):
            return day

    monkeypatch.setattr(chat_template_utils, "datetime", FrozenDatetime)


def test_chat_prompt_identical_on_two_dates_and_has_one_bos(llama_style_cfg, monkeypatch):
    fmt = formatter_for(llama_style_cfg, "chat")
    tok = fmt.tokenizer
    renders = []
    for day in (real_datetime.datetime(2025, 1, 2), real_datetime.datetime(2031, 7, 9)):
        _freeze_clock(monkeypatch, day)
        # the clock really reaches an unpinned render (so this test could catch an unpinned prompt)...
        unpinned = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
        assert day.strftime("%d %b %Y") in unpinned
        # ...but never ours
        renders.append(fmt.encode(MULTI_TURN).input_ids)
    assert renders[0] == renders[1]
    assert "Today Date: 26 Jul 2024" in tok.decode(renders[0])
    assert renders[0].count(tok.bos_token_id) == 1 and renders[0][0] == tok.bos_token_id


def test_llama_reserved_token_is_reused_for_image(llama_style_cfg):
    from vlm_core.model.language_model import build_language_model

    lm, tok, image_token = build_language_model(llama_style_cfg.lm)
    assert image_token.token == "<|reserved_special_token_0|>"
    assert lm.get_input_embeddings().num_embeddings == len(tok)  # no resize needed
    assert tok.pad_token == "<|finetune_right_pad_id|>"


def test_smollm2_gets_an_added_image_token(tiny_cfg):
    fmt = formatter_for(tiny_cfg, "chat")
    assert fmt.image_token.token == "<image>"
    assert fmt.image_token.id == len(fmt.tokenizer) - 1


def test_stop_tokens_are_the_end_of_turn_of_each_format(tiny_cfg, llama_style_cfg):
    fmt = formatter_for(llama_style_cfg, "chat")
    assert fmt.stop_token_ids == [fmt.tokenizer.convert_tokens_to_ids("<|eot_id|>")]
    fmt = formatter_for(tiny_cfg, "raw")
    assert fmt.stop_token_ids == [fmt.tokenizer.eos_token_id]


def test_generation_prompt_ends_with_assistant_header(llama_style_cfg):
    fmt = formatter_for(llama_style_cfg, "chat")
    enc = fmt.encode_prompt(MULTI_TURN[:3])
    assert fmt.tokenizer.decode(enc.input_ids).endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")


def test_too_long_samples_lose_whole_turns_never_part_of_an_answer(tiny_cfg, llama_style_cfg):
    from vlm_core.model.conversation import TOO_LONG

    fmt = formatter_for(llama_style_cfg, "chat", max_length=96, num_image_tokens=16)
    eot = fmt.tokenizer.convert_tokens_to_ids("<|eot_id|>")
    conv = list(MULTI_TURN) + [{"from": "human", "value": "Tell me more."},
                               {"from": "gpt", "value": " ".join(["word"] * 80)}]
    full = fmt.encode_full(conv)
    assert fmt.length_of(full) > 96 and len(full.answer_ends) == 3
    enc = fmt.encode(conv)
    # the third answer does not fit: it goes whole, and the sample ends with the second answer's end of turn
    assert enc.truncated and enc.turns_dropped == 1 and enc.answer_ends == full.answer_ends[:2]
    assert fmt.length_of(enc) <= 96 and enc.input_ids[-1] == eot and enc.labels[-1] == eot
    assert trained_text(fmt, enc) == ["It is blue.<|eot_id|>", "A triangle.<|eot_id|>"]
    assert enc.input_ids == full.input_ids[:len(enc.input_ids)]
    # a sample whose first answer does not fit is skipped and counted, not trained without its end of turn
    long_answer = [{"from": "human", "value": "<image>\nTell me a story."},
                   {"from": "gpt", "value": " ".join(["word"] * 400)}]
    with pytest.raises(SampleSkipped, match=TOO_LONG + "; its first answer ends at token"):
        formatter_for(tiny_cfg, "chat", max_length=64, num_image_tokens=16).encode(long_answer)
    long_prompt = [{"from": "human", "value": "<image>\n" + " ".join(["why"] * 200)}, {"from": "gpt", "value": "ok"}]
    with pytest.raises(SampleSkipped, match=TOO_LONG):
        formatter_for(tiny_cfg, "chat", max_length=64, num_image_tokens=16).encode(long_prompt)
    # an image that would be cut is refused
    late_image = [{"from": "human", "value": " ".join(["why"] * 60) + "\n<image>"}, {"from": "gpt", "value": "ok"}]
    with pytest.raises(SampleSkipped, match="image starts at token"):
        formatter_for(tiny_cfg, "chat", max_length=64, num_image_tokens=16).encode(late_image)
    # a sample that fits is untouched
    short = fmt.encode(MULTI_TURN)
    assert not short.truncated and short.input_ids == fmt.encode_full(MULTI_TURN).input_ids


@pytest.mark.parametrize("conv, match", [
    ([{"from": "human", "value": "no marker"}, {"from": "gpt", "value": "x"}], "exactly one"),
    ([{"from": "human", "value": "<image><image>"}, {"from": "gpt", "value": "x"}], "exactly one"),
    ([{"from": "gpt", "value": "<image> x"}, {"from": "human", "value": "y"}], "out of order"),
    ([{"from": "human", "value": "<image> q"}, {"from": "gpt", "value": "   "}], "empty"),
    ([{"from": "robot", "value": "<image>"}], "unknown speaker"),
    ([], "non-empty"),
])
def test_bad_conversations_are_refused_with_a_reason(conv, match, tiny_cfg):
    fmt = formatter_for(tiny_cfg, "chat")
    with pytest.raises(FormatError, match=match):
        fmt.encode(conv)
