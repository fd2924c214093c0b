"""A trial's best checkpoint and best val loss come from everything it trained, not only from what Tune remembers:
after ``--resume``, Tune's history of a restored trial holds only the results reported since the restore, while its
run folder still keeps the best checkpoint from before (``sweeps.reporting.results``).

    pytest -q tests/test_results.py
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from sweeps.reporting.results import TrialResult


def _checkpoint(run: Path, index: int, epoch: float, val_loss: float | None) -> str:
    folder = run / f"checkpoint_{index:06d}"
    folder.mkdir(parents=True)
    metrics = {"epoch": epoch, **({"val_loss": val_loss} if val_loss is not None else {})}
    (folder / "checkpoint.json").write_text(json.dumps({"stage": 1, "step": int(2 * epoch), "epoch": epoch,
                                                        "metrics": metrics, "files": {}}))
    return str(folder)


def _trial(rows: list[dict]) -> TrialResult:
    spec = {"dataset": "10kRandom", "dense": False, "chat": False, "scheduler": "linear", "epochs": 6,
            "batch_size": 8, "profile": "cpu"}
    return TrialResult(1, {"config_id": "s1-x", "spec": spec}, "TERMINATED", "/nowhere", pd.DataFrame(rows))


def test_a_resumed_trial_keeps_the_best_checkpoint_it_wrote_before_the_resume(tmp_path):
    run = tmp_path / "train" / "train-s1-x-abc"
    _checkpoint(run, 3, 4.0, 10.7781)
    best = _checkpoint(run, 4, 5.0, 10.7779)  # before the interrupt: the best of the run
    newest = _checkpoint(run, 5, 6.0, 10.7780)
    # what Tune's history holds after the restore: the epoch reported since
    trial = _trial([{"epoch": 6.0, "val_loss": 10.7780, "checkpoint_path": newest, "epochs_planned": 6}])
    assert trial.best_checkpoint() == (best, 10.7779)
    assert trial.best() == (10.7779, 5.0) and trial.best_val_loss == 10.7779
    row = trial.table_row()
    assert row["best_val_loss"] == 10.7779 and row["best_epoch"] == 5
    summary = trial.summary()
    assert summary["best_checkpoint"] == best and summary["best_val_loss"] == summary["best_checkpoint_val_loss"]


def test_the_best_is_the_oldest_of_equal_ones_and_the_newest_without_validation(tmp_path):
    run = tmp_path / "run"
    first = _checkpoint(run, 0, 1.0, 10.5)
    second = _checkpoint(run, 1, 2.0, 10.5)
    trial = _trial([{"epoch": 1.0, "val_loss": 10.5, "checkpoint_path": first},
                    {"epoch": 2.0, "val_loss": 10.5, "checkpoint_path": second}])
    assert trial.best_checkpoint() == (first, 10.5)
    bare = tmp_path / "bare"
    _checkpoint(bare, 0, 1.0, None)
    last = _checkpoint(bare, 1, 2.0, None)
    trial = _trial([{"epoch": 2.0, "checkpoint_path": last}])
    assert trial.best_checkpoint() == (last, None) and trial.best() == (None, None)
    assert math.isnan(trial.table_row()["best_val_loss"])


def test_a_half_written_checkpoint_or_a_non_finite_loss_is_not_the_best(tmp_path):
    run = tmp_path / "run"
    good = _checkpoint(run, 0, 1.0, 10.9)
    (run / "checkpoint_000001").mkdir()  # written halfway: no checkpoint.json
    diverged = _checkpoint(run, 2, 2.0, float("inf"))
    trial = _trial([{"epoch": 1.0, "val_loss": 10.9, "checkpoint_path": good},
                    {"epoch": 2.0, "val_loss": float("inf"), "checkpoint_path": diverged}])
    assert trial.best_checkpoint() == (good, 10.9)
    assert [Path(k.path).name for k in trial.kept_checkpoints] == ["checkpoint_000000", "checkpoint_000002"]
