"""The sweep's benchmark evaluation (``--eval-benchmarks``) on the tiny two-stage sweep: every trial's best
checkpoint answers a POPE-format fixture and the corpus's easy-vqa questions as Ray tasks; trials.csv and the report
carry the results; ``--select-by`` names the best config by a benchmark metric; a rerun starts no task; a dry run
shows what each task asks for.

    .venv/bin/python -m pytest -q tests/test_sweep_eval.py
"""

from __future__ import annotations

import dataclasses
import json
import shutil

import pandas as pd
import pytest

from sweeps.driver import evaluate_trials, run_sweep
from sweeps.evaluation import plan_tasks
from sweeps.reporting.results import read_sweep
from sweeps.reporting.sweep_report import write_report
from tests import benchmark_files as bf
from tests.notebook import run_analysis_notebook
from tests.test_benchmarks import POPE_ROWS
from vlm_core.base.errors import ConfigError
from vlm_core.evaluation.benchmark_eval import prepare

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def evaluated(two_stage_sweep, corpus, tmp_path_factory):
    """A copy of the tiny sweep's experiment with its four trials' best checkpoints evaluated (stage 1 and 2)."""
    cfg, _, out = two_stage_sweep
    root = tmp_path_factory.mktemp("eval")
    bench = bf.pope(root / "bench", POPE_ROWS)
    copy = root / "tiny-study"
    shutil.copytree(out, copy)
    ecfg = dataclasses.replace(cfg, out=str(copy), eval_benchmarks="pope,easy-vqa", benchmarks=str(bench),
                               benchmark_files=f"easy-vqa={corpus}", eval_limit=4, eval_stage=1,
                               benchmark_budgets="pope=16")
    results = read_sweep(copy)
    summary = evaluate_trials(ecfg, ecfg.eval_config(), results, copy)
    return ecfg, copy, summary, results


def test_every_trial_is_evaluated_and_trials_csv_and_the_report_show_it(evaluated):
    cfg, out, summary, _ = evaluated
    assert len(summary["evaluated"]) == 4 and summary["skipped"] == []
    report = write_report(out, select_by="val_loss")
    table = pd.read_csv(out / "trials.csv")
    for column in ("pope.f1", "pope.lmms_eval.f1", "pope.f1.gain_zeros", "pope.f1.gain_shuffled",
                   "easy-vqa.accuracy", "easy-vqa.accuracy.gain_shuffled"):
        assert table[column].notna().all(), column
    evals = json.loads((out / "eval" / "benchmarks.json").read_text())
    for config_id, benches in evals.items():
        assert benches["pope"]["asked"] == 4 and benches["easy-vqa"]["asked"] == 4
        row = table.set_index("config_id").loc[config_id]
        assert row["pope.f1"] == pytest.approx(benches["pope"]["metrics"]["image"]["f1"])
    md = (out / "report.md").read_text()
    assert "## Benchmarks" in md and "| pope f1 | gain vs zeros | gain vs shuffled | pope yes_ratio |" in md, md
    assert "up to 16 new tokens an answer (the reference: 128)" in md
    assert report["select_by"] == "val_loss"


def test_select_by_names_the_best_config_by_a_benchmark_metric(evaluated):
    _, out, _, _ = evaluated
    by_loss = write_report(out)["best"]
    table = pd.read_csv(out / "trials.csv")
    stage2 = table[table["stage"] == 2]
    worst = stage2.loc[stage2["best_val_loss"].idxmax(), "config_id"]
    assert worst != by_loss[2]
    evals = json.loads((out / "eval" / "benchmarks.json").read_text())
    evals[worst]["pope"]["metrics"]["image"]["f1"] = 2.0  # higher than any real F1: this config must win on it
    (out / "eval" / "benchmarks.json").write_text(json.dumps(evals))
    by_f1 = write_report(out, select_by="pope.f1")
    assert by_f1["best"][2] == worst and f"Best by pope.f1: `{worst}`" in (out / "report.md").read_text()
    with pytest.raises(ConfigError, match="select_by: no 'pope.f2' in the results"):
        write_report(out, select_by="pope.f2")


def test_a_rerun_reuses_every_answer(evaluated):
    cfg, out, summary, results = evaluated
    ecfg = cfg.eval_config()
    items = [(t.config_id, t.best_checkpoint()[0]) for s in (1, 2) for t in results[s]]
    tasks = plan_tasks(items, prepare(ecfg.benchmark_config()), ecfg, out / "eval")
    assert len(tasks) == 8 and all(t["complete"] for t in tasks)
    stamps = {t["path"]: t["path"].stat().st_mtime_ns for t in tasks}
    again = evaluate_trials(cfg, ecfg, results, out)
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # no task wrote anything
    assert again["wandb"] == summary["wandb"]  # the same results are not logged to W&B a second time


def test_a_dry_run_shows_the_evaluation_tasks_and_their_resources(evaluated, capsys):
    cfg, out, _, _ = evaluated
    result = run_sweep(dataclasses.replace(cfg, dry_run=True, out=str(out / "dry")))
    assert result["evaluation"]["resources_per_task"] == {"CPU": 1} and result["evaluation"]["stages"] == [1, 2]
    assert "evaluation: pope, easy-vqa on the best checkpoint of every stage [1, 2] trial" in capsys.readouterr().out


def test_bad_evaluation_flags_are_refused_before_anything_runs(evaluated):
    cfg, _, _, _ = evaluated
    with pytest.raises(ConfigError, match="eval.benchmark: unknown benchmark 'popes'"):
        dataclasses.replace(cfg, eval_benchmarks="popes")
    with pytest.raises(ConfigError, match="select_by: pope.f1 needs --eval-benchmarks"):
        dataclasses.replace(cfg, eval_benchmarks=None, select_by="pope.f1")
    with pytest.raises(ConfigError, match="select_by: 'pope.yes_ratio' is not"):
        dataclasses.replace(cfg, select_by="pope.yes_ratio")


def test_the_results_reach_wandb_and_the_analysis_notebook(evaluated, tmp_path):
    cfg, out, summary, _ = evaluated
    runs = list((out / "eval" / "wandb").glob("offline-run-*/run-*.wandb"))
    assert cfg.wandb == "offline" and len(runs) == 1 and summary["wandb"]
    blob = runs[0].read_bytes()
    assert b"tiny-study-eval" in blob and all(c.encode() in blob for c in summary["evaluated"])
    _, text = run_analysis_notebook(out, tmp_path)
    assert "4 checkpoints evaluated on ['easy-vqa', 'pope']" in text
