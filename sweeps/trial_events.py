"""The console's line per trial event: a Tune callback that says when each trial starts, finishes (with its best
val loss), is stopped by ASHA at a rung, stops on a non-finite loss, fails (its error and log), or restarts, each
with the stage's count and a time-left estimate. Lines go through ``vlm_core.base.logs.event`` (stdout and the log
file); on an interactive console a progress bar of the stage's trials stays below them
(``vlm_core.base.logs.ProgressBar``).
"""

from __future__ import annotations

import math
import time
from typing import Any

from ray.tune import Callback

from vlm_core.base.logs import ProgressBar, event

from .search.space import format_draw
from .statuses import METRIC, STATUS_NON_FINITE
from .trial_config import trial_identity


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60} min {seconds % 60:02d} s" if seconds >= 60 else f"{seconds} s"


def _name(trial) -> str:
    cid, _ = trial_identity(trial.config)
    return cid or str(trial)


class TrialEvents(Callback):
    """One line per event of a stage's trials (``total`` of them)."""

    def __init__(self, stage: int, total: int):
        self.stage, self.total = stage, total
        self.started_at = time.monotonic()
        self.started: set[str] = set()
        self.ended: set[str] = set()
        self.best: dict[str, float] = {}
        self.bar = ProgressBar(total, f"stage {stage}", "trials")

    def counts(self) -> dict[str, int]:
        return {"started": len(self.started), "ended": len(self.ended), "total": self.total}

    def _say(self, trial, what: str) -> None:
        event("stage %d · %s %s", self.stage, _name(trial), what)

    def _left(self) -> str:
        done = len(self.ended)
        if not done or done >= self.total:
            return f"{done}/{self.total} done"
        per = (time.monotonic() - self.started_at) / done
        return f"{done}/{self.total} done, ~{_duration(per * (self.total - done))} left"

    def on_trial_start(self, iteration: int, trials: list, trial, **info: Any) -> None:
        name = _name(trial)
        again = name in self.started
        self.started.add(name)
        params = (trial.config.get("params") or {}) if isinstance(trial.config, dict) else {}
        drawn = f": {format_draw(dict(sorted(params.items())))}" if params else ""
        self._say(trial, "resumed" if again else f"started ({len(self.started)}/{self.total}){drawn}")

    def on_trial_result(self, iteration: int, trials: list, trial, result: dict, **info: Any) -> None:
        value = result.get(METRIC)
        if isinstance(value, (int, float)) and math.isfinite(value):
            self.best[_name(trial)] = min(value, self.best.get(_name(trial), math.inf))

    def on_trial_complete(self, iteration: int, trials: list, trial, **info: Any) -> None:
        name, last = _name(trial), trial.last_result or {}
        self.ended.add(name)
        best = self.best.get(name)
        best_text = f"best val loss {best:.4f}" if best is not None else "no val loss"
        epoch, planned = last.get("epoch"), last.get("epochs_planned")
        if last.get("status") == STATUS_NON_FINITE:
            what = f"stopped: {last.get('message', 'non-finite loss')}"
        elif epoch is not None and planned is not None and epoch < planned:
            what = f"stopped by ASHA after epoch {epoch} of {planned}, {best_text}"
        else:
            what = f"finished, {best_text}"
        self._say(trial, f"{what} ({self._left()})")
        self.bar.step(note=f"best so far {min(self.best.values()):.4f}" if self.best else None)

    def on_trial_error(self, iteration: int, trials: list, trial, **info: Any) -> None:
        self.ended.add(_name(trial))
        where = getattr(trial, "error_file", None) or getattr(trial, "path", None) or "its trial folder"
        error = trial.get_error() if hasattr(trial, "get_error") else None
        reason = ([line for line in str(error or "").splitlines() if line.strip()] or ["see the log"])[-1].strip()
        self._say(trial, f"FAILED: {reason[:200]} (log: {where}; {self._left()})")
        self.bar.step()

    def on_trial_recover(self, iteration: int, trials: list, trial, **info: Any) -> None:
        self._say(trial, "failed; restarting from its last checkpoint")

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self.bar.close()
