"""Token lengths of ShareGPT4V-shaped caption data under the paper preset's formatter, and the max_length they call for.

Writes the caption fixture (``data_pipeline.caption_fixture``: single-turn, fixed prompts, GPT-4V-length captions
of 100–300 words, mean ~940 characters), formats every record as a ``paper`` trial would (Llama-3.2's chat
template or raw mode, 49 TinyCLIP image tokens; the paper-shaped test tokenizer of ``vlm_core.assets.paper_shaped``:
Llama 3's special tokens at their ids over SmolLM2's BPE, which needs ~10–15 % more tokens than Llama 3's own
on English prose, so these lengths err long), and prints the distribution and the rule's ``max_length``:

    rule: the smallest multiple of 256 that is at least 1.5 × the longest format's p99

(1.5 × p99 leaves room for the real file's tail beyond the fixture's 300-word clip; dynamic padding means a
larger ``max_length`` costs nothing for the samples that are shorter.)

    python bench/token_lengths.py --rows 4000 --out bench/results/token_lengths.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def choose_max_length(p99: int, headroom: float = 1.5, multiple: int = 256) -> int:
    return math.ceil(headroom * p99 / multiple) * multiple


def main(argv: list[str] | None = None) -> dict:
    from data_pipeline.caption_fixture import write_caption_fixture
    from vlm_core.assets import paper_shaped
    from vlm_core.assets.hub import TINYCLIP
    from vlm_core.data.dataset import read_records
    from vlm_core.data.lengths import formatter_for, measure
    from vlm_core.presets import get_preset

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=4000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="also write the figures as JSON here")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        counts = write_caption_fixture(tmp, args.rows, args.seed)
        records = read_records(Path(tmp) / "sharegpt4v_instruct_gpt4-vision_cap100k.json")
    result = {"fixture": {k: v for k, v in counts.items() if k not in ("source", "images")}, "formats": {}}
    current = get_preset("paper").format.max_length
    for mode in ("chat", "raw"):
        cfg = get_preset("paper")
        cfg.vision.source, cfg.vision.revision = str(paper_shaped.config_folder(TINYCLIP)), None
        cfg.lm.tokenizer = str(paper_shaped.tokenizer_folder())
        cfg.format.mode = mode
        stats = measure(records, formatter_for(cfg))
        result["formats"][mode] = dataclasses.asdict(stats)
        print(f"{mode:4}: p50 {stats.p50}  p95 {stats.p95}  p99 {stats.p99}  max {stats.max}  mean {stats.mean}  "
              f"over max_length={current}: {stats.over} of {stats.rows}")
    p99 = max(f["p99"] for f in result["formats"].values())
    result["rule"] = "smallest multiple of 256 >= 1.5 x the longest format's p99"
    result["chosen_max_length"] = choose_max_length(p99)
    result["paper_preset_max_length"] = current
    print(f"fixture: {result['fixture']}\nrule: {result['rule']} -> {result['chosen_max_length']} "
          f"(paper preset: {current})")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
