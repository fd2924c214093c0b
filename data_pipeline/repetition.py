"""How repeated the embedded texts are (``manifest.json``'s ``embedding`` section) and the warning ``data build``
gives when they are mostly repeats: in ShareGPT4V's caption files every human turn is one of ~10 fixed prompts, so
embedding the human turns would cluster prompt templates, not content.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .embed import EMBED_TEXTS, TEXT_LABELS, embedded_text

REPEAT_TOP10_SHARE = 0.5
"""Warn when the 10 most common embedded texts hold at least this share of the embedded rows (and at least half
the rows repeat another row's text, so that a corpus of 20 rows or fewer, all distinct, does not warn)."""
REPEAT_DISTINCT_FRACTION = 0.05
"""... or when fewer than this share of the embedded rows have a text of their own (each text repeated 20×
on average: many templates spread evenly, which the top-10 share alone would miss)."""
TOP_TEXTS = 10
TOP_TEXT_CHARS = 80


def repetition_stats(dataset, ok_filter, text: str, top: int = TOP_TEXTS) -> dict[str, Any]:
    """How repeated the embedded texts are, from the ``embed_hash`` column of the embedded rows.

    Memory: the int64 hash column (8 bytes a row: 8 MB at a million rows) plus Arrow's hash table in
    ``value_counts`` (about 16 bytes per distinct text: at most 16 MB at a million); the texts themselves are
    read only for the ``top`` hashes, batch by batch, stopping once each has one."""
    import pyarrow.compute as pc

    hashes = dataset.to_table(columns=["embed_hash"], filter=ok_filter)["embed_hash"]
    n = len(hashes)
    if n == 0:
        return {"rows": 0, "distinct_texts": 0, "distinct_fraction": 0.0, "top10_share": 0.0, "top_texts": []}
    vc = pc.value_counts(hashes)
    values, counts = vc.field("values").to_numpy(), vc.field("counts").to_numpy()
    order = np.lexsort((values, -counts))[:top]  # most common first; ties by hash, so the order is stable
    top_hashes = [int(values[i]) for i in order]
    wanted = {h: int(counts[i]) for h, i in zip(top_hashes, order)}
    columns = {"human": ["human_text"], "assistant": ["assistant_text"]}.get(text, ["human_text", "assistant_text"])
    found: dict[int, str] = {}
    scanner = dataset.scanner(columns=["embed_hash"] + columns,
                              filter=ok_filter & pc.field("embed_hash").isin(top_hashes), batch_size=1024)
    for batch in scanner.to_batches():
        cols = batch.to_pydict()
        blank = [""] * batch.num_rows
        for h, human, assistant in zip(cols["embed_hash"], cols.get("human_text", blank),
                                       cols.get("assistant_text", blank)):
            found.setdefault(h, embedded_text(human, assistant, text))
        if len(found) == len(wanted):
            break
    distinct = len(values)
    return {"rows": n, "distinct_texts": distinct, "distinct_fraction": round(distinct / n, 4),
            "top10_share": round(float(np.sort(counts)[::-1][:10].sum()) / n, 4),
            "top_texts": [{"text": _one_line(found.get(h, ""), TOP_TEXT_CHARS), "count": wanted[h]}
                          for h in top_hashes]}


def _one_line(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 1] + "…"


def repeated_texts(stats: dict[str, Any]) -> bool:
    """True when the embedded texts are mostly repeats (clusters would group the repeated texts, not content).

    With ~10 fixed prompts over ShareGPT4V's 102k caption rows the top-10 share is ~100 % and 0.01 % of the texts
    are distinct; the sample corpus's human turns (real easy-vqa questions, three a record) measure 4.1 % and
    97.7 %, far from both thresholds."""
    if not stats["rows"]:
        return False
    return ((stats["top10_share"] >= REPEAT_TOP10_SHARE and stats["distinct_fraction"] <= 0.5)
            or stats["distinct_fraction"] < REPEAT_DISTINCT_FRACTION)


def repetition_warning(stats: dict[str, Any], text: str) -> str | None:
    """The warning ``data build`` logs (and keeps in the manifest) when :func:`repeated_texts`, else None."""
    if not repeated_texts(stats):
        return None

    first = stats["top_texts"][0]
    others = [t for t in EMBED_TEXTS if t != text]
    return (f"the embedded texts ({TEXT_LABELS[text]}, --embed.text {text}) are mostly repeats: "
            f"{stats['distinct_texts']} distinct texts in {stats['rows']} rows ({stats['distinct_fraction']:.1%}), "
            f"and the 10 most common hold {stats['top10_share']:.1%} of the rows (the most common, "
            f"{first['count']} rows: {first['text']!r}). UMAP and the clusters will group these repeated texts "
            f"(e.g. fixed prompt templates), not the content; consider --embed.text {others[0]} or "
            f"--embed.text {others[1]}. (Warned when the top-10 share is >= {REPEAT_TOP10_SHARE:.0%} with at least "
            f"half the rows repeats, or fewer than {REPEAT_DISTINCT_FRACTION:.0%} of the texts are distinct.)")
