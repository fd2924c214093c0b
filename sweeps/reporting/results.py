"""A sweep's trial results, read once: every trial of a stage from its Tune experiment folder with
``ray.tune.ExperimentAnalysis`` (no running cluster needed), with its per-epoch curve, the best checkpoint still on
storage, how it ended and whether ASHA stopped it. The one source of ``trials.json``, ``lineage.json``,
``trials.csv``, the sweep report, the study report's tables and the evaluation's list of checkpoints.

Two views of a trial, from the same fields: :meth:`TrialResult.summary` (``trials.json``, the lineage, the
evaluation; ``status`` is how it ended: ``finished``, ``stopped_early``, ``non_finite_loss`` or ``error``) and
:meth:`TrialResult.table_row` (``trials.csv`` and the reports; ``status`` is Tune's, or ``NON_FINITE_LOSS``).

Words: a *training stage* (1: projector, 2: projector + LLM) runs as one Tune *experiment* (``OUT/stage<N>/``) of
*trials*; ``read_trials`` reads one experiment, ``read_sweep`` all of a sweep's.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from vlm_core.base.errors import CheckpointError, ConfigError
from vlm_core.training.checkpoint import read_meta

from ..scheduling import DECISIONS_FILE, read_decisions
from ..statuses import METRIC, STATUS_NON_FINITE
from ..trial_config import trial_from_config

LINEAGE_FILE = "lineage.json"
"""Each stage-1 config's best checkpoint (and the stage-2 trials that continue it), in the experiment folder."""
AXES = ("dataset", "dense", "chat", "scheduler", "epochs", "batch_size")
STAGES = (1, 2)
TABLE_COLUMNS = ["stage", "paper_id", "config_id", "dataset", "dense", "chat", "scheduler", "epochs", "batch_size",
                 "profile", "status", "best_val_loss", "best_epoch", "final_train_loss", "epochs_run", "restarts",
                 "stopped_by_asha", "asha_rung", "steps", "samples_seen", "wall_s", "tokens_per_s", "samples_per_s",
                 "pad_fraction", "parent", "error"]
OUTCOMES = ("finished", "stopped_early", STATUS_NON_FINITE, "error")


@dataclass(frozen=True)
class KeptCheckpoint:
    """A checkpoint of a trial still on storage, with what it recorded of itself."""

    path: str
    epoch: float | None
    val_loss: float | None


@dataclass
class TrialResult:
    """One trial of one stage, as Tune recorded it."""

    stage: int
    config: dict[str, Any]
    """The trial's Tune parameters (``config_id``, ``spec``, ``worker``, ...)."""
    tune_status: str
    """Tune's status: ``TERMINATED``, ``ERROR``, ..."""
    path: str
    curve: pd.DataFrame = field(repr=False)
    """Every result it reported, one row per epoch (``epoch``, ``val_loss``, ``train_loss``, ``checkpoint_path``,
    ...); empty when it reported nothing."""
    error_text: str | None = None
    """The traceback Tune saved (``error.txt``) when the trial failed."""
    asha_stop: dict[str, Any] | None = None
    """ASHA's recorded decision to stop it (rung, val loss), if any."""

    # ---- what it was
    @property
    def config_id(self) -> str:
        return self.config["config_id"]

    @property
    def spec(self) -> dict[str, Any]:
        return self.config["spec"]

    @property
    def last(self) -> pd.Series | None:
        return self.curve.iloc[-1] if len(self.curve) else None

    def _last(self, key: str) -> Any:
        last = self.last
        return None if last is None or key not in self.curve or pd.isna(last[key]) else last[key]

    # ---- how it ended
    @property
    def failed(self) -> bool:
        return self.tune_status == "ERROR"

    @property
    def non_finite(self) -> bool:
        return self._last("status") == STATUS_NON_FINITE

    @property
    def epochs_run(self) -> int | None:
        epoch = self._last("epoch")
        return None if epoch is None else int(epoch)

    @property
    def epochs_planned(self) -> int | None:
        planned = self._last("epochs_planned")
        return None if planned is None else int(planned)

    @property
    def stopped_early(self) -> bool:
        """Ended before its planned epochs without failing: ASHA stopped it, or its loss stopped being finite."""
        run, planned = self.epochs_run, self.epochs_planned
        return bool(planned and run is not None and run < planned and not self.failed)

    @property
    def outcome(self) -> str:
        return ("error" if self.failed else STATUS_NON_FINITE if self.non_finite
                else "stopped_early" if self.stopped_early else "finished")

    @property
    def done(self) -> bool:
        """Nothing left to run: it failed, ran all its epochs, diverged or was stopped by ASHA (after Ctrl-C, Tune
        marks the trials it cut short as terminated, so its status alone cannot tell)."""
        run, planned = self.epochs_run, self.epochs_planned
        complete = run is not None and planned is not None and run >= planned
        return self.failed or complete or self.non_finite or self.asha_stop is not None

    @property
    def non_finite_message(self) -> str | None:
        """What the training loop said when the loss stopped being finite (the step, the loss)."""
        return self._last("message") if self.non_finite else None

    # ---- what it reached
    def _finite_losses(self) -> pd.Series | None:
        if METRIC not in self.curve:
            return None
        losses = self.curve[METRIC].replace([math.inf, -math.inf], math.nan)
        return losses if losses.notna().any() else None

    @property
    def best_row(self) -> pd.Series | None:
        losses = self._finite_losses()
        return None if losses is None else self.curve.loc[losses.idxmin()]

    @functools.cached_property
    def kept_checkpoints(self) -> list[KeptCheckpoint]:
        """Every checkpoint of the trial still on storage, oldest first, with the epoch and val loss it recorded
        itself (``checkpoint.json``): the reported ones and the others in their run folder. After ``--resume``
        Tune's history of a trial it restored holds only what was reported since, while the run folder still keeps
        the best checkpoint from before. Read once per result (the summary and the table row both use it)."""
        if "checkpoint_path" not in self.curve:
            return []
        reported = {Path(p) for p in self.curve["checkpoint_path"] if isinstance(p, str) and "://" not in p}
        folders = {p.parent for p in reported if p.parent.is_dir()}
        found = {*reported, *(c for folder in folders for c in folder.glob("checkpoint_*"))}
        kept = []
        for path in sorted((p for p in found if p.is_dir()), key=lambda p: (p.parent, p.name)):
            try:
                meta = read_meta(path, verify=False)
            except (CheckpointError, OSError, ValueError):  # a half-written or foreign folder
                continue
            loss = meta.get("metrics", {}).get(METRIC)
            finite = isinstance(loss, (int, float)) and math.isfinite(loss)
            kept.append(KeptCheckpoint(str(path), meta.get("epoch"), float(loss) if finite else None))
        return kept

    def best_checkpoint(self) -> tuple[str | None, float | None]:
        """(path, val_loss) of its best checkpoint still on storage, by the val loss each recorded (the oldest of
        equal ones); the newest when none recorded one (no validation data)."""
        kept = self.kept_checkpoints
        if not kept:
            return None, None
        scored = [k for k in kept if k.val_loss is not None]
        if not scored:
            return kept[-1].path, None
        best = min(scored, key=lambda k: k.val_loss)
        return best.path, best.val_loss

    def best(self) -> tuple[float | None, float | None]:
        """(val loss, epoch) of the trial's best epoch: over its reported results and its kept checkpoints (which
        remember epochs reported before a resume)."""
        candidates = [(k.val_loss, k.epoch) for k in self.kept_checkpoints if k.val_loss is not None]
        row = self.best_row
        if row is not None:
            candidates.append((float(row[METRIC]), row.get("epoch")))
        if not candidates:
            return None, None
        return min(candidates, key=lambda c: c[0])

    @property
    def best_val_loss(self) -> float | None:
        return self.best()[0]

    @property
    def nodes(self) -> list[str]:
        """The Ray nodes its workers ran on, in order (``node_id`` of every report; a restart may move it)."""
        if "node_id" not in self.curve:
            return []
        return list(dict.fromkeys(n for n in self.curve["node_id"] if isinstance(n, str)))

    @property
    def restarts(self) -> int:
        """How many times its training started again after a failure (a lost node, a crashed worker): each start
        of a worker reports its own ``worker_started_at``."""
        if "worker_started_at" not in self.curve:
            return 0
        return max(0, self.curve["worker_started_at"].dropna().nunique() - 1)

    @property
    def steps(self) -> int:
        step = self._last("step")
        return 0 if step is None else int(step)

    @property
    def samples_per_step(self) -> int:
        train = self.config.get("worker", {}).get("train", {})
        return int(train.get("batch_size", self.spec["batch_size"])) * int(train.get("grad_accum", 1))

    def _mean(self, key: str) -> float:
        return float(self.curve[key].mean()) if key in self.curve and len(self.curve) else math.nan

    # ---- the two views
    def summary(self) -> dict[str, Any]:
        """``trials.json``'s row: how it ended, its best checkpoint on storage, what it reached. The lineage (stage
        1) and the evaluation (stage 2) read these rows."""
        ckpt, ckpt_loss = self.best_checkpoint()
        return {"config_id": self.config_id, "dataset": self.spec["dataset"], "status": self.outcome,
                "best_checkpoint": ckpt, "best_checkpoint_val_loss": ckpt_loss,
                "error": (self.error_text or "")[:500] if self.failed else self.non_finite_message,
                "best_val_loss": self.best_val_loss, "epochs_run": self.epochs_run,
                "epochs_planned": self.epochs_planned, "stopped_early": self.stopped_early and not self.non_finite,
                "tokens_per_s": self._last("tokens_per_s"), "samples_per_s": self._last("samples_per_s"),
                "restarts": self.restarts, "nodes": self.nodes, "path": self.path}

    def table_row(self) -> dict[str, Any]:
        """``trials.csv``'s row (``TABLE_COLUMNS``): the axes, Tune's status, best and final losses, ASHA's stop,
        steps and samples trained, wall time and mean throughput."""
        (best_loss, best_epoch), last = self.best(), self.last
        spec = self.spec
        return {
            "stage": self.stage, "paper_id": spec.get("paper_id"), "config_id": self.config_id,
            **{a: spec[a] for a in AXES}, "profile": spec["profile"],
            "status": STATUS_NON_FINITE.upper() if self.non_finite else self.tune_status,
            "best_val_loss": best_loss if best_loss is not None else math.nan,
            "best_epoch": int(best_epoch) if best_epoch is not None else None,
            "final_train_loss": float(last["train_loss"]) if last is not None and "train_loss" in self.curve
            else math.nan,
            "epochs_run": self.epochs_run or 0, "restarts": self.restarts,
            "stopped_by_asha": self.asha_stop is not None,
            "asha_rung": self.asha_stop["rung"] if self.asha_stop else None,
            "steps": self.steps, "samples_seen": self.steps * self.samples_per_step,
            "wall_s": float(last["time_total_s"]) if last is not None and "time_total_s" in self.curve else math.nan,
            **{k: self._mean(k) for k in ("tokens_per_s", "samples_per_s", "pad_fraction")},
            "parent": spec.get("parent"),
            "error": self.non_finite_message if self.non_finite else _last_line(self.error_text),
            **self.params}

    @property
    def params(self) -> dict[str, Any]:
        """A searched trial's drawn parameters (dotted field → value); empty in a grid."""
        return dict(self.config.get("params") or {})


def _last_line(text: str | None) -> str | None:
    if text is None:
        return None
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1][:300] if lines else "error (no message)"


def _error_text(trial) -> str | None:
    if trial.status != "ERROR":
        return None
    path = Path(trial.path) / "error.txt"
    return path.read_text() if path.is_file() else str(getattr(trial, "error_file", None) or "")


def experiment_dirs(sweep_dir: str | Path) -> dict[int, Path]:
    """The Tune experiment of each training stage under a sweep's ``--out`` folder (``stage1/``, ``stage2/``)."""
    root = Path(sweep_dir)
    found = {s: root / f"stage{s}" for s in STAGES if (root / f"stage{s}").is_dir()}
    if not found:
        raise ConfigError(f"report: {root} holds no stage1/ or stage2/ Tune experiment; pass the --out folder of "
                          f"`vlm-sweep sweep`")
    return found


def read_trials(experiment_dir: str | Path, stage: int) -> list[TrialResult]:
    """Every trial of the Tune experiment in ``experiment_dir`` (training stage ``stage``), with ASHA's recorded
    stops."""
    from ray.tune import ExperimentAnalysis

    experiment_dir = Path(experiment_dir).resolve()  # Ray wants an absolute path or a URI
    analysis = ExperimentAnalysis(str(experiment_dir))
    stops = {d["trial"]: d for d in read_decisions(experiment_dir / DECISIONS_FILE) if d["decision"] == "stop"}
    frames = analysis.trial_dataframes
    out = []
    for trial in analysis.trials:
        conf = trial_from_config(trial.config).to_dict()
        df = frames.get(trial.trial_id)
        df = df if df is not None and not df.empty and "epoch" in df else pd.DataFrame(columns=["epoch"])
        out.append(TrialResult(stage, conf, trial.status, str(trial.path), df.reset_index(drop=True),
                               _error_text(trial), stops.get(conf["config_id"])))
    return out


def read_sweep(sweep_dir: str | Path, known: dict[int, list[TrialResult]] | None = None
               ) -> dict[int, list[TrialResult]]:
    """Every trial of every training stage found under a sweep's ``--out`` folder; the stages in ``known`` (just
    read by the driver) are not read again."""
    known = known or {}
    return {stage: known[stage] if stage in known else read_trials(edir, stage)
            for stage, edir in experiment_dirs(sweep_dir).items()}


def trial_table(results: dict[int, list[TrialResult]]) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """(one row per trial, config id → its per-epoch results), over every stage; a searched sweep's table has a
    column per searched parameter (its dotted field name), empty for trials that did not search it."""
    rows = [t.table_row() for trials in results.values() for t in trials]
    curves = {t.config_id: t.curve for trials in results.values() for t in trials}
    searched = sorted({k for trials in results.values() for t in trials for k in t.params})
    table = pd.DataFrame(rows, columns=TABLE_COLUMNS + searched)  # a column per searched parameter
    for col in ("paper_id", "best_epoch", "asha_rung", "steps", "samples_seen"):
        table[col] = table[col].astype("Int64")  # integers with gaps, not floats
    return table.sort_values(["stage", "paper_id", "config_id"], na_position="last").reset_index(drop=True), curves


def record_lineage(rows: list[dict[str, Any]], lineage: dict[str, Any]) -> dict[str, Any]:
    """config id → best stage-1 checkpoint (by validation loss) and its metrics, from the trials'
    :meth:`TrialResult.summary` rows."""
    lineage = dict(lineage)
    for row in rows:
        entry = {"checkpoint": row["best_checkpoint"], "best_val_loss": row["best_checkpoint_val_loss"],
                 "epochs": row["epochs_run"], "trial_path": row["path"]}
        if row["error"] or row["best_checkpoint"] is None:
            entry["error"] = row["error"] or "no checkpoint reported"
        if row["status"] == STATUS_NON_FINITE:
            entry["status"] = STATUS_NON_FINITE  # its best checkpoint (if any) predates the divergence
        lineage[row["config_id"]] = entry
    return lineage
