"""Token lengths of a dataset under a trial's formatter, measured before anything trains.

For every record: its full length in LLM tokens (text tokens + the projector's image tokens) under the exact
``ConversationFormatter`` a trial builds (tokenizer, chat or raw template, image tokens), and what
``format.max_length`` does to it: kept whole, cut to whole turns (``turns_dropped``), or dropped (its first
answer does not fit). The sweep prints this table in ``--dry-run``, writes it to ``token_lengths.json`` and
shows it in its report and the study report, so no sample is cut silently.

    vlm-sweep show lengths --preset paper-shaped --records fixture/sharegpt4v_instruct_gpt4-vision_cap100k.json
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import asdict, dataclass
from typing import Iterable

from ..config import ProjectorConfig, VisionConfig, VLMConfig
from ..model.conversation import TOO_LONG, ConversationFormatter, FormatError
from ..model.language_model import load_tokenizer, resolve_image_token
from ..model.projectors import build_projector
from ..model.vision.encoder import encoder_geometry
from .feature_cache import LLM_WIDTH_FOR_SELECTION


@dataclass
class LengthStats:
    """The length distribution of one dataset under one formatter."""

    rows: int
    """Records measured (formattable ones; ``unformattable`` counts the rest)."""
    max_length: int
    p50: int
    p95: int
    p99: int
    max: int
    mean: float
    over: int
    """Samples that lose something to ``max_length`` (``cut`` + ``dropped``; a sample over it only by the
    template's untrained tail after its last answer loses nothing and is not counted)."""
    over_share: float
    cut: int
    """Of those, kept with trailing whole turns cut off."""
    turns_dropped: int
    """Answers cut off in those samples."""
    dropped: int
    """Of those, dropped: the first answer (or the image) does not fit."""
    unformattable: int = 0
    """Records the formatter refuses for another reason (no marker, bad turns): counted by the dataset too."""


def percentile(sorted_values: list[int], q: float) -> int:
    """Nearest-rank percentile (a value that occurs in the data)."""
    if not sorted_values:
        return 0
    k = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[k - 1]


def measure(records: Iterable[dict], formatter: ConversationFormatter) -> LengthStats:
    lengths, over, cut, turns, dropped, bad = [], 0, 0, 0, 0, 0
    for rec in records:
        try:  # what ConversationDataset refuses (no image, unreadable turns) is counted apart, as it is there
            if not isinstance(rec, dict) or not rec.get("image"):
                raise FormatError("not a record with an image")
            conv = rec.get("conversations")
            full = formatter.encode_full(json.loads(conv) if isinstance(conv, str) else conv)
        except (FormatError, ValueError, TypeError):
            bad += 1
            continue
        n = formatter.length_of(full)
        lengths.append(n)
        if n <= formatter.cfg.max_length:
            continue
        try:
            enc = formatter.fit(full)
        except FormatError as e:
            over += 1
            if str(e).startswith(TOO_LONG):
                dropped += 1
            continue
        if enc.turns_dropped:  # over only by the template's untrained tail after the last answer: nothing lost
            over += 1
            cut += 1
            turns += enc.turns_dropped
    lengths.sort()
    return LengthStats(rows=len(lengths), max_length=formatter.cfg.max_length, p50=percentile(lengths, 50),
                       p95=percentile(lengths, 95), p99=percentile(lengths, 99), max=lengths[-1] if lengths else 0,
                       mean=round(sum(lengths) / max(len(lengths), 1), 1), over=over,
                       over_share=round(over / max(len(lengths), 1), 4), cut=cut, turns_dropped=turns,
                       dropped=dropped, unformattable=bad)


def image_token_count(cfg: VLMConfig) -> int:
    """The projector's image tokens for ``cfg``, from the encoder's config alone (no weights loaded; read once per
    encoder and projector config, since a sweep asks for every trial)."""
    return _image_tokens(json.dumps(asdict(cfg.vision), sort_keys=True),
                         json.dumps(asdict(cfg.projector), sort_keys=True))


@functools.lru_cache(maxsize=None)
def _image_tokens(vision_json: str, projector_json: str) -> int:
    projector = build_projector(ProjectorConfig(**json.loads(projector_json)),
                                encoder_geometry(VisionConfig(**json.loads(vision_json))), LLM_WIDTH_FOR_SELECTION)
    return projector.num_tokens


def formatter_for(cfg: VLMConfig) -> ConversationFormatter:
    """The formatter a trial of ``cfg`` builds, with the tokenizer only (no LLM weights)."""
    tokenizer = load_tokenizer(cfg.lm)
    image_token, _ = resolve_image_token(tokenizer, cfg.lm.image_token)
    return ConversationFormatter(tokenizer, image_token, cfg.format, image_token_count(cfg))


def formatter_key(cfg: VLMConfig) -> str:
    """Trials whose formatters would give equal lengths share this key (so each is measured once)."""
    lm = {k: getattr(cfg.lm, k) for k in ("source", "revision", "tokenizer", "tokenizer_revision", "image_token")}
    return json.dumps({"lm": lm, "format": asdict(cfg.format), "image_tokens": image_token_count(cfg),
                       "vision": cfg.vision.source}, sort_keys=True)


def lengths_table(rows: list[dict]) -> str:
    """Rows of ``{"dataset", "format", **LengthStats}`` as a Markdown table."""
    head = "| dataset | format | rows | p50 | p95 | p99 | max | max_length | over | cut to whole turns | dropped |"
    lines = [head, "|" + "---|" * 11]
    for r in rows:
        lines.append(f"| {r['dataset']} | {r['format']} | {r['rows']} | {r['p50']} | {r['p95']} | {r['p99']} | "
                     f"{r['max']} | {r['max_length']} | {r['over']} ({100 * r['over_share']:.1f} %) | "
                     f"{r['cut']} ({r['turns_dropped']} answers) | {r['dropped']} |")
    return "\n".join(lines)
