"""ASHA for stage 2 (and stage 1 when it searches, ``--scheduler``), with every rung decision written down once
(``<stage dir>/asha_decisions.jsonl``).

Ray's ``ASHAScheduler`` decides, each time a trial reaches a rung (``grace_period * reduction_factor**k``
epochs, below ``max_t``), whether it continues or stops; it keeps no record a user can read afterwards. This
subclass appends one JSON line per decision (trial, rung, its ``val_loss``, continue/stop, the values the rung
held before, and ``config_hash``), which ``vlm-sweep report`` turns into the "stopped by ASHA at rung N" column.

The file is also the scheduler's memory across a lost driver. ``Tuner.restore`` (``--resume``) brings back
trials, but not ASHA's rungs (Tune never saves a scheduler's state), and a SIGKILLed driver may have decided a
rung that its last saved experiment state does not show yet. So a decision is keyed by the trial's stable
identity, its config id and ``config_hash`` (the hash that also names its Train run; Tune may re-create a trial
under a new trial id), never by Tune's trial id, and on resume:

- every restored trial's recorded rung values are put back into ASHA's rungs before any trial runs, so a trial
  reaching a rung for the first time is compared with what the rung held in the interrupted run;
- a result at a rung the trial already has a decision for (a replay) gets the recorded decision, not a new one,
  and writes no line;
- a restored trial with a recorded stop is not trained on: stopped before it starts (``choose_trial_to_run``)
  when Tune kept the result it was stopped on, else started only to say that result again from its checkpoint
  and end (``sweeps.trial.train_worker``, via ``resume_decision``); any later result of it gets "stop" (so a
  trial whose checkpoints are all gone or unusable trains one epoch from scratch and is stopped at its first
  result);
- a trial whose Train run saved a rung's checkpoint that Tune never saw (the driver died in between) says that
  result again before training on (``train_worker`` again), so the rung is decided as it would have been.

A stage-2 worker that reports a rung's result waits (up to ``asha.decision_wait_s``) for that rung's decision
in the file and ends there when it is "stop" (``wait_for_decision``): Train's workers do not wait for Tune, and
a trial with short epochs would otherwise train past its stop and replace the checkpoint ASHA judged.

Each line is written with one ``write`` on an ``O_APPEND`` file and fsynced; a half-written last line (a crash in
an older version, a full disk) is skipped with a warning by every reader, and dropped from the file the next
time a scheduler loads it, so later lines are not glued onto it.

    >>> from sweeps.scheduling import rung_milestones
    >>> rung_milestones(1, 2, 3)
    [1, 2]
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ray.tune.experiment import Trial
from ray.tune.schedulers import ASHAScheduler, TrialScheduler

from vlm_core.base.hashing import json_digest

from .statuses import METRIC

log = logging.getLogger(__name__)

DECISIONS_FILE = "asha_decisions.jsonl"


def rung_milestones(grace_period: int, reduction_factor: int, max_t: int) -> list[int]:
    """The epochs at which ASHA compares trials (Ray's single-bracket layout)."""
    out, m = [], grace_period
    while m < max_t:
        out.append(m)
        m *= reduction_factor
    return out


@dataclass
class AshaLink:
    """Where a stage-2 run reads ASHA's rung decisions (``sweeps.scheduling``): it waits for the decision at each
    rung and, resumed after a lost driver, says a rung's result again that ASHA never saw."""

    decisions_file: str
    """``<out>/stage2/asha_decisions.jsonl`` (shared storage on a cluster)."""
    wait_s: float
    """How long a run that reached a rung waits for the decision before it trains on."""
    milestones: list[int]
    """The rungs (epochs)."""
    trial: str | None = None
    """The config id the decisions are recorded under (set per run)."""
    config_hash: str | None = None
    """:meth:`TrialRun.digest` of the run (set per run): a rerun of another config under the same id is another
    trial."""


def config_digest(worker: dict[str, Any]) -> str:
    """A hash of everything a trial's workers get: with the config id, a trial's identity across restores."""
    return json_digest(worker, 10)


def _key(d: dict[str, Any]) -> tuple[Any, Any, Any]:
    return d.get("trial"), d.get("config_hash"), d.get("rung")


def _parse(path: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """(records in file order, unreadable lines); a last line without its newline counts as unreadable."""
    if not path.is_file():
        return [], []
    text = path.read_text(errors="replace")
    lines = text.split("\n")
    tail = lines.pop()  # "" when the file ends with a newline, else a line cut short
    records, bad = [], [tail] if tail.strip() else []
    for line in lines:
        if not line.strip():
            continue
        try:
            d = json.loads(line)
            if not isinstance(d, dict) or not {"trial", "rung", "decision"} <= d.keys():
                raise ValueError("not a decision")
            records.append(d)
        except ValueError:
            bad.append(line)
    return records, bad


def read_decisions(path: str | Path) -> list[dict[str, Any]]:
    """Each rung decision once, in the order they were made: the first line per (trial, config hash, rung);
    half-written or unreadable lines are skipped, with a warning."""
    p = Path(path)
    records, bad = _parse(p)
    if bad:
        log.warning("%s: skipped %d unreadable line(s) (cut short by a crash?): %r", p, len(bad), bad[0][:200])
    out, seen, dupes = [], set(), 0
    for d in records:
        if _key(d) in seen:
            dupes += 1
            continue
        seen.add(_key(d))
        out.append(d)
    if dupes:
        log.warning("%s: %d rung decision(s) recorded more than once (an older version replayed them); each is "
                    "counted once", p, dupes)
    return out


def _first_per_key(records: list[dict[str, Any]]) -> dict[tuple, dict[str, Any]]:
    """(trial, config hash, rung) → the first decision recorded for it (a later copy is a replay's)."""
    out: dict[tuple, dict[str, Any]] = {}
    for d in records:
        out.setdefault(_key(d), d)
    return out


def _lookup(records: dict, identity: tuple[str | None, str | None], rung: Any) -> dict[str, Any] | None:
    cid, digest = identity
    return records.get((cid, digest, rung)) or records.get((cid, None, rung))  # None: written before config_hash


def resume_decision(asha: AshaLink | None, metrics: dict[str, Any],
                    metric: str = METRIC) -> tuple[str, dict[str, Any]] | None:
    """What a stage-2 trial resuming from a checkpoint with ``metrics`` does before it trains on, from the decisions
    in ``asha.decisions_file`` of this trial (``asha.trial``, ``asha.config_hash``):

    - ``("stopped", result)``: ASHA stopped it at a rung up to this epoch before the driver died (and Tune lost the
      result it was stopped on, else the trial would not run): report ``result`` (that rung's) again, train no more;
    - ``("undecided", metrics)``: its epoch is a rung (``asha.milestones``) with no decision: the driver died
      after Train saved the checkpoint and before ASHA saw its result; report it again, then train on;
    - ``None``: train on."""
    if not asha:
        return None
    records = {_key(d): d for d in read_decisions(asha.decisions_file)}
    identity, epoch = (asha.trial, asha.config_hash), metrics.get("epoch")
    milestones = sorted(asha.milestones)
    for m in milestones:
        d = _lookup(records, identity, m) if epoch is not None and m <= epoch else None
        if d is not None and d["decision"] == "stop":
            # the checkpoint is that rung's, or a later one saved before the stop reached the trial
            return "stopped", metrics if epoch == m else {"epoch": m, metric: d.get(metric)}
    if epoch in milestones and metrics.get(metric) is not None and _lookup(records, identity, epoch) is None:
        return "undecided", metrics
    return None


def wait_for_decision(asha: AshaLink | None, epoch: Any, poll_s: float = 0.2) -> str | None:
    """The decision ASHA recorded for this trial (``asha.trial``, ``asha.config_hash``) at ``epoch``, waited
    for up to ``asha.wait_s`` seconds when ``epoch`` is a rung; None when it is not a rung, when the decisions
    file's folder is not on this node (no shared storage: the worker cannot see it), or on timeout.

    Ray Train's workers do not wait for Tune: a trial ASHA stops at a rung keeps training until the stop reaches
    its workers, and when epochs are short it reports later epochs (whose checkpoints replace the one ASHA judged)
    first. Waiting here makes a stopped trial stop at its rung, as ASHA decided, whatever the timing."""
    if not asha or epoch not in asha.milestones or not asha.wait_s:
        return None
    path = Path(asha.decisions_file)
    if not path.parent.is_dir():
        log.warning("%s is not on this node (no shared storage): not waiting for ASHA's decisions", path.parent)
        return None
    identity, deadline = (asha.trial, asha.config_hash), time.monotonic() + float(asha.wait_s)
    while True:
        d = _lookup(_first_per_key(_parse(path)[0]), identity, epoch)  # _parse: no warning per poll
        if d is not None:
            return d["decision"]
        if time.monotonic() >= deadline:
            log.warning("%s: no ASHA decision for %s at rung %s after %ss; training on (Tune may still stop it)",
                        path, identity[0], epoch, asha.wait_s)
            return None
        time.sleep(poll_s)


class RecordingASHA(ASHAScheduler):
    """``ASHAScheduler`` that records each rung decision in ``decisions_file`` once and, after a restore,
    replays what it recorded (see the module docstring)."""

    def __init__(self, decisions_file: str, *, time_attr: str, max_t: int, grace_period: int,
                 reduction_factor: int, identify: Callable[[dict[str, Any]], tuple[str | None, str | None]]) -> None:
        # metric and mode come from TuneConfig (Tune refuses them in both places)
        super().__init__(time_attr=time_attr, max_t=max_t, grace_period=grace_period,
                         reduction_factor=reduction_factor)
        self.decisions_file = decisions_file
        self.identify = identify
        """Tune config → (config id, config hash): a trial's identity across restores
        (``sweeps.trial_config.trial_identity``)."""
        self.milestones = set(rung_milestones(grace_period, reduction_factor, max_t))
        self.seen: dict[int, dict[str, float]] = {}  # rung → config id → metric, as the decisions were made
        self._recorded: dict[tuple, dict[str, Any]] | None = None  # loaded from decisions_file on first use
        self._identities: dict[str, tuple[str | None, str | None]] = {}

    # -- the record -------------------------------------------------------------------------------------------
    def _records(self) -> dict[tuple, dict[str, Any]]:
        """(trial, config hash, rung) → decision, from the file (once per driver; Tune unpickles this scheduler
        from ``tuner.pkl`` on restore, as it was before any trial ran)."""
        if getattr(self, "_recorded", None) is None:
            path = Path(self.decisions_file)
            records, bad = _parse(path)
            if bad:  # drop the cut line, or the next append would be glued onto it
                log.warning("%s: dropping %d unreadable line(s) (cut short by a crash?): %r", path, len(bad),
                            bad[0][:200])
                tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
                tmp.write_text("".join(json.dumps(d) + "\n" for d in records))
                os.replace(tmp, path)
            self._recorded = _first_per_key(records)
            if records:
                log.info("%s: %d rung decision(s) already made; they stand", path, len(self._recorded))
        return self._recorded

    def _identity(self, trial) -> tuple[str | None, str | None]:
        ids = self.__dict__.setdefault("_identities", {})
        if trial.trial_id not in ids:
            cid, digest = self.identify(trial.config)
            ids[trial.trial_id] = (cid or trial.trial_id, digest)
        return ids[trial.trial_id]

    def recorded(self, trial, rung: Any) -> dict[str, Any] | None:
        """The decision already recorded for this trial (by its stable identity) at ``rung``, if any."""
        return _lookup(self._records(), self._identity(trial), rung)

    def _append(self, record: dict[str, Any]) -> None:
        path = Path(self.decisions_file)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        line = (json.dumps(record) + "\n").encode()
        try:
            written = os.write(fd, line)  # one write: a line is in the file whole or not
            if written != len(line):  # a short write (a full disk): the next load drops the cut line
                raise OSError(f"{path}: wrote {written} of {len(line)} bytes of a rung decision (disk full?)")
            os.fsync(fd)
        finally:
            os.close(fd)
        self._records().setdefault(_key(record), record)

    # -- Tune's hooks -----------------------------------------------------------------------------------------
    def on_trial_add(self, tune_controller, trial) -> None:
        super().on_trial_add(tune_controller, trial)
        bracket = self._trial_info[trial.trial_id]
        for milestone, values in bracket._rungs:  # a restored trial: put its recorded rung values back
            d = self.recorded(trial, milestone)
            if d is not None and d.get(self._metric) is not None:
                values[trial.trial_id] = self._metric_op * float(d[self._metric])
                self.seen.setdefault(d["rung"], {})[d["trial"]] = float(d[self._metric])

    def _recorded_stop(self, trial, upto: Any = None) -> dict[str, Any] | None:
        return next((d for m in sorted(self.milestones) if (upto is None or m <= upto)
                     and (d := self.recorded(trial, m)) and d["decision"] == "stop"), None)

    def choose_trial_to_run(self, tune_controller):
        for trial in list(tune_controller.get_trials()):
            if trial.status in (Trial.PENDING, Trial.PAUSED):
                stop = self._recorded_stop(trial)
                # Tune kept the result it was stopped on: stop it here. Else (the driver died before Tune saved
                # that result) it starts, says that result again from its checkpoint and ends (train_worker)
                if stop is not None and (trial.last_result or {}).get(self._time_attr, 0) >= stop["rung"]:
                    log.warning("%s was stopped by ASHA at rung %s before the sweep was interrupted; it stays "
                                "stopped", stop["trial"], stop["rung"])
                    tune_controller.stop_trial(trial)
        return super().choose_trial_to_run(tune_controller)

    def on_trial_result(self, tune_controller, trial, result: dict[str, Any]) -> str:
        rung = result.get(self._time_attr)
        at_rung = rung in self.milestones and self._metric in result
        known = self.recorded(trial, rung) if at_rung else None
        if known is None and rung is not None:
            known = self._recorded_stop(trial, upto=rung)  # a result after its stop (a restored trial): stop
        if known is not None:  # a replay (a restored or restarted trial): the decision made then stands
            log.info("%s: result at %s %s again; recorded decision at rung %s: %s", known["trial"], self._time_attr,
                     rung, known["rung"], known["decision"])
            return TrialScheduler.STOP if known["decision"] == "stop" else TrialScheduler.CONTINUE
        action = super().on_trial_result(tune_controller, trial, result)
        if at_rung:
            cid, digest = self._identity(trial)
            before = dict(self.seen.setdefault(rung, {}))
            self.seen[rung][cid] = float(result[self._metric])
            self._append({"trial": cid, "rung": rung, self._metric: float(result[self._metric]),
                          "decision": "stop" if action == TrialScheduler.STOP else "continue",
                          "rung_before": before, "config_hash": digest})
        return action
