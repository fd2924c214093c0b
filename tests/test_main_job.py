"""``vlm-sweep run`` end to end at a reduced size: corpus → data build → both sweep stages → eval → report, then
a rerun that reuses every finished step, then ``vlm-sweep eval`` and a chat with the best checkpoint.

    pytest -q tests/test_main_job.py
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

from .browser import render

ARGS = ["--preset", "tiny", "--n_train_images", "60", "--random_size", "30", "--umap_size", "40",
        "--paper_ids", "[3, 9]", "--eval_questions", "8", "--wandb", "offline"]


MAX_CONSOLE_LINES = 30
"""The first run's console (stdout + stderr) at most: 26 lines here (2026-12-06, the data build's 5 step lines
included; 790 before the calm console)."""
TRIALS = ("s1-20kUmap-nodense-raw-linear-e6-b12", "s1-10kRandom-nodense-raw-linear-e6-b8",
          "s2-20kUmap-nodense-raw-linear-e3-b3-from-e6-b12", "s2-10kRandom-nodense-raw-linear-e3-b3-from-e6-b8")


def _cli(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sweeps.cli", *args], capture_output=True, text=True,
                          env=env, timeout=900)


def _result_lines(out: Path) -> dict[str, int]:
    return {p.parent.name: len(p.read_text().splitlines()) for p in out.glob("sweep/stage*/*/result.json")}


def test_run_does_the_study_reports_and_reuses_its_work(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # its own local Ray, as a user gets
    out = tmp_path / "main"
    first = _cli("run", *ARGS, "--out", str(out), env=env)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    for step in ("corpus: writing", "data: building", "sweep: starting", "eval: s2-", "Report:", "best config:",
                 "chat with it: vlm-sweep chat --checkpoint"):
        assert step in first.stdout, step

    # a calm console: one line per step and per trial event, each trial named once per event; Ray's, Tune's and
    # Ray Data's output in OUT/logs (the log file, and a link to the Ray session's folder)
    console = (first.stdout + first.stderr).splitlines()
    assert len(console) <= MAX_CONSOLE_LINES, "\n".join(console)
    for trial in TRIALS:
        for kind in ("started", "finished|stopped"):
            said = [line for line in console if any(f"· {trial} {k}" in line for k in kind.split("|"))]
            assert len(said) == 1, (trial, kind, said)
    log_text = (out / "logs" / "vlm-sweep.log").read_text()
    assert "token lengths before the trials" in log_text and "stage 1 · " in log_text
    assert (out / "logs" / "ray-session").is_symlink()
    assert "Configuration for experiment" not in first.stdout  # Tune's own tables: in the log, not here

    # every artefact exists and is well formed
    manifest = json.loads((out / "data" / "manifest.json").read_text())
    sizes = {k: v["train"] + v["val_own"] for k, v in manifest["variants"].items()}
    assert sizes == {"10kRandom": 30, "20kUmap": 40}
    trials = (out / "sweep" / "trials.csv").read_text().splitlines()
    assert len(trials) == 1 + 4  # header + 2 stage-1 + 2 stage-2 trials
    evals = sorted((out / "eval").glob("*.json"))
    assert [p.stem for p in evals] == ["s2-10kRandom-nodense-raw-linear-e3-b3-from-e6-b8",
                                       "s2-20kUmap-nodense-raw-linear-e3-b3-from-e6-b12"]
    for p in evals:
        e = json.loads(p.read_text())
        assert e["answers"]["n"] == 8 and all(0 <= a <= 1 for a in e["answers"]["accuracy"].values())
        assert set(e["answers"]["exact_match"]) == set(e["answers"]["accuracy"])  # strict beside the field's rule
        assert e["answers"]["protocol"]["instruction"] == "Answer the question using a single word or phrase."
        for cond in ("image", "zeros", "shuffled"):
            h = e["heldout"][cond]
            assert 0 < h["loss"] < 20 and math.isclose(h["perplexity"], math.exp(h["loss"]), rel_tol=1e-9)
    # the benchmarks, through the same registry and Ray tasks as a cluster sweep: easy-vqa and the corpus's POPE
    benches = json.loads((out / "sweep" / "eval" / "benchmarks.json").read_text())
    assert sorted(benches) == [p.stem for p in evals]
    for p in evals:
        e, b = json.loads(p.read_text()), benches[p.stem]
        assert sorted(b) == ["easy-vqa", "pope"] and b["pope"]["asked"] == 8 and b["easy-vqa"]["asked"] == 8
        # the study's easy-vqa answers are the benchmark's, scored by the same rule
        assert e["answers"]["accuracy"]["image"] == b["easy-vqa"]["metrics"]["image"]["accuracy"]
        assert e["answers"]["accuracy"]["shuffled"] == b["easy-vqa"]["metrics"]["shuffled"]["accuracy"]
    assert "pope.f1" in trials[0].split(",") and "easy-vqa.accuracy.gain_shuffled" in trials[0].split(",")
    report = (out / "report.md").read_text()
    for section in ("## Benchmarks", "| config | easy-vqa accuracy | gain vs zeros | gain vs shuffled | pope f1 |",
                    "## Data", "![umap](data/umap.png)", "### Token lengths (measured before the trials)",
                    "### Stage 1", "### Stage 2", "### ASHA decisions",
                    "## Evaluation",
                    "acc_zeros", "em_image", "single word or phrase", "## Best config", "| question type |",
                    "Sample generations",
                    "vlm-sweep chat --checkpoint"):
        assert section in report, section
    for fig in ("data/umap.png", "sweep/loss_curves.png", "sweep/by_axis.png", "sweep/lineage.svg"):
        assert (out / fig).stat().st_size > 2_000, fig
    assert "![lineage](sweep/lineage.svg)" in report

    # report.html, as headless Chromium shows it: the tables, every figure and sample image drawn from its own pixels
    shown = render(out / "report.html", tmp_path / "browser")
    md_rows = [line for line in report.splitlines() if line.startswith("|") and not line.startswith("|---")]
    md_tables = sum(1 for line in report.splitlines() if line.startswith("|---"))
    assert (shown.tables, shown.rows) == (md_tables, len(md_rows)) and md_tables >= 8  # every table, every row
    figures = [i["alt"] for i in shown.images if i["alt"]]
    assert figures == ["umap", "loss_curves", "by_axis", "lineage"] and len(shown.images) > len(figures)  # + samples
    assert all(i["decoded"] for i in shown.images) and shown.blank_images() == [] and shown.unlike_their_source() == []
    assert (out / "sweep" / "report.html").is_file()
    summary = json.loads((out / "summary.json").read_text())
    best = summary["best"]
    assert best["config_id"] in {p.stem for p in evals} and Path(best["checkpoint"]).is_dir()

    # the rerun reuses corpus, data, finished trials and evaluations instead of redoing them
    before = _result_lines(out)
    second = _cli("run", *ARGS, "--out", str(out), "--verbose", env=env)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "Configuration for experiment" in second.stdout  # --verbose: Tune's own output on the console again
    for step in ("corpus: reusing", "data: reusing", "finished trials are kept", "eval: reusing"):
        assert step in second.stdout, step
    assert "eval: s2-" not in second.stdout.replace("eval: reusing", "")
    assert _result_lines(out) == before  # no trial ran again

    chat = _cli("chat", "--checkpoint", best["checkpoint"], "--image", best["sample_image"], "--max_new_tokens",
                "3", best["sample_question"], env=env)
    assert chat.returncode == 0, chat.stderr[-3000:]

    ev = _cli("eval", best["checkpoint"], "--data", str(out / "corpus"), "--max_questions", "3", "--controls",
              "shuffled", "--out", str(tmp_path / "eval.json"), env=env)
    assert ev.returncode == 0, ev.stderr[-3000:]
    written = json.loads((tmp_path / "eval.json").read_text())
    assert written["answers"]["n"] == 3 and set(written["answers"]["type_counts"]) == {"color", "shape", "yes/no"}
    assert "heldout" not in written  # no --val: loss is skipped, not computed on the questions
    assert set(written["answers"]["accuracy"]) == {"image", "shuffled"}  # --controls shuffled: that control only
