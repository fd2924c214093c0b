"""``vlm-sweep report EXPERIMENT_DIR``: what a finished (or running) sweep found, as Markdown, CSV and PNG.

Reads the Tune experiments under ``EXPERIMENT_DIR`` (``stage1/``, ``stage2/``) with
``ray.tune.ExperimentAnalysis`` — no running cluster needed — plus ``lineage.json`` and stage 2's
``asha_decisions.jsonl``, and writes next to them:

- ``report.md``: every trial (config axes, best val loss and its epoch, epochs run, stopped by ASHA and at which
  rung, wall time, tokens/s, error), the best trial per stage, best val loss by each ablation axis, ASHA's
  decisions per rung, the stage-1 checkpoint each continuation started from;
- ``trials.csv``: the same table, one row per trial;
- ``loss_curves.png`` (val and train loss per epoch, per trial and stage) and ``by_axis.png`` (best val loss by
  dataset / dense connector / chat template / warmup schedule / epochs / batch size);
- ``lineage.svg``: the stage-1 → stage-2 lineage with ASHA's decisions (``sweeps.reporting.html_report``);
- ``report.html``: report.md as one self-contained page (figures inlined);
- after a rehearsal (``rehearsal.json``), its section: the cluster's view of the sweep and this machine's run of it;
- for a searched stage (``stage<N>/search.json``), its section and ``search_stage<N>.png``: the best draw, each
  parameter's importance and a parallel-coordinates plot (``sweeps.reporting.search_section``); trials.csv gains a
  column per searched parameter.

    vlm-sweep report runs/sweep
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from vlm_core.base.outputs import atomic_write_text
from vlm_core.data.lengths import lengths_table

from ..scheduling import DECISIONS_FILE, read_decisions
from ..statuses import METRIC
from .benchmark_table import VAL_LOSS, best_row, check_select_by, read_evals, with_benchmarks
from .benchmark_table import section as benchmark_section
from .html_report import write_html, write_lineage_svg
from .markdown import markdown_table
from .rehearsal_section import section as rehearsal_section
from .results import AXES, LINEAGE_FILE, TrialResult, experiment_dirs, read_sweep, trial_table
from .search_section import is_param_column, readable_params
from .search_section import section as search_section


def by_axis(table: pd.DataFrame) -> pd.DataFrame:
    """Best val loss by each ablation axis value, per stage: trials, mean, min."""
    parts = []
    for axis in AXES:
        g = table.dropna(subset=["best_val_loss"]).groupby(["stage", axis])["best_val_loss"]
        agg = g.agg(trials="count", mean="mean", best="min").reset_index().rename(columns={axis: "value"})
        agg.insert(1, "axis", axis)
        agg["value"] = agg["value"].astype(str)
        parts.append(agg)
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def plot_loss_curves(table: pd.DataFrame, curves: dict[str, pd.DataFrame], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    stages = sorted(table["stage"].unique())
    fig, axes = plt.subplots(1, len(stages), figsize=(7 * len(stages), 5), squeeze=False)
    for ax, stage in zip(axes[0], stages):
        for _, row in table[table["stage"] == stage].iterrows():
            df = curves.get(row["config_id"])
            if df is None or df.empty or METRIC not in df:
                continue
            (line,) = ax.plot(df["epoch"], df[METRIC], marker="o", lw=1.2, label=row["config_id"])
            if "train_loss" in df:
                ax.plot(df["epoch"], df["train_loss"], ls="--", lw=0.8, color=line.get_color())
            if row["stopped_by_asha"]:
                ax.plot(df["epoch"].iloc[-1], df[METRIC].iloc[-1], marker="x", ms=12, color="black")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set(title=f"stage {stage}: val loss (solid), train loss (dashed); x = stopped by ASHA",
               xlabel="epoch", ylabel="loss")
        ax.legend(fontsize=6, loc="upper right")
    fig.tight_layout()
    path = out / "loss_curves.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_by_axis(table: pd.DataFrame, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(13, 7))
    done = table.dropna(subset=["best_val_loss"])
    for ax, axis in zip(axes.flat, AXES):
        values = [str(v) for v in sorted(done[axis].unique())]  # numeric axes in numeric order
        for offset, (stage, marker) in zip((-0.12, 0.12), ((1, "o"), (2, "s"))):
            part = done[done["stage"] == stage]
            for i, v in enumerate(values):
                ys = part[part[axis].astype(str) == v]["best_val_loss"]
                if len(ys):
                    ax.scatter([i + offset] * len(ys), ys, marker=marker, alpha=0.6,
                               color=f"C{stage - 1}", label=f"stage {stage}" if i == 0 else None)
                    ax.hlines(ys.mean(), i + offset - 0.1, i + offset + 0.1, color="black")
        ax.set_xticks(range(len(values)), values)
        ax.set(title=axis, ylabel="best val loss")
    axes.flat[0].legend(fontsize=8)
    fig.suptitle("best val loss by ablation axis (points: trials, bars: mean)")
    fig.tight_layout()
    path = out / "by_axis.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


LENGTHS_FILE = "token_lengths.json"
"""Written by the sweep before its trials start (``sweeps.driver.measure_lengths``)."""


def token_length_section(experiment: Path, level: str) -> list[str]:
    """Each variant's token lengths under each trial's formatter, and what ``format.max_length`` did to them."""
    path = experiment / LENGTHS_FILE
    if not path.is_file():
        return []
    rows = json.loads(path.read_text())["rows"]
    return [f"{level} Token lengths (measured before the trials)", "",
            "LLM tokens per sample (text + image tokens) under each trial's formatter. A sample longer than "
            "`max_length` loses whole turns from its end (`cut`); one whose first answer does not fit is `dropped`; "
            "no answer is trained without its end of turn.", "", lengths_table(rows), ""]


def _decisions_lines(decisions: list[dict[str, Any]]) -> list[str]:
    if not decisions:
        return ["No trial reached a rung below its last epoch (nothing to decide).", ""]
    return ["Each row is one rung decision, in the order ASHA made it; `rung_before` is what the rung held when it "
            "decided.", "",
            markdown_table(pd.DataFrame([{**d, "rung_before": json.dumps(d["rung_before"])} for d in decisions])), ""]


def write_report(experiment: str | Path, known: dict[int, list[TrialResult]] | None = None,
                 select_by: str = VAL_LOSS) -> dict[str, Any]:
    """Write report.md, trials.csv, loss_curves.png and by_axis.png into ``experiment``; return a summary. With
    benchmark results (``eval/benchmarks.json``), trials.csv carries their columns, the report their table, and each
    stage's best config is the best by ``select_by`` (``val_loss``, or a ``BENCH.METRIC``)."""
    root = Path(experiment)
    table, curves = trial_table(read_sweep(root, known))
    evals = read_evals(root)
    full = with_benchmarks(table, evals)
    check_select_by(select_by, list(full.columns) if evals else None)
    full.to_csv(root / "trials.csv", index=False)
    axis_table = by_axis(table)
    figures = [plot_loss_curves(table, curves, root), plot_by_axis(table, root)]
    sdirs = experiment_dirs(root)
    decisions = read_decisions(sdirs[2] / DECISIONS_FILE) if 2 in sdirs else []
    searched, search_figures = search_section(table, sdirs, root)
    figures += search_figures
    lineage_figure = write_lineage_svg(full, decisions, root, select_by)
    figures += [lineage_figure] if lineage_figure else []
    lineage = json.loads((root / LINEAGE_FILE).read_text()) if (root / LINEAGE_FILE).is_file() else {}
    lines = [f"# Sweep report: `{root.resolve()}`", ""]
    lines += token_length_section(root, "##")
    best: dict[int, str] = {}
    for stage in sorted(table["stage"].unique()):
        part = table[table["stage"] == stage]
        counts = part["status"].value_counts().to_dict()
        lines += [f"## Stage {stage}: {len(part)} trials ({', '.join(f'{v} {k}' for k, v in counts.items())})", ""]
        b = best_row(full[full["stage"] == stage], select_by) if select_by != VAL_LOSS else None
        if b is not None:
            best[int(stage)] = b["config_id"]
            lines += [f"Best by {select_by}: `{b['config_id']}` — {select_by} {b[select_by]:.4f}, val loss "
                      f"{b['best_val_loss']:.4f} at epoch {b['best_epoch']}.", ""]
        elif (b := best_row(part)) is not None:
            best[int(stage)] = b["config_id"]
            by = "" if select_by == VAL_LOSS else f" ({select_by}: not evaluated in this stage)"
            lines += [f"Best: `{b['config_id']}` — val loss {b['best_val_loss']:.4f} at epoch {b['best_epoch']}"
                      f"{by}.", ""]
        optional = ["parent", "error", "asha_rung"]
        unused = [c for c in optional if part[c].isna().all()]
        unused += ["stopped_by_asha"] if not part["stopped_by_asha"].any() else []
        unused += [c for c in part.columns if is_param_column(c) and part[c].isna().all()]  # another stage's search
        unused += ["restarts"] if not part["restarts"].any() else []  # shown when a failure restarted a trial
        shown = readable_params(part.drop(columns=["stage"] + unused))
        restarted = part[part["restarts"] > 0]
        if len(restarted):
            lines += [f"Restarted after a failure (a lost node, a crashed worker) and resumed from its last "
                      f"checkpoint: {', '.join(f'`{r.config_id}` ({r.restarts}×)' for r in restarted.itertuples())}.",
                      ""]
        lines += [markdown_table(shown), ""]
    lines += benchmark_section(evals)
    lines += searched
    if len(axis_table):
        lines += ["## Best val loss by ablation axis", "", markdown_table(axis_table), ""]
    if 1 in sdirs and (stage1_decisions := read_decisions(sdirs[1] / DECISIONS_FILE)):
        lines += ["## ASHA (stage 1)", ""] + _decisions_lines(stage1_decisions)
    if 2 in sdirs:
        lines += ["## ASHA (stage 2)", ""] + _decisions_lines(decisions)
        starts = table[table["stage"] == 2][["config_id", "parent"]].copy()
        starts["start_checkpoint"] = [lineage.get(p, {}).get("checkpoint") for p in starts["parent"]]
        starts["parent_val_loss"] = [lineage.get(p, {}).get("best_val_loss") for p in starts["parent"]]
        lines += ["## Stage-2 lineage", "", markdown_table(starts), ""]
    lines += rehearsal_section(root)
    lines += ["## Figures", ""] + [f"![{f.stem}]({f.name})" for f in figures] + [""]
    atomic_write_text(root / "report.md", "\n".join(lines))
    page = write_html(root / "report.md")
    return {"report": str(root / "report.md"), "html": str(page), "csv": str(root / "trials.csv"),
            "figures": [str(f) for f in figures], "trials": int(len(table)),
            "stopped_by_asha": table.loc[table["stopped_by_asha"], "config_id"].tolist(),
            "errors": table.loc[table["status"] == "ERROR", "config_id"].tolist(), "select_by": select_by,
            "best": best}
