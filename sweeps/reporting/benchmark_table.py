"""Benchmark results in the sweep's tables: ``trials.csv`` columns (``BENCH.METRIC`` with the image,
``BENCH.METRIC.gain_zeros`` / ``.gain_shuffled`` for each benchmark's headline metric), the reports' "Benchmarks"
table (config × headline metric, the image's gain over each control beside it, the best per column in bold), and
the "best config" a report names (``--select-by``: ``val_loss``, the default, or any ``BENCH.METRIC``).

Direction: every metric is better higher except the ones :data:`LOWER_IS_BETTER` names (a language gap, shares of
unanswered questions) and the loss.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd

from vlm_core.base.errors import ConfigError

EVAL_FILE = "eval/benchmarks.json"
"""Where the sweep writes every checkpoint's benchmark results, under its experiment folder."""
VAL_LOSS = "val_loss"
LOWER_IS_BETTER = ("gap", "unanswered", "incomplete", "incomplete_pairs", "yes_ratio", "gt_yes_ratio")
"""Metric names (last part) a smaller value of which is better, or that are not a quality (POPE's yes ratio: 0.5
is unbiased); ``--select-by`` refuses the latter."""
NOT_A_QUALITY = ("yes_ratio", "gt_yes_ratio", "n", "copies", "splits")


def read_evals(experiment: str | Path) -> dict[str, dict[str, Any]]:
    path = Path(experiment) / EVAL_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def columns(evals: dict[str, dict[str, Any]]) -> pd.DataFrame:
    """One row per evaluated config: ``config_id`` and every ``BENCH.METRIC`` (image) and headline gain."""
    rows = []
    for config_id, benches in evals.items():
        row: dict[str, Any] = {"config_id": config_id}
        for name, r in benches.items():
            row |= {f"{name}.{k}": v for k, v in r["metrics"]["image"].items() if k != "n"}
            for control, gains in r.get("image_gain", {}).items():
                if r["headline"] in gains:
                    row[f"{name}.{r['headline']}.gain_{control}"] = gains[r["headline"]]
        rows.append(row)
    return pd.DataFrame(rows)


def with_benchmarks(table: pd.DataFrame, evals: dict[str, dict[str, Any]]) -> pd.DataFrame:
    """``table`` (one row per trial) with the benchmark columns of the configs that were evaluated."""
    if not evals:
        return table
    return table.merge(columns(evals), on="config_id", how="left")


def check_select_by(select_by: str, available: list[str] | None = None) -> None:
    """Refuse a ``--select-by`` that is not the val loss or a ``BENCH.METRIC`` quality."""
    if select_by == VAL_LOSS:
        return
    name, dot, metric = select_by.partition(".")
    if not dot or not metric or metric.split(".")[-1] in NOT_A_QUALITY:
        raise ConfigError(f"select_by: {select_by!r} is not 'val_loss' or BENCHMARK.METRIC (e.g. pope.f1, "
                          f"gqa.accuracy, mme.perception)")
    from vlm_core.config import choices

    choices.BENCHMARK.check(name, "select_by")
    if available is not None and select_by not in available:
        raise ConfigError(f"select_by: no {select_by!r} in the results; the benchmarks give "
                          f"{sorted(c for c in available if c.startswith(name + '.'))[:20]}")


def lower_is_better(metric: str) -> bool:
    return metric == VAL_LOSS or metric.split(".")[-1] in LOWER_IS_BETTER


def best_row(part: pd.DataFrame, select_by: str = VAL_LOSS) -> pd.Series | None:
    """The best trial of ``part`` by ``select_by`` (``val_loss``: the lowest ``best_val_loss``), or None."""
    column = "best_val_loss" if select_by == VAL_LOSS else select_by
    if column not in part.columns:
        return None
    done = part.dropna(subset=[column])
    if not len(done):
        return None
    return done.loc[done[column].idxmin() if lower_is_better(select_by) else done[column].idxmax()]


def _cell(v: Any, bold: bool) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    text = f"{v:.4f}" if isinstance(v, float) else str(v)
    return f"**{text}**" if bold else text


def section(evals: dict[str, dict[str, Any]], level: str = "##") -> list[str]:
    """The reports' "Benchmarks" table: config × each benchmark's headline metric with the image, the image's gain
    over each control beside it; the best value per column in bold; then what each benchmark reproduces."""
    if not evals:
        return []
    benches = sorted({b for r in evals.values() for b in r})
    heads: list[tuple[str, str, str]] = []  # (column title, benchmark, key into the row)
    for b in benches:
        first = next(r[b] for r in evals.values() if b in r)
        h = first["headline"]
        heads.append((f"{b} {h}", b, f"{b}.{h}"))
        heads += [(f"gain vs {c}", b, f"{b}.{h}.gain_{c}") for c in first.get("image_gain", {})]
        heads += [(f"{b} {m}", b, f"{b}.{m}") for m in first.get("beside", [])]
    frame = columns(evals).set_index("config_id")
    best = {key: (frame[key].min() if lower_is_better(key) else frame[key].max()) for _, _, key in heads
            if key in frame and key.split(".")[-1] not in NOT_A_QUALITY}
    lines = [f"{level} Benchmarks", "",
             "Each benchmark's headline metric with the image, and how much of it the image carries (the score with "
             "the image minus the score with zeroed features / another question's image), then what reads it right "
             "(POPE's yes ratio: the share of answers read as yes, 0.5 on POPE's balanced questions for an unbiased "
             "model). Best per column in bold.",
             "", "| config | " + " | ".join(t for t, _, _ in heads) + " |", "|---|" + "---|" * len(heads)]
    for config_id, row in frame.iterrows():
        cells = [_cell(row.get(key), key in best and row.get(key) == best[key]) for _, _, key in heads]
        lines.append(f"| `{config_id}` | " + " | ".join(cells) + " |")
    lines += [""]
    for b in benches:
        first = next(r[b] for r in evals.values() if b in r)
        missing = max(r[b]["missing_images"]["n"] for r in evals.values() if b in r)
        budget, reference = first.get("max_new_tokens"), first.get("reference_max_new_tokens")
        tokens = (f"; up to {budget} new tokens an answer (the reference: {reference})" if budget != reference
                  else f"; up to {budget} new tokens an answer" if budget else "")
        lines.append(f"- **{b}**: {first['asked']} questions asked of {first['questions_in_file']} "
                     f"({missing} with a missing image, listed in `eval/`); reproduces {first['reproduces']}{tokens}.")
    return lines + [""]
