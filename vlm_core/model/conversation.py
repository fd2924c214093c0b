"""Conversation → ``input_ids`` + ``labels``: the one place where prompts are rendered.

Two registered modes:

* ``chat``: the tokenizer's own chat template, rendered once per sample with a pinned ``date_string`` and
  ``add_generation_prompt=False`` (no trailing assistant header), tokenized with ``add_special_tokens=False``
  because a rendered template already carries its BOS;
* ``raw``: ``BOS user "\\n" assistant EOS`` per turn, no template.

Assistant spans are found by rendering each prefix of the conversation and checking that it is a prefix of
the full text; labels are the token ids inside those spans (assistant content + its end-of-turn token) and
``-100`` everywhere else. The ``<image>`` marker becomes exactly one image-token id; the model later
expands it into the projector's tokens, so length budgets count those tokens too.

Too long for ``format.max_length``? Whole turns go, never part of one: the sample ends after the last assistant
turn that fits with its end-of-turn token (``Encoded.turns_dropped`` counts the answers cut off), and a sample
whose *first* answer does not fit is skipped (``SampleSkipped``, counted by the dataset under "longer than
format.max_length"). A cut answer would still train but without its end-of-turn label, teaching the model that
long captions never end (ShareGPT4V's captions are single-turn: a cut caption is a caption with no stop).
``length_of`` gives a sample's full length, for the length report before a sweep (``vlm_core.data.lengths``).

    vlm-sweep show prompt --preset local     # a rendered sample with its trained tokens marked
"""

from __future__ import annotations

import bisect
import functools
from dataclasses import dataclass
from typing import Callable

from ..base.errors import FormatError
from ..base.registry import Registry
from ..config import FormatConfig, choices
from .language_model import ImageToken

IGNORE_INDEX = -100
ROLE_ALIASES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


class SampleSkipped(FormatError):
    """A valid conversation that cannot be trained on (e.g. no trainable token left after truncation)."""


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]
    image_index: int
    turns_dropped: int = 0
    """Assistant turns cut off because the sample was longer than ``format.max_length`` (whole turns only)."""
    answer_ends: tuple[int, ...] = ()
    """Token index just past each assistant turn (its end-of-turn token included)."""

    @property
    def truncated(self) -> bool:
        return self.turns_dropped > 0


TOO_LONG = "longer than format.max_length"
"""The skip reason of a sample whose first answer does not fit (a fixed prefix, so they are counted together)."""


def normalize_messages(conversation: list[dict]) -> list[dict]:
    """ShareGPT (``from``/``value``) or OpenAI (``role``/``content``) turns → ``[{role, content}]``, validated."""
    if not isinstance(conversation, list) or not conversation:
        raise FormatError("conversation must be a non-empty list of turns")
    out = []
    for i, turn in enumerate(conversation):
        if not isinstance(turn, dict):
            raise FormatError(f"turn {i} is {type(turn).__name__}, expected an object with from/value")
        role = turn.get("from", turn.get("role"))
        content = turn.get("value", turn.get("content"))
        if role not in ROLE_ALIASES:
            raise FormatError(f"turn {i}: unknown speaker {role!r} (expected human/gpt)")
        if not isinstance(content, str) or not content.strip():
            raise FormatError(f"turn {i}: empty or non-text content")
        out.append({"role": ROLE_ALIASES[role], "content": content})
    body = out[1:] if out[0]["role"] == "system" else out
    for i, m in enumerate(body):
        expected = "user" if i % 2 == 0 else "assistant"
        if m["role"] != expected:
            raise FormatError(f"turns out of order: turn {i} is {m['role']}, expected {expected} (human/gpt alternate, "
                              f"human first)")
    return out


@dataclass
class Rendered:
    text: str
    spans: list[tuple[int, int]]  # character spans of trained text (assistant content + end of turn)


Renderer = Callable[["ConversationFormatter", list[dict], bool], Rendered]
RENDERERS: Registry[Renderer] = Registry.implementing(choices.FORMAT_MODE)
register_renderer = RENDERERS.register


@register_renderer("chat")
def render_chat(fmt: "ConversationFormatter", messages: list[dict], add_generation_prompt: bool) -> Rendered:
    tok = fmt.tokenizer
    if not getattr(tok, "chat_template", None):
        raise FormatError("format.mode='chat' but the tokenizer has no chat template; use format.mode='raw'")

    def render(msgs, gen):
        return tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen,
                                       date_string=fmt.cfg.date_string)

    full = render(messages, add_generation_prompt)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before, upto = render(messages[:i], True), render(messages[: i + 1], False)
        if not (upto.startswith(before) and full.startswith(upto)):
            raise FormatError("the chat template is not prefix-stable, so assistant turns cannot be located")
        spans.append((len(before), len(upto.rstrip())))  # keep the end-of-turn token, not the newline after it
    return Rendered(full, spans)


@register_renderer("raw")
def render_raw(fmt: "ConversationFormatter", messages: list[dict], add_generation_prompt: bool) -> Rendered:
    tok = fmt.tokenizer
    text, spans = tok.bos_token or "", []
    for m in messages:
        if m["role"] == "system":
            continue
        if m["role"] == "user":
            text += m["content"] + "\n"
        else:
            start = len(text)
            text += m["content"] + tok.eos_token
            spans.append((start, len(text)))
    return Rendered(text, spans)


class ConversationFormatter:
    """Formats conversations for one tokenizer, image token and projector token count."""

    def __init__(self, tokenizer, image_token: ImageToken, cfg: FormatConfig, num_image_tokens: int):
        self.tokenizer, self.image_token, self.cfg = tokenizer, image_token, cfg
        self.num_image_tokens = num_image_tokens
        self._render = RENDERERS[cfg.mode]

    @functools.cached_property
    def stop_token_ids(self) -> list[int]:
        """The token(s) that end an assistant turn in this format, read off a rendered probe conversation."""
        marker = self.image_token.text
        probe = [{"from": "human", "value": f"{marker}\nhello"}, {"from": "gpt", "value": "hi"}]
        rendered = self._render(self, self._messages(probe), False)
        ids, starts, _ = self._tokenize(rendered.text)
        end = rendered.spans[-1][1]
        last = [t for t, s in zip(ids, starts) if s < end][-1]
        return [last]

    def _messages(self, conversation: list[dict]) -> list[dict]:
        messages = normalize_messages(conversation)
        n_markers = sum(m["content"].count(self.image_token.text) for m in messages)
        if n_markers != 1:
            raise FormatError(f"expected exactly one {self.image_token.text} marker, found {n_markers}")
        if not any(self.image_token.text in m["content"] for m in messages if m["role"] == "user"):
            raise FormatError(f"the {self.image_token.text} marker must be in a human turn")
        if self.cfg.system_prompt and messages[0]["role"] != "system":
            messages = [{"role": "system", "content": self.cfg.system_prompt}, *messages]
        return messages

    def _tokenize(self, text: str) -> tuple[list[int], list[int], int]:
        """Token ids, their start offsets in ``text``, and the index of the single image token."""
        marker = self.image_token.text
        head, tail = text.split(marker, 1)
        ids, starts = [], []
        for base, segment in ((0, head), (len(head) + len(marker), tail)):
            if segment:
                enc = self.tokenizer(segment, add_special_tokens=False, return_offsets_mapping=True)
                ids.extend(enc["input_ids"])
                starts.extend(base + s for s, _ in enc["offset_mapping"])
            if base == 0:
                image_index = len(ids)
                ids.append(self.image_token.id)
                starts.append(len(head))
        return ids, starts, image_index

    def encode(self, conversation: list[dict]) -> Encoded:
        """For training: the whole conversation, labels on assistant tokens only, cut to whole turns."""
        return self.fit(self.encode_full(conversation))

    def encode_full(self, conversation: list[dict]) -> Encoded:
        """``encode`` without the length budget (what the length report measures)."""
        messages = self._messages(conversation)
        if messages[-1]["role"] != "assistant":
            raise FormatError("a training conversation must end with a gpt turn")
        rendered = self._render(self, messages, False)
        ids, starts, image_index = self._tokenize(rendered.text)
        span_starts = [s for s, _ in rendered.spans]
        labels = []
        for tid, pos in zip(ids, starts):
            k = bisect.bisect_right(span_starts, pos) - 1
            inside = k >= 0 and pos < rendered.spans[k][1]
            labels.append(tid if inside else IGNORE_INDEX)
        labels[image_index] = IGNORE_INDEX
        ends = tuple(bisect.bisect_left(starts, end) for _, end in rendered.spans)
        return Encoded(ids, labels, image_index, answer_ends=ends)

    def length_of(self, enc: Encoded) -> int:
        """Tokens the LLM sees for ``enc``: its text tokens plus the projector's image tokens."""
        return len(enc.input_ids) - 1 + self.num_image_tokens

    def encode_prompt(self, conversation: list[dict]) -> Encoded:
        """For generation: every turn up to the last human one, plus the assistant header."""
        messages = self._messages(conversation)
        if messages[-1]["role"] == "assistant":
            messages = messages[:-1]
        rendered = self._render(self, messages, True)
        ids, _, image_index = self._tokenize(rendered.text)
        enc = Encoded(ids, [IGNORE_INDEX] * len(ids), image_index)
        if self.length_of(enc) > self.cfg.max_length:
            raise FormatError(f"prompt needs {self.length_of(enc)} tokens, "
                              f"more than format.max_length={self.cfg.max_length}")
        return enc

    def fit(self, enc: Encoded) -> Encoded:
        """``enc`` within ``format.max_length``: whole turns cut off, or ``SampleSkipped`` (see the module doc)."""
        budget = self.cfg.max_length - (self.num_image_tokens - 1)  # text tokens that fit
        if len(enc.input_ids) > budget:
            if enc.image_index >= budget:
                raise SampleSkipped(f"{TOO_LONG}; the image starts at token {enc.image_index}, beyond "
                                    f"format.max_length={self.cfg.max_length} with {self.num_image_tokens} image "
                                    f"tokens")
            fits = [end for end in enc.answer_ends if end <= budget]
            if not fits:
                raise SampleSkipped(f"{TOO_LONG}; its first answer ends at token "
                                    f"{enc.answer_ends[0] - 1 + self.num_image_tokens} of format.max_length="
                                    f"{self.cfg.max_length} (a cut answer would train without its end of turn)")
            cut = fits[-1]
            enc = Encoded(enc.input_ids[:cut], enc.labels[:cut], enc.image_index,
                          turns_dropped=len(enc.answer_ends) - len(fits), answer_ends=tuple(fits))
        if all(label == IGNORE_INDEX for label in enc.labels):
            raise SampleSkipped("no trainable (assistant) token in the sample")
        return enc
