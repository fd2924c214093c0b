"""Stage 2 survives its driver: a sweep driver SIGKILLed while stage 2 runs under ASHA resumes (``--resume``)
to the same rung decisions as an uninterrupted run, each recorded once in ``asha_decisions.jsonl`` and the report.

The sweep is the tiny two-stage one of tests/test_sweep.py (paper rows 3 and 9): stage 2 runs the 20kUmap
continuation first (rungs 1 and 2: continue), then the 10kRandom one, which ASHA stops at rung 1 (its validation set
is gibberish, see ``variants`` in conftest.py). The uninterrupted reference is that sweep (``two_stage_sweep`` in
conftest.py, run once for both files); the interrupted run is stage 2 alone, continuing the reference's stage-1
checkpoints (the same lineage), and its driver is killed twice: once after the first rung decision (20kUmap is
training on, and Train may have saved its rung-2 checkpoint before ASHA saw it; the restored scheduler must compare
10kRandom with 20kUmap's rung-1 loss, not find rung 1 empty and let it through) and once right after ASHA stopped
10kRandom, with Tune's saved state showing it still running (the resume must not train it again).

The scheduler's own tests (no Ray cluster: fake trials) cover what a kill makes hard to hit on purpose: a result
said twice, a half-written last line, decisions written before ``config_hash`` was recorded.

    pytest -q tests/test_stage2_resume.py
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
from ray.tune.experiment import Trial
from ray.tune.schedulers import TrialScheduler

from sweeps.scheduling import (
    DECISIONS_FILE,
    AshaLink,
    RecordingASHA,
    config_digest,
    read_decisions,
    resume_decision,
    wait_for_decision,
)
from tests.conftest import sigkill_driver

S2_UMAP = "s2-20kUmap-nodense-raw-linear-e3-b3-from-e6-b12"
S2_RANDOM = "s2-10kRandom-nodense-raw-linear-e3-b3-from-e6-b8"
EXPECTED = {(S2_UMAP, 1, "continue"), (S2_UMAP, 2, "continue"), (S2_RANDOM, 1, "stop")}


def _raw_decisions(stage_dir: Path) -> list[dict]:
    """Every line of the decisions file as written (no deduplication: that is what is tested)."""
    f = stage_dir / "asha_decisions.jsonl"
    return [json.loads(line) for line in f.read_text().splitlines() if line.strip()] if f.is_file() else []


def _results(trial_dir: Path) -> list[dict]:
    f = trial_dir / "result.json"
    return [json.loads(line) for line in f.read_text().splitlines() if line.strip()] if f.is_file() else []


def _report_decisions(out: Path) -> list[tuple[str, int, str]]:
    """(trial, rung, decision) of each row of report.md's ASHA table."""
    md = (out / "report.md").read_text()
    section = md.split("## ASHA (stage 2)", 1)[1].split("\n## ", 1)[0]
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in section.splitlines()
            if line.startswith("| ")]
    head, body = rows[0], rows[1:]
    return [(r[head.index("trial")], int(r[head.index("rung")]), r[head.index("decision")]) for r in body]


def _as_if_killed_before_tune_saved(stage_dir: Path, config_id: str) -> None:
    """Make Tune's newest saved experiment state show ``config_id`` running with no result, as a kill a moment
    earlier leaves it (which of the two a kill right after ASHA's stop leaves depends on when Tune last saved; both
    were seen): the resume must then run the trial only to hear again the result it was stopped on."""
    state_file = sorted(stage_dir.glob("experiment_state-*.json"))[-1]
    state = json.loads(state_file.read_text())
    rows = []
    for trial_json, metadata_json in state["trial_data"]:
        trial, metadata = json.loads(trial_json), json.loads(metadata_json)
        if trial["config"]["trial"]["config_id"] == config_id:
            trial["status"] = "RUNNING"
            metadata.update(last_result={}, metric_analysis={}, metric_n_steps={})
        rows.append([json.dumps(trial), json.dumps(metadata)])
    state_file.write_text(json.dumps({**state, "trial_data": rows}))


def _kill_when(proc: subprocess.Popen, ready, what: str, timeout: float = 400) -> None:
    """SIGKILL the driver as soon as ``ready()`` holds, and check its local Ray went with it."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None and not ready():
        time.sleep(0.05)
    assert proc.poll() is None, f"the sweep ended before it could be interrupted ({what})"
    assert ready(), f"timed out waiting for: {what}"
    sigkill_driver(proc, what)


@pytest.mark.timeout(1200, func_only=True)  # the shared reference sweep is set up outside it
def test_a_driver_killed_in_stage2_resumes_to_the_same_asha_decisions(two_stage_sweep, variants, corpus, tmp_path):
    base = [sys.executable, "-m", "sweeps.cli", "sweep", "--data", str(variants), "--images", str(corpus / "images"),
            "--preset", "tiny", "--paper_ids", "[3, 9]", "--wandb", "disabled"]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # each driver starts its own local Ray

    _, _, ref = two_stage_sweep  # the uninterrupted run of the same configs (tests/conftest.py)
    ref_lines = _raw_decisions(ref / "stage2")
    assert {(d["trial"], d["rung"], d["decision"]) for d in ref_lines} == EXPECTED, ref_lines

    out = tmp_path / "interrupted"
    out.mkdir()
    shutil.copy(ref / "lineage.json", out / "lineage.json")  # the same stage-1 checkpoints
    cmd = base + ["--stage", "2", "--out", str(out)]
    s2 = out / "stage2"
    log_file = (tmp_path / "sweep.log").open("w")  # a file, not a pipe: Tune's tables would fill a pipe

    proc = subprocess.Popen(cmd, env=env, stdout=log_file, stderr=subprocess.STDOUT, text=True)
    _kill_when(proc, lambda: len(read_decisions(s2 / DECISIONS_FILE)) >= 1, "the first rung decision")
    first = _raw_decisions(s2)
    assert [(d["trial"], d["rung"], d["decision"]) for d in first] == [(S2_UMAP, 1, "continue")], first

    proc = subprocess.Popen(cmd + ["--resume", "true"], env=env, stdout=log_file, stderr=subprocess.STDOUT, text=True)
    _kill_when(proc, lambda: any(d["decision"] == "stop" for d in read_decisions(s2 / DECISIONS_FILE)),
               "ASHA stopping a trial")
    checkpoints = sorted(p.name for p in (out / "train").glob(f"train-{S2_RANDOM}-*/checkpoint_*"))
    assert checkpoints, "the stopped trial's checkpoint is on storage"
    _as_if_killed_before_tune_saved(s2, S2_RANDOM)

    # --verbose: the trials' own lines (the replay of the stopped rung) on the console, not only in OUT/logs
    resumed = subprocess.run(cmd + ["--resume", "--verbose"], env=env, capture_output=True, text=True, timeout=600)
    log_file.close()
    said = resumed.stdout + resumed.stderr
    (tmp_path / "resume2.log").write_text(said)
    assert resumed.returncode == 0, said[-6000:]

    lines = _raw_decisions(s2)
    keys = [(d["trial"], d["rung"]) for d in lines]
    assert len(keys) == len(set(keys)), f"a rung decision was recorded twice: {lines}"
    assert {(d["trial"], d["rung"], d["decision"]) for d in lines} == EXPECTED, lines
    ref_by_key = {(d["trial"], d["rung"]): d for d in ref_lines}  # made on the same losses and rung contents
    for d in lines:
        ref_d = ref_by_key[(d["trial"], d["rung"])]
        assert d["val_loss"] == pytest.approx(ref_d["val_loss"], rel=1e-4), (d, ref_d)
        assert d["rung_before"] == pytest.approx(ref_d["rung_before"], rel=1e-4), (d, ref_d)
    report = _report_decisions(out)
    assert sorted(report) == sorted(EXPECTED), report
    # the trial ASHA stopped before the last kill was not trained again: no epoch ran, no checkpoint was written,
    # and Tune kept (or was told again) only the result it was stopped on
    assert "reporting the result of epoch 1 again (stopped ASHA rung)" in said, said[-6000:]
    assert re.search(r"epoch \d+: \{'epoch'", said) is None, said[-6000:]
    assert sorted(p.name for p in (out / "train").glob(f"train-{S2_RANDOM}-*/checkpoint_*")) == checkpoints
    assert {r["epoch"] for r in _results(s2 / S2_RANDOM)} == {1}
    summary = {r["config_id"]: r for r in json.loads((out / "trials.json").read_text())["stages"]["2"]}
    assert summary[S2_RANDOM]["epochs_run"] == 1 and summary[S2_RANDOM]["stopped_early"]
    assert summary[S2_UMAP]["epochs_run"] == 3 and not summary[S2_UMAP]["stopped_early"]


# --- the scheduler alone ------------------------------------------------------------------------------------------

class _Trial:
    def __init__(self, cid: str, trial_id: str) -> None:
        self.trial_id, self.status, self.last_result = trial_id, Trial.PENDING, {}
        self.config = {"trial": {"config_id": cid, "worker": {"train": {"lr": 1e-3}, "data": cid}}}


class _Controller:
    def __init__(self, scheduler, trials) -> None:
        self.scheduler, self.trials = scheduler, trials
        for t in trials:
            scheduler.on_trial_add(self, t)

    def get_trials(self):
        return self.trials

    def stop_trial(self, trial) -> None:
        self.scheduler.on_trial_remove(self, trial)
        trial.status = Trial.TERMINATED


def _identify(config: dict) -> tuple[str, str]:
    """What ``sweeps.trial_config.trial_identity`` says of a real trial: its config id and the hash of its worker."""
    return config["trial"]["config_id"], config_digest(config["trial"]["worker"])


def _asha(path: Path) -> RecordingASHA:
    s = RecordingASHA(str(path), time_attr="epoch", max_t=3, grace_period=1, reduction_factor=2, identify=_identify)
    s.set_search_properties("val_loss", "min")
    return s


def _result(s, c, trial, epoch, loss):
    return s.on_trial_result(c, trial, {"epoch": epoch, "val_loss": loss})


def test_a_restored_scheduler_decides_as_the_interrupted_one_and_records_each_rung_once(tmp_path):
    f = tmp_path / DECISIONS_FILE
    s = _asha(f)
    umap, rand = _Trial("umap", "a_00000"), _Trial("rand", "a_00001")
    c = _Controller(s, [umap, rand])
    assert _result(s, c, umap, 1, 1.0) == TrialScheduler.CONTINUE  # the driver dies here
    # restored: a fresh scheduler (Tune saves none), the trials under new ids (Tune re-created them)
    s = _asha(f)
    umap, rand = _Trial("umap", "b_00000"), _Trial("rand", "b_00001")
    c = _Controller(s, [umap, rand])
    assert _result(s, c, umap, 1, 0.1) == TrialScheduler.CONTINUE  # said again (a replay): no second line
    # rung 1 still holds umap's 1.0: rand is compared with it (an empty rung would let the first one through)
    assert _result(s, c, rand, 1, 2.0) == TrialScheduler.STOP
    s = _asha(f)  # restored again, after the stop, from a state that has the result it was stopped on
    umap, rand = _Trial("umap", "c_00000"), _Trial("rand", "c_00001")
    rand.last_result = {"epoch": 1, "val_loss": 2.0}
    c = _Controller(s, [umap, rand])
    assert s.choose_trial_to_run(c) is umap and rand.status == Trial.TERMINATED  # stopped: not run again
    s = _asha(f)  # ... or from an older state, without it: it starts, to say that result again, and stops
    umap, rand = _Trial("umap", "d_00000"), _Trial("rand", "d_00001")
    c = _Controller(s, [umap, rand])
    assert s.choose_trial_to_run(c) is umap and rand.status == Trial.PENDING
    assert _result(s, c, rand, 1, 0.01) == TrialScheduler.STOP  # the replay keeps its decision
    assert _result(s, c, rand, 2, 0.01) == TrialScheduler.STOP  # and nothing after it is decided anew
    lines = [json.loads(line) for line in f.read_text().splitlines()]
    assert [(d["trial"], d["rung"], d["decision"]) for d in lines] == [("umap", 1, "continue"), ("rand", 1, "stop")]
    assert lines[1]["rung_before"] == {"umap": 1.0}
    assert lines[0]["config_hash"] == config_digest(umap.config["trial"]["worker"])


def test_another_config_under_the_same_id_gets_its_own_decisions(tmp_path):
    f = tmp_path / DECISIONS_FILE
    s = _asha(f)
    first = _Trial("rand", "a_00000")
    c = _Controller(s, [first])
    _result(s, c, first, 1, 1.0)
    other = _Trial("rand", "b_00000")
    other.config["trial"]["worker"]["train"]["lr"] = 1e-4  # another Train run
    s = _asha(f)
    c = _Controller(s, [other])
    _result(s, c, other, 1, 2.0)
    assert len(read_decisions(f)) == 2


def test_a_half_written_last_line_is_skipped_and_dropped_before_the_next_append(tmp_path, caplog):
    f = tmp_path / DECISIONS_FILE
    s = _asha(f)
    umap, rand = _Trial("umap", "a_00000"), _Trial("rand", "a_00001")
    c = _Controller(s, [umap, rand])
    _result(s, c, umap, 1, 1.0)
    with f.open("a") as fh:
        fh.write('{"trial": "rand", "rung": 1, "val_lo')  # the kill came mid-write
    assert [d["trial"] for d in read_decisions(f)] == ["umap"]
    assert "skipped 1 unreadable line" in caplog.text
    s = _asha(f)
    umap, rand = _Trial("umap", "b_00000"), _Trial("rand", "b_00001")
    c = _Controller(s, [umap, rand])
    assert _result(s, c, rand, 1, 2.0) == TrialScheduler.STOP
    assert [json.loads(line)["trial"] for line in f.read_text().splitlines()] == ["umap", "rand"]


def test_decisions_recorded_twice_by_an_older_version_are_read_once(tmp_path):
    f = tmp_path / DECISIONS_FILE
    old = {"trial": "rand", "rung": 1, "val_loss": 2.0, "decision": "continue", "rung_before": {}}  # no config_hash
    f.write_text(json.dumps(old) + "\n" + json.dumps({**old, "val_loss": 2.5}) + "\n")
    assert read_decisions(f) == [old]
    s = _asha(f)  # and such a decision still stands for the trial
    rand = _Trial("rand", "a_00000")
    c = _Controller(s, [rand])
    assert _result(s, c, rand, 1, 9.0) == TrialScheduler.CONTINUE and len(f.read_text().splitlines()) == 2


def test_a_resuming_trial_says_again_the_rung_result_asha_did_not_keep(tmp_path):
    f = tmp_path / DECISIONS_FILE
    umap, rand = _Trial("umap", "a_00000"), _Trial("rand", "a_00001")
    asha = AshaLink(str(f), 0, [1, 2], "umap", config_digest(umap.config["trial"]["worker"]))
    assert resume_decision(asha, {"epoch": 1, "val_loss": 1.0}) == ("undecided", {"epoch": 1, "val_loss": 1.0})
    assert resume_decision(asha, {"epoch": 3, "val_loss": 1.0}) is None  # not a rung
    assert resume_decision(asha, {"epoch": 1}) is None  # nothing to decide on
    assert resume_decision(None, {"epoch": 1, "val_loss": 1.0}) is None  # stage 1: no ASHA
    s = _asha(f)
    c = _Controller(s, [umap, rand])
    _result(s, c, umap, 1, 1.0)
    _result(s, c, rand, 1, 2.0)
    assert resume_decision(asha, {"epoch": 1, "val_loss": 1.0}) is None  # decided: train on
    assert resume_decision(asha, {"epoch": 2, "val_loss": 1.0})[0] == "undecided"
    stopped = replace(asha, trial="rand", config_hash=config_digest(rand.config["trial"]["worker"]))
    last = {"epoch": 1, "val_loss": 2.0, "train_loss": 3.0}
    assert resume_decision(stopped, last) == ("stopped", last)
    # a checkpoint saved after the stop, before it reached the trial: the rung's result is said, not this one
    assert resume_decision(stopped, {"epoch": 2, "val_loss": 1.5}) == ("stopped", {"epoch": 1, "val_loss": 2.0})


def test_a_trial_at_a_rung_waits_for_its_decision_and_only_there(tmp_path):
    """Train's workers do not wait for Tune: without this wait a trial with short epochs trains past the rung ASHA
    stopped it at, and its later checkpoints replace the one ASHA judged (seen in CI: the stopped trial then had
    no checkpoint to evaluate)."""
    import threading

    f = tmp_path / DECISIONS_FILE
    rand = _Trial("rand", "a_00001")
    asha = AshaLink(str(f), 30, [1, 2], "rand", config_digest(rand.config["trial"]["worker"]))
    assert wait_for_decision(asha, 3) is None  # not a rung: no wait
    assert wait_for_decision(replace(asha, wait_s=0), 1) is None  # waiting turned off
    assert wait_for_decision(replace(asha, decisions_file=str(tmp_path / "elsewhere" / DECISIONS_FILE)), 1) is None
    s = _asha(f)
    umap = _Trial("umap", "a_00000")
    c = _Controller(s, [umap, rand])
    _result(s, c, umap, 1, 1.0)
    # the driver decides a moment after the worker starts waiting
    late = threading.Timer(0.5, lambda: _result(s, c, rand, 1, 2.0))
    late.start()
    t0 = time.monotonic()
    assert wait_for_decision(asha, 1) == "stop" and time.monotonic() - t0 >= 0.4
    late.join()
    umap_asha = replace(asha, trial="umap", config_hash=config_digest(umap.config["trial"]["worker"]))
    assert wait_for_decision(umap_asha, 1) == "continue"
    t0 = time.monotonic()
    assert wait_for_decision(replace(umap_asha, wait_s=0.5), 2) is None and time.monotonic() - t0 >= 0.5  # timeout
