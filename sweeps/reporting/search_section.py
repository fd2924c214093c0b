"""The sweep report's section on a searched stage (``stage<N>/search.json``, ``sweeps.search``): what was searched
and how, the best draw, each searched parameter's importance, and a parallel-coordinates plot of the draws against
the metric.

Importance is Optuna's fANOVA (``optuna.importance.FanovaImportanceEvaluator``: a random forest fitted to the
trials' (parameters → best ``val_loss``), each parameter's share of the variance it explains), computed on an
in-memory Optuna study rebuilt from the trial table, whatever searcher drew the trials. Every trial with a finite
best ``val_loss`` counts, ASHA-stopped ones at the value they were stopped on (what ASHA judged them by). With
fewer than :data:`MIN_TRIALS` such trials there is nothing to attribute, and the section says so.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd

from ..search.algorithms import SEARCH_FILE
from ..search.space import format_draw, to_plain
from .markdown import markdown_table

MIN_TRIALS = 3
"""Fewest finished trials an importance is computed from."""


def is_param_column(column: str) -> bool:
    """A searched parameter's column in trials.csv (``train.lr``, ``model.projector.name``; a benchmark's columns
    are ``BENCH.METRIC``)."""
    return column.startswith(("train.", "model."))


def readable_params(table: pd.DataFrame) -> pd.DataFrame:
    """The table with its searched-parameter columns as text with 3 significant digits: a learning rate of 6.4e-05
    is not a 4-decimal 0.0001."""
    out = table.copy()
    for c in out.columns:
        if is_param_column(c) and pd.api.types.is_float_dtype(out[c]):
            out[c] = [f"{v:.3g}" if pd.notna(v) else "" for v in out[c]]
    return out


def read_search(experiment_dir: Path) -> dict[str, Any] | None:
    """A stage's ``search.json`` when the stage searched a space (None for a grid without one)."""
    path = experiment_dir / SEARCH_FILE
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    return record if record.get("space") else None


def _distribution(kind: str, args: list[Any]):
    import optuna.distributions as d

    if kind == "loguniform":
        return d.FloatDistribution(args[0], args[1], log=True)
    if kind == "uniform":
        return d.FloatDistribution(args[0], args[1])
    if kind == "randint":
        return d.IntDistribution(args[0], args[1])
    return d.CategoricalDistribution(args)


def importance(table: pd.DataFrame, space: dict[str, dict[str, list[Any]]], seed: int = 0) -> dict[str, float]:
    """fANOVA importance of each searched parameter for best ``val_loss`` (sums to 1); {} when too few trials or
    no parameter varied."""
    import optuna

    done = table.dropna(subset=["best_val_loss"])
    done = done[[math.isfinite(v) for v in done["best_val_loss"]]]
    names = [n for n in space if n in done and done[n].nunique() > 1]
    if len(done) < MIN_TRIALS or not names:
        return {}
    dists = {n: _distribution(*next(iter(space[n].items()))) for n in names}
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="minimize")
    for _, row in done.iterrows():
        params = {n: to_plain(row[n]) for n in names}
        study.add_trial(optuna.trial.create_trial(params=params, distributions=dists,
                                                  value=float(row["best_val_loss"])))
    return {k: float(v) for k, v in optuna.importance.get_param_importances(
        study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=seed), params=names).items()}


def plot_parallel(table: pd.DataFrame, space: dict[str, dict[str, list[Any]]], stage: int, out: Path) -> Path | None:
    """``search_stage<N>.png``: one line per trial across the searched parameters (each axis scaled to its range;
    log axes for log-uniform ones, categories in their listed order) and its best val loss, coloured by it."""
    done = table.dropna(subset=["best_val_loss"])
    names = [n for n in space if n in done]
    if done.empty or not names:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols, labels = [], []
    for n in names:
        (kind, args), = space[n].items()
        v = done[n]
        if kind in ("choice", "grid"):
            order = {json.dumps(a): i for i, a in enumerate(args)}
            x = v.map(lambda a: order.get(json.dumps(to_plain(a)), math.nan))
            lo, hi = 0, max(1, len(args) - 1)
            labels.append(f"{n}\n{args[0]} … {args[-1]}")
        else:
            log = kind == "loguniform"
            x = v.astype(float).map(math.log10) if log else v.astype(float)
            lo, hi = (math.log10(args[0]), math.log10(args[1])) if log else (args[0], args[1])
            labels.append(f"{n}{' (log)' if log else ''}\n{args[0]:g} … {args[1]:g}")
        cols.append((x - lo) / ((hi - lo) or 1))
    loss = done["best_val_loss"].astype(float)
    lmin, lmax = loss.min(), loss.max()
    cols.append((loss - lmin) / ((lmax - lmin) or 1))
    labels.append(f"best val loss\n{lmin:.4g} … {lmax:.4g}")
    fig, ax = plt.subplots(figsize=(2.2 * len(labels) + 2, 4.5))
    cmap = plt.get_cmap("viridis_r")
    for i in range(len(done)):
        ys = [c.iloc[i] for c in cols]
        ax.plot(range(len(labels)), ys, color=cmap(float(cols[-1].iloc[i])), alpha=0.8, marker="o")
    ax.set_xticks(range(len(labels)), labels, fontsize=8)
    ax.set_yticks([0, 1], ["low", "high"])
    for i in range(len(labels)):
        ax.axvline(i, color="grey", lw=0.5)
    sm = plt.cm.ScalarMappable(cmap=cmap, norm=plt.Normalize(lmin, lmax))
    fig.colorbar(sm, ax=ax, label="best val loss")
    ax.set_title(f"stage {stage}: searched parameters against best val loss (one line per trial)")
    fig.tight_layout()
    path = out / f"search_stage{stage}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def section(table: pd.DataFrame, stage_dirs: dict[int, Path], out: Path, level: str = "##",
            draw: bool = True) -> tuple[list[str], list[Path]]:
    """Markdown lines and figures for every searched stage (none for a grid); ``draw=False``: the lines only (the
    study report, whose sweep report drew the figures)."""
    lines: list[str] = []
    figures: list[Path] = []
    for stage, edir in sorted(stage_dirs.items()):
        record = read_search(edir)
        if record is None:
            continue
        space = record["space"]
        part = table[table["stage"] == stage]
        described = "; ".join(f"`{n}` {k} {json.dumps(a)}" for n, d in space.items() for k, a in d.items())
        lines += [f"{level} Search (stage {stage})", "",
                  f"{record['algorithm']} search, {len(part)} of {record['trials']} trials, over: {described}.", ""]
        ranked = part.dropna(subset=["best_val_loss"]).sort_values("best_val_loss")
        if len(ranked):
            b = ranked.iloc[0]
            drawn = format_draw({n: to_plain(b[n]) for n in space}, code=True)
            lines += [f"Best draw: `{b['config_id']}` ({drawn}), val loss {b['best_val_loss']:.4f}.", ""]
            top = ranked[["config_id", *[n for n in space if n in ranked], "best_val_loss", "epochs_run", "status"]]
            lines += [markdown_table(readable_params(top.head(10).reset_index(drop=True))), ""]
        imp = importance(part, space)
        if imp:
            lines += ["Importance of each searched parameter for the best val loss (Optuna's fANOVA on these "
                      "trials; shares sum to 1):", "",
                      markdown_table(pd.DataFrame([{"parameter": k, "importance": round(v, 3)}
                                                   for k, v in imp.items()])), ""]
        else:
            lines += [f"Importance: not computed (it needs {MIN_TRIALS} or more finished trials whose searched "
                      f"parameters differ).", ""]
        fig = plot_parallel(part, space, stage, out) if draw else None
        if fig:
            figures.append(fig)
    return lines, figures
