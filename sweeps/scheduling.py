"""ASHA for stage 2, with every rung decision written down (``<stage dir>/asha_decisions.jsonl``).

Ray's ``ASHAScheduler`` decides, each time a trial reaches a rung (``grace_period * reduction_factor**k``
epochs, below ``max_t``), whether it continues or stops; it keeps no record a user can read afterwards. This
subclass appends one JSON line per decision (trial, rung, its ``val_loss``, continue/stop, and the values the
rung held before), which ``vlm-sweep report`` turns into the "stopped by ASHA at rung N" column.

    python -c "from sweeps.scheduling import rung_milestones; print(rung_milestones(1, 2, 3))"   # [1, 2]
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ray.tune.schedulers import ASHAScheduler, TrialScheduler


def rung_milestones(grace_period: int, reduction_factor: int, max_t: int) -> list[int]:
    """The epochs at which ASHA compares trials (Ray's single-bracket layout)."""
    out, m = [], grace_period
    while m < max_t:
        out.append(m)
        m *= reduction_factor
    return out


class RecordingASHA(ASHAScheduler):
    """``ASHAScheduler`` that also appends each rung decision to ``decisions_file``."""

    def __init__(self, decisions_file: str, *, time_attr: str, max_t: int, grace_period: int,
                 reduction_factor: int) -> None:
        # metric and mode come from TuneConfig (Tune refuses them in both places)
        super().__init__(time_attr=time_attr, max_t=max_t, grace_period=grace_period,
                         reduction_factor=reduction_factor)
        self.decisions_file = decisions_file
        self.milestones = set(rung_milestones(grace_period, reduction_factor, max_t))
        self.seen: dict[int, dict[str, float]] = {}  # rung → config id → metric, as the decisions were made

    def on_trial_result(self, tune_controller, trial, result: dict[str, Any]) -> str:
        action = super().on_trial_result(tune_controller, trial, result)
        rung = result.get(self._time_attr)
        if rung in self.milestones and self._metric in result:
            cid = trial.config.get("trial", {}).get("config_id", trial.trial_id)
            before = dict(self.seen.setdefault(rung, {}))
            self.seen[rung][cid] = float(result[self._metric])
            record = {"trial": cid, "rung": rung, self._metric: float(result[self._metric]),
                      "decision": "stop" if action == TrialScheduler.STOP else "continue", "rung_before": before}
            path = Path(self.decisions_file)
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("a") as f:
                f.write(json.dumps(record) + "\n")
        return action


def read_decisions(path: str | Path) -> list[dict[str, Any]]:
    p = Path(path)
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()] if p.is_file() else []
