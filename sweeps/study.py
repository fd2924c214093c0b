"""``vlm-sweep run``: the whole study on the embedded default, on packaged assets only (no GPU, no hub).

Steps, each reused when its output already exists (rerun the same command to continue; it says what it reuses):

1. corpus: the sample corpus (easy-vqa + scikit-image / scikit-learn photos) → ``OUT/corpus``;
2. data: ``data build`` on Ray Data — validate, keep COCO images, embed (MiniLM), UMAP, cluster, sample both
   variants (``10kRandom``, ``20kUmap``) → ``OUT/data``;
3. sweep: the study's 19 stage-1 configs, lineage, the 6 stage-2 continuations under ASHA, on Ray Tune + Train
   → ``OUT/sweep`` (finished trials are kept on a rerun: ``--resume``);
4. eval: every stage-2 trial's best checkpoint — held-out loss / perplexity and easy-vqa answer accuracy, with
   the image and under the text-only controls → ``OUT/eval/<trial>.json``;
5. report: ``OUT/report.md`` (+ PNGs) and ``OUT/report.html`` (the same as one self-contained page): data summary,
   both stages, loss curves, the lineage diagram, ASHA, evaluation with controls,
   sample generations, the best config and how to chat with it.

    vlm-sweep run --preset local                               # the README's first command
    vlm-sweep run --preset local-long --out runs/long          # one lineage, trained longer (22 min)
    vlm-sweep run --preset tiny --n-train-images 60 --paper-ids '[3, 9]' --out runs/smoke   # a minute or two
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from data_pipeline.build import build
from data_pipeline.config import BuildConfig, VariantSpec
from data_pipeline.pope_local import photo_images, write_pope_set
from data_pipeline.sample_corpus import TRAIN_FILE, write_sample_corpus
from vlm_core.base.logs import event, open_log
from vlm_core.base.outputs import atomic_write_text
from vlm_core.config import check_field, choices
from vlm_core.evaluation.benchmark_eval import read_answers
from vlm_core.evaluation.benchmarks.easy_vqa import EVAL_FILE
from vlm_core.evaluation.heldout import EvalConfig, evaluate_checkpoint, protocol, question_set
from vlm_core.presets import preset

from .driver import SweepConfig, check_space, plan_sweep, run_sweep
from .reporting.benchmark_table import check_select_by, read_evals
from .reporting.study_report import chat_command, write_study_report

log = logging.getLogger(__name__)

STUDY_BENCHMARKS = ("easy-vqa", "pope")
"""What ``vlm-sweep run`` evaluates every stage-2 checkpoint on (the embedded default's benchmarks)."""
LOCAL_POPE_BUDGET = 16
"""New tokens per answer on the sample corpus's POPE set instead of POPE's 128: the embedded default's models (1–3
optimizer steps a trial) rarely end a turn, and 128 tokens of rambling made the study's evaluation about 5× longer
for the same verdicts — both reading rules decide on the answer's start (LLaVA's on its first sentence, lmms-eval's
on the whole of a bare yes / no). A protocol of its own (``max_new_tokens`` 16 beside
``reference_max_new_tokens`` 128 in the results); ``--benchmark-budgets`` on ``vlm-sweep sweep`` / ``eval``
sets any benchmark's."""


@dataclass
class StudyConfig:
    """What ``vlm-sweep run`` runs."""

    preset: str = "local"
    """tiny (smoke runs), local (the whole grid on 2 cores), local-long (one lineage, trained longer),
    local-clip / local-long-clip (the same with a random-init CLIP), paper (GPUs)."""
    out: str = "runs/main"
    """Output folder (rerun with the same one to reuse finished steps and trials)."""
    grid: str = "paper19"
    """paper19 (the study's 19 + 6 runs), lora or full."""
    paper_ids: list[int] | None = None
    """paper19 rows to run (default: the preset's ``study.paper_ids``: all; ``local-long``: [7])."""
    n_train_images: int = 600
    """Size of the sample corpus (easy-vqa images)."""
    random_size: int = 300
    """Rows of the 10kRandom variant."""
    umap_size: int = 400
    """Rows of the 20kUmap variant."""
    eval_questions: int | None = None
    """Held-out easy-vqa questions per stage-2 checkpoint, equal shares of yes/no, colour, shape (default: the
    preset's ``study.eval_questions``: 36; local-long: 150)."""
    eval_val_samples: int | None = None
    """Held-out conversations scored for loss / perplexity per checkpoint (default: the preset's
    ``study.eval_val_samples``: 8; local-long: 16)."""
    dense_groups: int | None = None
    """G of the dense-connector trials (default: the preset's, 4)."""
    num_workers: int | None = None
    """Ray Train workers (data-parallel ranks) per trial (default: the hardware profile's, 1)."""
    wandb: str = "auto"
    """auto (online with a key, else offline), offline, online, disabled."""
    eval_benchmarks: str | None = None
    """Benchmarks to evaluate every stage-2 checkpoint on besides easy-vqa and the corpus's POPE set,
    comma-separated (e.g. ``gqa,xgqa-id``; their files under ``benchmarks``)."""
    benchmarks: str | None = None
    """The folder holding one folder per benchmark (README: "Benchmarks"), for ``eval_benchmarks``."""
    select_by: str | None = None
    """What names the best config (the report's and the chat command's): a benchmark metric such as ``pope.f1``
    (default: easy-vqa accuracy with the image, then its gain over another image, then the held-out loss)."""
    min_free_gb: float | None = None
    """Refuse to start unless ``out`` and the temp folder have this much free space (GiB; default per preset:
    the preset's ``min_free_gb``)."""
    max_steps_per_epoch: int | None = None
    """Override the preset's optimizer steps per epoch (``vlm-sweep sweep --max-steps-per-epoch``)."""
    search: str = "grid"
    """Stage 1's trials: the grid's rows (``grid``), or a ``random`` / ``optuna`` search over ``space`` from them
    (as ``vlm-sweep sweep --search``; README "Search")."""
    space: str | None = None
    """Stage 1's search space (a YAML file or an inline mapping; ``vlm-sweep sweep --space``)."""
    num_samples: int = 8
    """Trials of a search (``vlm-sweep sweep --num-samples``)."""
    search_seed: int = 0
    """Seeds the searcher (``vlm-sweep sweep --search-seed``)."""
    max_concurrent: int | None = None
    """Stage-1 trials in flight (default: as many as fit)."""
    scheduler: str = "auto"
    """Early stopping (``vlm-sweep sweep --scheduler``)."""
    stage2_scheduler: str | None = None
    """Stage 2's early stopping when it differs (``vlm-sweep sweep --stage2-scheduler``)."""
    stage2_parents: int | None = None
    """Stage 2 continues the best K stage-1 trials (``vlm-sweep sweep --stage2-parents``)."""
    stage2_with_points: bool = False
    """... and the trials of the search's points evaluated first (``vlm-sweep sweep --stage2-with-points``)."""
    verbose: bool = False
    """Ray's, Tune's and Ray Data's own output and every INFO line on the console too (they always go to
    ``OUT/logs/vlm-sweep.log``); without it the console has one line per step and per trial event."""


def _say(msg: str) -> None:
    event("%s", msg)


def prepare_corpus(cfg: StudyConfig, out: Path) -> Path:
    return sample_corpus(out / "corpus", cfg.n_train_images)


def sample_corpus(corpus: Path, n_train_images: int) -> Path:
    """The sample corpus (and its POPE set) in ``corpus``, written unless it is there."""
    if (corpus / TRAIN_FILE).is_file():
        _say(f"corpus: reusing {corpus}")
    else:
        _say(f"corpus: writing the sample corpus ({n_train_images} training images) to {corpus}")
        write_sample_corpus(corpus, n_train_images=n_train_images)
    if not (corpus / "pope").is_dir():  # a corpus written before the POPE set was part of it
        write_pope_set(corpus, photo_images(corpus / TRAIN_FILE))
    return corpus


def study_benchmarks(extra: str | None = None) -> list[str]:
    """:data:`STUDY_BENCHMARKS`, then the ``extra`` ones (comma-separated) not already among them."""
    more = [b.strip() for b in (extra or "").split(",")]
    return [*STUDY_BENCHMARKS, *(b for b in more if b and b not in STUDY_BENCHMARKS)]


def benchmark_flags(corpus: Path, extra: str | None = None, root: str | None = None) -> dict[str, str | None]:
    """The sweep's evaluation on the embedded default: easy-vqa and the corpus's POPE set
    (``data_pipeline.pope_local``), read from the corpus, then ``extra`` benchmarks read under ``root``."""
    return {"eval_benchmarks": ",".join(study_benchmarks(extra)), "benchmarks": root,
            "benchmark_files": f"easy-vqa={corpus},pope={corpus / 'pope'}",
            "benchmark_images": f"pope={corpus / 'images'}", "benchmark_budgets": f"pope={LOCAL_POPE_BUDGET}"}


def check_eval_flags(cfg: StudyConfig) -> None:
    """Refuse unknown benchmarks and a ``select_by`` no evaluated benchmark gives, before anything runs."""
    names = study_benchmarks(cfg.eval_benchmarks)
    for name in names:
        choices.BENCHMARK.check(name, "run --eval-benchmarks")
    if cfg.select_by:
        check_select_by(cfg.select_by)
        check_field(cfg.select_by.partition(".")[0] in names, "select_by",
                    f"{cfg.select_by}: its benchmark is not evaluated (evaluated: {', '.join(names)})")


def prepare_data(cfg: StudyConfig, corpus: Path, out: Path) -> dict[str, Any]:
    data = out / "data"
    variants = [VariantSpec("10kRandom", "random", cfg.random_size), VariantSpec("20kUmap", "umap", cfg.umap_size)]
    manifest = data / "manifest.json"
    if manifest.is_file():
        m = json.loads(manifest.read_text())
        built = {k: v.get("sampled") for k, v in m.get("variants", {}).items()}  # train + own val
        if built == {v.name: v.size for v in variants} and all(
                (data / v.name / "train-00000.parquet").is_file() for v in variants):
            _say(f"data: reusing {data} ({', '.join(f'{k} {n} rows' for k, n in built.items())})")
            return m
    _say(f"data: building {', '.join(v.name for v in variants)} with Ray Data into {data}")
    return build(BuildConfig(source=str(corpus / TRAIN_FILE), images=str(corpus / "images"), out=str(data),
                             variants=variants))


def run_sweep_stages(cfg: StudyConfig, corpus: Path, out: Path) -> dict[str, Any]:
    sweep_dir = out / "sweep"
    resume = (sweep_dir / "stage1").exists()
    sweep = study_sweep_config(cfg, corpus, out, resume)
    what = f"{cfg.search} search of {cfg.grid}" if cfg.search != "grid" else cfg.grid
    kept = " — finished trials are kept" if resume else ""
    _say(f"sweep: {'resuming' if resume else 'starting'} {what} (stage 1, then stage 2"
         f"{' under ASHA' if sweep.asha_in(2) else ''}) in {sweep_dir}{kept}")
    return run_sweep(sweep)


def study_sweep_config(cfg: StudyConfig, corpus: Path, out: Path, resume: bool = False) -> SweepConfig:
    """The sweep ``vlm-sweep run`` runs (also built before anything runs, so its flags are checked first)."""
    return SweepConfig(data=str(out / "data"), images=str(corpus / "images"), preset=cfg.preset,
                       grid=cfg.grid, paper_ids=cfg.paper_ids, stage="all", out=str(out / "sweep"),
                       dense_groups=cfg.dense_groups, num_workers=cfg.num_workers,
                       resume=resume, wandb=cfg.wandb, min_free_gb=cfg.min_free_gb,
                       eval_limit=cfg.eval_questions, select_by=cfg.select_by or "val_loss",
                       max_steps_per_epoch=cfg.max_steps_per_epoch,
                       search=cfg.search, space=cfg.space, num_samples=cfg.num_samples,
                       search_seed=cfg.search_seed, max_concurrent=cfg.max_concurrent,
                       scheduler=cfg.scheduler, stage2_scheduler=cfg.stage2_scheduler,
                       stage2_parents=cfg.stage2_parents,
                       stage2_with_points=cfg.stage2_with_points,
                       **benchmark_flags(corpus, cfg.eval_benchmarks, cfg.benchmarks))


def easy_vqa_answers(sweep_dir: Path, config_id: str) -> dict[str, dict[str, str]] | None:
    """The easy-vqa answers the sweep's benchmark evaluation gave for a config (``condition → id → answer``)."""
    result = read_evals(sweep_dir).get(config_id, {}).get("easy-vqa")
    if not result:
        return None
    merged: dict[str, dict[str, str]] = {}
    for path in result.get("answers", []):
        for cond, got in read_answers(Path(path)).items():
            merged.setdefault(cond, {}).update(got)
    return merged


def evaluate_stage2(cfg: StudyConfig, corpus: Path, out: Path, stage2: list[dict[str, Any]]) -> list[dict]:
    """Held-out loss, perplexity and the easy-vqa answers (the sweep's benchmark answers, scored per question type
    with samples) of every stage-2 trial's best checkpoint → ``OUT/eval/<config>.json``."""
    base = EvalConfig(questions=str(corpus / EVAL_FILE), images=str(corpus / "images"),
                      max_questions=cfg.eval_questions, max_val_samples=cfg.eval_val_samples)
    n_questions = len(question_set(base))  # how many questions each checkpoint answers
    results = []
    for row in stage2:
        ckpt = row.get("best_checkpoint")
        if not ckpt:
            error = row.get("error")
            plain = re.sub(r"\x1b\[[0-9;]*m", "", str(error)).splitlines()[0][:200] if error else ""
            reason = f"the trial failed: {plain}" if error else "none of the checkpoints it reported is on storage"
            _say(f"eval: {row['config_id']} has no checkpoint ({reason}; see the sweep report); skipped")
            continue
        target = out / "eval" / f"{row['config_id']}.json"
        previous = json.loads(target.read_text()) if target.is_file() else {}
        ecfg = dataclasses.replace(base, val=str(out / "data" / row["dataset"] / "val-00000.parquet"))
        # reused only if scored under the same protocol, on as many questions, under the same conditions (an
        # eval.json from before the short-answer instruction and answer extraction is redone, not mixed in)
        answers = previous.get("answers", {})
        same = (answers.get("protocol") == protocol(ecfg) and answers.get("n") == n_questions
                and sorted(answers.get("accuracy", {})) == sorted(["image", *ecfg.controls]))
        if previous.get("checkpoint") == ckpt and same:
            _say(f"eval: reusing {target}")
            results.append(previous)
            continue
        if previous.get("checkpoint") == ckpt:
            _say(f"eval: {target} was scored under another protocol; evaluating again")
        _say(f"eval: {row['config_id']} ({cfg.eval_questions} questions × image / zeros / shuffled; prompt + "
             f"\"{ecfg.instruction}\", up to {ecfg.max_new_tokens} new tokens)")
        result = {"config_id": row["config_id"],
                  **evaluate_checkpoint(ckpt, ecfg, given=easy_vqa_answers(out / "sweep", row["config_id"]))}
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(target, json.dumps(result, indent=2))
        results.append(result)
    return results


def run_main_job(cfg: StudyConfig) -> dict[str, Any]:
    sizes = preset(cfg.preset).study
    defaults = {"paper_ids": list(sizes.paper_ids) if sizes.paper_ids else None,
                "eval_questions": sizes.eval_questions, "eval_val_samples": sizes.eval_val_samples}
    cfg = dataclasses.replace(cfg, **{k: v for k, v in defaults.items() if getattr(cfg, k) is None})
    if cfg.paper_ids is not None:
        _say(f"preset {cfg.preset}: paper19 rows {cfg.paper_ids} only")
    check_eval_flags(cfg)
    out = Path(cfg.out).resolve()
    plan_sweep(study_sweep_config(cfg, out / "corpus", out))  # a bad search space is refused before any data
    check_space(out, cfg.preset, cfg.min_free_gb, "run --out")
    open_log()  # OUT passed its checks: the log file may be written
    t0 = time.perf_counter()
    corpus = prepare_corpus(cfg, out)
    manifest = prepare_data(cfg, corpus, out)
    sweep = run_sweep_stages(cfg, corpus, out)
    evals = evaluate_stage2(cfg, corpus, out, sweep["stages"][2])
    summary = write_study_report(out, manifest, out / "sweep", sweep["report"], evals,
                                 wall_s=time.perf_counter() - t0, select_by=cfg.select_by)
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2, default=str))
    best = summary["best"]
    _say(f"done in {summary['wall_s']:.0f} s. Report: {summary['report']} (as a page: {summary['html']})")
    if best:
        acc, em, nan = best["accuracy"], best.get("exact_match", {}), float("nan")
        _say(f"best config: {best['config_id']} — val loss {best['val_loss']:.4f}; answer accuracy (yes/no by the "
             f"first word, open answers by whole word) with the image {acc['image']:.3f}, zeroed image "
             f"{acc.get('zeros', nan):.3f}, another image {acc.get('shuffled', nan):.3f}; strict exact match "
             f"{em.get('image', nan):.3f} / {em.get('zeros', nan):.3f} / {em.get('shuffled', nan):.3f}")
        _say(f"chat with it: {chat_command(best['checkpoint'], best['sample_image'], best['sample_question'])}")
    return summary
