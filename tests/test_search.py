"""Search (``sweeps.search``): spaces checked against the typed configs before Ray starts, the searchers' layouts and
seeds, a real (tiny) Optuna search through Ray Tune whose best stage-1 trials feed stage 2, the report's search
section, and a search whose driver is SIGKILLed resuming to the same trials.

    pytest -q tests/test_search.py -m 'not slow'     # the spaces, the searchers, importance (seconds)
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from sweeps.driver import AshaConfig, SweepConfig, plan_sweep, run_sweep
from sweeps.search.algorithms import Row, SearchSettings, tune_search
from sweeps.search.space import parse_space, read_space
from sweeps.trial_config import trial_from_config
from vlm_core.base.errors import ConfigError

LR_SPACE = {"train.lr": {"loguniform": [1.0e-5, 1.0e-2]}, "train.warmup_ratio": {"uniform": [0.0, 0.1]}}
ROW3 = "s1-20kUmap-nodense-raw-linear-e6-b12"


# --- spaces ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("raw, message", [
    ({"train.learning_rate": {"loguniform": [1e-5, 1e-2]}}, r"train.learning_rate: unknown field"),
    ({"lr": {"loguniform": [1e-5, 1e-2]}}, r"lr: unknown field; did you mean train.lr"),
    ({"train.lr": {"lognormal": [1e-5, 1e-2]}}, r"train.lr: unknown distribution 'lognormal'; use one of"),
    ({"train.lr": {"loguniform": [1e-5, 2.0]}}, r"train.lr: loguniform bound 2.0 is out of the field's range "
                                                r"\(train.lr: 2.0 is out of range \(0, 1\)\)"),
    ({"train.lr": {"loguniform": [0.0, 1e-2]}}, r"loguniform needs low > 0"),
    ({"train.lr": {"uniform": [1e-2, 1e-5]}}, r"bounds must be low < high"),
    ({"train.epochs": {"uniform": [1, 3]}}, r"train.epochs: is an integer field; uniform draws fractions"),
    ({"train.warmup_ratio": {"uniform": [0.0, 1.5]}}, r"train.warmup_ratio: uniform bound 1.5 is out of"),
    ({"train.scheduler": {"choice": ["linear", "step"]}}, r"train.scheduler: choice value 'step' is out of"),
    ({"train.batch_size": {"choice": [2, "four"]}}, r"train.batch_size: value 'four' is not a int"),
    ({"model.projector.dense_groups": {"randint": [0, 4]}}, r"dense_groups: randint bound 0 is out of"),
    ({"train.stage": {"choice": [1, 2]}}, r"train.stage: cannot be searched: the stage is the sweep's"),
    ({"model.lm.source": {"choice": ["a", "b"]}}, r"model.lm.source: cannot be searched"),
    ({"train.lr": [1e-5, 1e-2]}, r"train.lr: expected one distribution as a mapping"),
    ({"study.rows": "all"}, r"study.rows: must be grid"),
    ({"space": {"train.lr": {"loguniform": [1e-5, 1e-2]}}, "points": [{"train.lr": 0.5}]},
     r"points\[0\]: train.lr=0.5 is outside the space"),
    ({"space": {"train.lr": {"loguniform": [1e-5, 1e-2]}}, "points": [{"train.epochs": 2}]},
     r"points\[0\] sets \['train.epochs'\], which the space does not search"),
])
def test_a_bad_space_is_refused_naming_the_field(raw, message):
    with pytest.raises(ConfigError, match=message):
        parse_space(raw, "space.yaml")


def test_a_space_file_is_read_with_its_points_and_an_inline_one_too(tmp_path):
    f = tmp_path / "lr.yaml"
    f.write_text("space:\n  train.lr: {loguniform: [1.0e-5, 1.0e-2]}\n  train.scheduler: {choice: [linear, cosine]}\n"
                 "  model.projector.dense_groups: {randint: [2, 6]}\npoints:\n  - {train.lr: 2.0e-5}\n")
    space = read_space(str(f))
    assert space.names() == ["train.lr", "train.scheduler", "model.projector.dense_groups"]
    assert space.fields["model.projector.dense_groups"].args == (2, 6)
    assert space.points == [{"train.lr": 2e-5}] and space.source == str(f)
    inline = read_space(json.dumps(LR_SPACE))
    assert inline.names() == ["train.lr", "train.warmup_ratio"] and inline.source == "(inline)"
    with pytest.raises(ConfigError, match="neither a file nor an inline mapping"):
        read_space(str(tmp_path / "missing.yaml"))


def test_a_sweep_refuses_a_space_its_algorithm_cannot_search_before_ray_starts(tmp_path):
    common = dict(data=str(tmp_path), images=str(tmp_path), preset="tiny", paper_ids=[3], stage="1",
                  out=str(tmp_path / "out"), wandb="disabled")
    with pytest.raises(ConfigError, match="grid enumerates; train.lr, train.warmup_ratio in .inline. are sampled"):
        plan_sweep(SweepConfig(**common, space=json.dumps(LR_SPACE)))
    with pytest.raises(ConfigError, match="Optuna cannot grid; train.batch_size"):
        plan_sweep(SweepConfig(**common, search="optuna", space='{"train.batch_size": {"grid": [1, 2]}}'))
    with pytest.raises(ConfigError, match="--search random draws from a search space; pass --space"):
        plan_sweep(SweepConfig(**common, search="random"))
    with pytest.raises(ConfigError, match="select_by: a search optimises what its trials report"):
        SweepConfig(**common, search="optuna", select_by="pope.f1", eval_benchmarks="pope")
    with pytest.raises(ConfigError, match="search_storage: keeps an Optuna study"):
        SweepConfig(**common, search="random", search_storage="sqlite:///x.db")
    grid = plan_sweep(SweepConfig(**common, space='{"train.scheduler": {"grid": [linear, cosine]}}'))
    assert grid.spaces[1].names() == ["train.scheduler"]


# --- a searched trial -------------------------------------------------------------------------------------------

def _rows(tmp_path, ids=(3,)) -> tuple[SweepConfig, list[Row]]:
    from sweeps.driver import make_trial

    cfg = SweepConfig(data=str(tmp_path), images=str(tmp_path), preset="tiny", paper_ids=list(ids), stage="1",
                      out=str(tmp_path / "out"), wandb="disabled")
    from vlm_core.training.one_stage import DataSpec

    planned = plan_sweep(cfg).stages[1]
    data = {p.spec.dataset: DataSpec(train="t.parquet", images=str(tmp_path)) for p in planned}
    caches = {(p.spec.dataset, p.model.projector.name): "cache" for p in planned}
    trials = [make_trial(cfg, p, tmp_path, data, caches) for p in planned]
    return cfg, [Row(t.config_id, t.to_dict(), p.model, p.train) for t, p in zip(trials, planned)]


def test_a_draw_is_applied_to_the_configs_the_spec_and_the_id(tmp_path):
    _, (row,) = _rows(tmp_path)
    params = {"train.lr": 3e-4, "train.scheduler": "cosine", "model.projector.name": "dense_connector"}
    trial = trial_from_config({"rows": {row.config_id: row.trial}, "row": row.config_id, "params": params})
    assert trial.run.train.lr == 3e-4 and trial.run.train.scheduler == "cosine"
    assert trial.run.model.projector.name == "dense_connector"
    assert (trial.spec.lr, trial.spec.scheduler, trial.spec.dense) == (3e-4, "cosine", True)  # the axes it ran
    assert trial.config_id.startswith("s1-20kUmap-dense-raw-cosine-e6-b12-p") and len(trial.config_id) == 42
    assert trial.run.data.features is None  # a feature cache holds one projector's selection: encode on the fly
    again = trial_from_config({"rows": {row.config_id: row.trial}, "row": row.config_id, "params": dict(params)})
    assert again.config_id == trial.config_id and again.run.digest() == trial.run.digest()
    lr_only = trial_from_config({"rows": {row.config_id: row.trial}, "row": row.config_id,
                                 "params": {"train.lr": 3e-4}})
    assert lr_only.run.data.features == "cache" and lr_only.config_id != trial.config_id
    assert trial_from_config({"trial": row.trial}).config_id == ROW3  # a grid's trial is its row


def test_an_optuna_search_suggests_the_same_trials_for_the_same_seed(tmp_path):
    """Optuna's first suggestions are the points to evaluate (each row's own values: what the grid would run), then
    seeded independent draws: the same seed gives the same trials in the same order, another seed others."""
    _, rows = _rows(tmp_path)
    space = parse_space(LR_SPACE)

    def suggest(seed: int, n: int = 6) -> list[dict]:
        search = tune_search(rows, space, SearchSettings("optuna", n, seed))
        search.search_alg.set_search_properties("val_loss", "min", search.param_space)
        return [search.search_alg.suggest(f"t{i}")["params"] for i in range(n)]

    first, again, other = suggest(0), suggest(0), suggest(1)
    assert first == again
    assert first[0] == {"train.lr": rows[0].train.lr, "train.warmup_ratio": rows[0].train.warmup_ratio}
    assert other[0] == first[0] and other[1:] != first[1:]
    assert len({json.dumps(p, sort_keys=True) for p in first}) == 6
    for p in first:
        assert 1e-5 <= p["train.lr"] <= 1e-2 and 0 <= p["train.warmup_ratio"] <= 0.1


def test_the_random_search_trial_count_is_tunes(tmp_path):
    """The count a resumed search is checked against equals what Tune's generator really makes, points and gridded
    rows included."""
    from ray.tune.experiment import Experiment

    _, rows = _rows(tmp_path, ids=(3, 9))
    for raw, n in [(LR_SPACE, 3), ({**LR_SPACE, "train.scheduler": {"grid": ["linear", "cosine"]}}, 2),
                   ({"space": LR_SPACE, "points": [{"train.lr": 1e-3}]}, 4)]:
        space = parse_space(raw)
        search = tune_search(rows, space, SearchSettings("random", n, 0))
        search.search_alg.add_configurations([Experiment("count", lambda c: None, config=search.param_space,
                                                         num_samples=n)])
        made = 0
        while search.search_alg.next_trial() is not None:
            made += 1
        assert made == search.trials, (raw, made, search.trials)


def test_importance_finds_the_parameter_that_matters_and_the_plot_is_drawn(tmp_path):
    from sweeps.reporting.search_section import importance, plot_parallel

    rng = __import__("numpy").random.default_rng(0)
    lr = 10 ** rng.uniform(-5, -2, 40)
    warmup = rng.uniform(0, 0.1, 40)
    table = pd.DataFrame({"train.lr": lr, "train.warmup_ratio": warmup, "stage": 1,
                          "best_val_loss": (math.log10(3e-4) - pd.Series(lr).map(math.log10)) ** 2
                          + rng.normal(0, 0.01, 40)})
    imp = importance(table, LR_SPACE)
    assert set(imp) == {"train.lr", "train.warmup_ratio"} and imp["train.lr"] > 0.8 > imp["train.warmup_ratio"]
    assert importance(table.head(2), LR_SPACE) == {}  # too few trials to attribute anything
    png = plot_parallel(table, LR_SPACE, 1, tmp_path)
    assert png.name == "search_stage1.png" and png.stat().st_size > 10_000


# --- a real search through Ray Tune: its driver SIGKILLed in stage 1, resumed to the end -------------------------

SEED, SAMPLES = 7, 10  # 10: room to kill the driver after 2 trials ended and before the last started, on a loaded CI


def _ended(stage_dir: Path) -> dict[str, str]:
    """Trial folder → its result.json, for the trials that ended: their results reached their last epoch, or ASHA
    stopped them (whole lines only: Tune may be writing)."""
    from sweeps.scheduling import DECISIONS_FILE, read_decisions

    stopped = {d["trial"] for d in read_decisions(stage_dir / DECISIONS_FILE) if d["decision"] == "stop"}
    done = {}
    for d in stage_dir.glob("s1-*") if stage_dir.is_dir() else []:
        text = (d / "result.json").read_text() if (d / "result.json").is_file() else ""
        rows = [json.loads(line) for line in text.split("\n")[:-1] if line.strip()]
        if d.name in stopped or any(r.get("epoch") == r.get("epochs_planned") for r in rows):
            done[d.name] = text
    return done


@pytest.fixture(scope="module")
def optuna_search(ray_local, variants, corpus, tmp_path_factory):
    """A tiny Optuna search of stage 1 (paper row 3, SAMPLES samples, 2 at a time, seed 7; ASHA from epoch 4 of 6)
    whose best 2 trials continue into stage 2, as `vlm-sweep sweep` runs it: its driver SIGKILLed once two stage-1
    trials ended and two more were suggested and running, then resumed to the end (in this process, on the test
    session's Ray, as `--resume` runs it). (out, the ended trials' results at the kill)."""
    from tests.conftest import sigkill_driver

    tmp = tmp_path_factory.mktemp("search")
    out = tmp / "optuna"
    cmd = [sys.executable, "-m", "sweeps.cli", "sweep", "--data", str(variants), "--images", str(corpus / "images"),
           "--preset", "tiny", "--paper_ids", "[3]", "--stage", "all", "--out", str(out), "--wandb", "disabled",
           "--search", "optuna", "--num_samples", str(SAMPLES), "--max_concurrent", "2", "--search_seed", str(SEED),
           "--space", json.dumps(LR_SPACE), "--stage2_parents", "2", "--asha.grace_period", "4"]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # the driver starts its own local Ray
    with (tmp / "sweep.log").open("w") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
        deadline = time.time() + 400
        while time.time() < deadline and proc.poll() is None and len(_ended(out / "stage1")) < 2:
            time.sleep(0.05)
        assert proc.poll() is None, (tmp / "sweep.log").read_text()[-3000:]
        done_before = _ended(out / "stage1")
        started = len(list((out / "stage1").glob("s1-*")))
        assert len(done_before) >= 2 and started < SAMPLES, started  # killed mid-search
        sigkill_driver(proc, "a search with trials in flight")
    run_sweep(SweepConfig(data=str(variants), images=str(corpus / "images"), preset="tiny", paper_ids=[3], stage="all",
                          out=str(out), wandb="disabled", search="optuna", num_samples=SAMPLES, max_concurrent=2,
                          search_seed=SEED, space=json.dumps(LR_SPACE), stage2_parents=2,
                          asha=AshaConfig(grace_period=4), resume=True))
    return out, done_before


def _suggested(tmp_path, seed: int) -> set[str]:
    """What the seeded searcher suggests for the row, without Ray: the configurations an uninterrupted search runs
    (Optuna's first suggestions are seeded draws whatever order results arrive in)."""
    _, rows = _rows(tmp_path)
    search = tune_search(rows, parse_space(LR_SPACE), SearchSettings("optuna", SAMPLES, seed))
    search.search_alg.set_search_properties("val_loss", "min", search.param_space)
    return {json.dumps({k: float(f"{v:.10g}") for k, v in search.search_alg.suggest(f"t{i}")["params"].items()},
                       sort_keys=True) for i in range(SAMPLES)}


def _params_set(out: Path, stage: int = 1) -> set[str]:
    table = pd.read_csv(out / "trials.csv")
    part = table[table["stage"] == stage]
    return {json.dumps({k: float(f"{r[k]:.10g}") for k in LR_SPACE}, sort_keys=True) for _, r in part.iterrows()}


@pytest.mark.slow
def test_a_search_whose_driver_is_killed_resumes_to_the_same_trials(optuna_search, tmp_path):
    """The same configurations the seeded searcher suggests uninterrupted, none twice, the trials finished
    before the kill not run again."""
    out, done_before = optuna_search
    table = pd.read_csv(out / "trials.csv")
    assert (table["stage"] == 1).sum() == SAMPLES and table["config_id"].is_unique  # none suggested twice
    assert _params_set(out) == _suggested(tmp_path, SEED) != _suggested(tmp_path, SEED + 1)
    for name, text in done_before.items():  # finished before the kill: kept, not run again
        assert (out / "stage1" / name / "result.json").read_text() == text


@pytest.mark.slow
def test_a_searched_stage1_feeds_its_best_trials_to_stage2(optuna_search):
    out, _ = optuna_search
    summary = json.loads((out / "trials.json").read_text())["stages"]
    s1, s2 = summary["1"], summary["2"]
    assert len(s1) == SAMPLES and len({t["config_id"] for t in s1}) == SAMPLES
    best_two = sorted((t for t in s1 if t["best_val_loss"] is not None), key=lambda t: t["best_val_loss"])[:2]
    parents = [json.loads((Path(t["path"]) / "params.json").read_text()) for t in s2]
    continued = {trial_from_config(p).spec.parent for p in parents}
    assert continued == {t["config_id"] for t in best_two}
    lineage = json.loads((out / "lineage.json").read_text())
    for t in s2:  # each continuation is named after its parent, and started from the parent's best checkpoint
        (parent,) = [p for p in continued if t["config_id"].endswith(p.rsplit("-", 1)[1])]
        assert lineage[parent]["checkpoint"] and Path(lineage[parent]["checkpoint"]).is_dir()
    table = pd.read_csv(out / "trials.csv")
    assert {"train.lr", "train.warmup_ratio"} <= set(table.columns)
    assert table[table["stage"] == 1]["train.lr"].notna().all() and table[table["stage"] == 2]["train.lr"].isna().all()
    first = table[table["stage"] == 1]
    assert ((first["train.lr"] >= 1e-5) & (first["train.lr"] <= 1e-2)).all()
    record = json.loads((out / "stage1" / "search.json").read_text())
    assert record["algorithm"] == "optuna" and record["trials"] == SAMPLES and set(record["space"]) == set(LR_SPACE)
    md = (out / "report.md").read_text()
    assert "## Search (stage 1)" in md and f"optuna search, {SAMPLES} of {SAMPLES} trials" in md
    assert "Importance of each searched parameter" in md and "![search_stage1](search_stage1.png)" in md
    assert (out / "search_stage1.png").stat().st_size > 10_000


@pytest.mark.slow
def test_the_search_shows_in_the_browser_and_in_the_analysis_notebook(optuna_search, tmp_path):
    from tests.browser import render
    from tests.notebook import run_analysis_notebook

    out, _ = optuna_search
    shown = render(out / "report.html", tmp_path / "browser")
    figure = [i for i in shown.images if i["alt"] == "search_stage1"]
    assert figure and figure[0]["decoded"], shown.images
    assert shown.blank_images() == [] and shown.unlike_their_source() == []
    nb, text = run_analysis_notebook(out, tmp_path)
    # its table rebuilt from Tune's records agrees with trials.csv: for the trials resumed after the kill, whose
    # history in Tune starts again at the resume, the best val loss comes from their checkpoints
    assert f"{SAMPLES + 2} trials agree with trials.csv" in text, text[-3000:]
    from sweeps.scheduling import DECISIONS_FILE, read_decisions

    stops = {d["trial"]: d["rung"] for d in read_decisions(out / "stage1" / DECISIONS_FILE) if d["decision"] == "stop"}
    assert f"stopped by ASHA: {stops or 'none'}" in text  # stage 1's ASHA too
    assert f"stage 1: optuna search, {SAMPLES} trials; importance: {{'train.lr':" in text, text[-3000:]
    assert "stage 2: not searched" in text
    shown_images = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
                    if "image/png" in o.get("data", {})]
    assert len(shown_images) >= 2  # the search's parallel coordinates, and the notebook's own plots


def test_an_optuna_study_kept_in_a_database_holds_the_search(tmp_path):
    """``--search-storage sqlite:///...``: the study is in the file (what optuna-dashboard opens), with the trials
    the searcher asked for."""
    import optuna

    _, rows = _rows(tmp_path)
    url = f"sqlite:///{tmp_path / 'study.db'}"
    search = tune_search(rows, parse_space(LR_SPACE), SearchSettings("optuna", 3, 0, url, "my-study"))
    search.search_alg.set_search_properties("val_loss", "min", search.param_space)
    drawn = [search.search_alg.suggest(f"t{i}")["params"]["train.lr"] for i in range(3)]
    study = optuna.load_study(study_name="my-study", storage=url)
    assert [t.params["params/train.lr"] for t in study.trials] == drawn


def test_a_space_is_checked_against_its_own_stage(tmp_path):
    """LoRA tunes the LLM, which only stage 2 trains: a stage-2 space may search it, a stage-1 space may not."""
    lm = {"train.lm_tuning": {"choice": ["full", "lora"]}, "train.lora.rank": {"choice": [8, 16]}}
    with pytest.raises(ConfigError, match="train.lm_tuning: choice value 'lora' is out of the field's range"):
        parse_space(lm, "stage1.yaml", stage=1)
    assert parse_space(lm, "stage2.yaml", stage=2).names() == ["train.lm_tuning", "train.lora.rank"]
    cfg = SweepConfig(data=str(tmp_path), images=str(tmp_path), preset="tiny", paper_ids=[3], stage="all",
                      out=str(tmp_path / "out"), wandb="disabled", search="random", space=json.dumps(LR_SPACE),
                      stage2_space=json.dumps(lm))
    sweep = plan_sweep(cfg)
    assert sweep.spaces[2].names() == ["train.lm_tuning", "train.lora.rank"]
    assert [p.spec.parent for p in sweep.stages[2]] == [ROW3]  # planned as the row's continuation until stage 1 ends


def test_a_long_inline_space_is_read_as_a_mapping_not_a_file_name():
    points = [{"train.lr": round(1e-4 * 1.5 ** i, 8)} for i in range(12)]  # longer than a file name may be
    space = read_space(json.dumps({"space": {"train.lr": {"loguniform": [1e-5, 1e-2]}}, "points": points}))
    assert len(space.points) == 12
