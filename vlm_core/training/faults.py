"""Fault injection: make a training run fail on purpose, the way a preemptible cluster or a bad batch does, to
test what survives (``tests/test_faults.py``). Off unless a run's config carries a ``faults`` entry; the sweep
driver copies it from the ``VLM_SWEEP_FAULTS`` environment variable (JSON) into every trial's config, where
``params.json`` shows it.

    VLM_SWEEP_FAULTS='{"nan_loss_at_step": 2, "only": "s1-20kUmap"}' vlm-sweep sweep --preset tiny ...
    VLM_SWEEP_FAULTS='{"kill_at_step": 5, "once_marker": "/tmp/killed"}' vlm-sweep sweep --preset tiny ...
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..config import from_dict

log = logging.getLogger(__name__)

ENV = "VLM_SWEEP_FAULTS"


@dataclass
class Faults:
    kill_at_step: int | None = None
    """After this optimizer step the process dies at once (``os._exit``), as a preempted node's worker does."""
    once_marker: str | None = None
    """With ``kill_at_step``: die only if this file does not exist yet (it is created first), so the restarted
    worker runs through."""
    nan_loss_at_step: int | None = None
    """The loss of this optimizer step (counted from 0) becomes NaN."""
    only: str | None = None
    """Apply only to runs whose name contains this (a sweep trial's config id); None: every run."""
    rank: int | None = None
    """In a data-parallel run, poison the loss on this rank only; None: on every rank."""
    sleep_after_step_s: float | None = None
    """After every optimizer step the process sleeps this long (a slow node), so a test can interrupt a run that
    would otherwise end within a second."""

    def applies_to(self, run_name: str) -> bool:
        return self.only is None or self.only in run_name

    def poison_loss(self, step: int, rank: int = 0) -> bool:
        return (self.nan_loss_at_step is not None and step == self.nan_loss_at_step
                and (self.rank is None or rank == self.rank))

    def after_step(self, step: int) -> None:
        if self.sleep_after_step_s:
            time.sleep(self.sleep_after_step_s)
        if self.kill_at_step is None or step != self.kill_at_step:
            return
        if self.once_marker:
            marker = Path(self.once_marker)
            if marker.exists():
                return
            marker.write_text(str(os.getpid()))
        log.warning("fault injection: killing this process after step %d", step)
        logging.shutdown()
        os._exit(17)

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


def from_config(entry: dict[str, Any] | None, run_name: str = "") -> Faults | None:
    """The faults a run's config asks for (None when none, or when ``only`` names another run)."""
    if not entry:
        return None
    faults = from_dict(Faults, entry, "faults")
    return faults if faults.applies_to(run_name) else None


def from_env() -> dict[str, Any] | None:
    """``VLM_SWEEP_FAULTS`` as a dict (validated), or None when unset."""
    raw = os.environ.get(ENV)
    if not raw:
        return None
    return from_dict(Faults, json.loads(raw), "faults").to_dict()
