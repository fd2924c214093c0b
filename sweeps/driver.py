"""``vlm-sweep sweep``: the ablation study on Ray Tune, one Ray Train run per trial.

Stage 1 runs the grid's projector-only trials; the lineage manifest then records, for every stage-1 config,
its best checkpoint (by validation loss); stage 2 starts each continuation from the checkpoint of the config
it continues, under ASHA (``time_attr="epoch"``). Results live under ``--out`` (Tune's ``storage_path``):
``stage1/``, ``stage2/`` (Tune experiments), ``lineage.json``, ``trials.json`` and the report (``report.md``,
``trials.csv``, ``loss_curves.png``, ``by_axis.png``; see sweeps/reporting/sweep_report.py). Each trial is one W&B run
(offline unless a key is configured; see sweeps/tracking.py). Interrupted (Ctrl-C, a lost driver)? Rerun the
same command with ``--resume``: finished trials are kept, unfinished ones continue.

    vlm-sweep sweep --data data --preset local --grid paper19 --stage all          # CPU, the local preset
    vlm-sweep sweep --data data --preset local --grid paper19 --stage 1 --dry-run
    RAY_ADDRESS=auto vlm-sweep sweep --data /shared/data --preset paper --backend a100-40g --out /shared/runs
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from data_pipeline.features import EncoderActors
from data_pipeline.features import build_feature_caches as build_feature_caches_of
from vlm_core.assets.hub import ASSETS_ENV
from vlm_core.base.errors import ConfigError, VlmSweepError
from vlm_core.base.logs import event, is_verbose
from vlm_core.base.outputs import GiB, atomic_write_text, check_output_dir
from vlm_core.base.ray_env import init_ray, largest_node
from vlm_core.base.registry import Registry
from vlm_core.config import TrainConfig, VLMConfig, check_field, choices
from vlm_core.data.dataset import read_records
from vlm_core.data.lengths import formatter_for, formatter_key, lengths_table, measure
from vlm_core.evaluation.benchmarks import budgets_by_name, by_name
from vlm_core.presets import PRESETS, preset
from vlm_core.training.checkpoint import CheckpointError, check_projector_selection, read_meta
from vlm_core.training.faults import from_env as faults_from_env
from vlm_core.training.one_stage import DataSpec

from .cluster.node_types import ClusterView, discover
from .evaluation import EVAL_PROFILE, SweepEvalConfig, eval_resources, evaluate_checkpoints
from .matrix import GRIDS, TrialSpec, continuation, get_grid
from .profiles import BACKENDS, PROFILES, TrialResources, trial_resources
from .reporting.benchmark_table import EVAL_FILE, check_select_by
from .reporting.results import LINEAGE_FILE, TrialResult, read_sweep, read_trials, record_lineage
from .reporting.sweep_report import LENGTHS_FILE, write_report
from .scheduling import DECISIONS_FILE, AshaLink, RecordingASHA, rung_milestones
from .search.algorithms import SEARCH_FILE, SEARCHERS, Row, SearchSettings, TuneSearch, check_search, tune_search
from .search.space import SearchSpace, apply, read_space
from .statuses import METRIC, MODE
from .tracking import MODES as WANDB_MODES
from .tracking import log_evaluation, wandb_callbacks
from .trial import TRIAL_RUNNERS, remove_workdirs, run_trial, runs_in_tune
from .trial_config import Trial, TrialRun, trial_configs, trial_from_config, trial_identity
from .trial_events import TrialEvents

log = logging.getLogger(__name__)



@dataclass
class AshaConfig:
    """Early stopping of stage-2 trials."""

    grace_period: int = 1
    """Epochs every trial runs before it can be stopped."""
    reduction_factor: int = 2
    """Keep 1/reduction_factor of the trials at each rung."""
    max_concurrent: int = 1
    """Stage-2 trials in flight. The first trial to reach a rung always continues, so with few trials pruning
    only happens when they are not all running at once."""
    decision_wait_s: float = 120.0
    """How long a stage-2 trial that reached a rung waits for ASHA's decision before it trains on (0: it does not
    wait, Ray's default: a stopped trial may then train past its rung until the stop reaches its workers)."""

    def __post_init__(self) -> None:
        check_field(self.grace_period >= 1, "asha.grace_period", "must be >= 1")
        check_field(self.reduction_factor >= 2, "asha.reduction_factor", "must be >= 2")
        check_field(self.decision_wait_s >= 0, "asha.decision_wait_s", "must be >= 0 (seconds)")


@dataclass
class SweepConfig:
    """The sweep."""

    data: str
    """Output folder of ``vlm-sweep data build`` (one sub-folder per dataset variant)."""
    images: str
    """Image root the variants' paths are relative to."""
    preset: str = "local"
    """Model preset: ``tiny``, ``local`` (CPU, offline) or ``paper`` (TinyCLIP + Llama-3.2-1B on A100s)."""
    grid: str = "paper19"
    """``paper19`` (the study's 19 + 6 runs), ``lora`` (the same, its 6 continuations with LoRA) or ``full`` (the
    Cartesian grid, continued both ways)."""
    stage: str = "all"
    """``1``, ``2`` or ``all``."""
    out: str = "runs/sweep"
    """Experiment folder (Tune's storage_path; shared storage on multi-node clusters)."""
    backend: str | None = None
    """How hardware profiles map to this cluster (cpu, a100-40g, a100-80g, whole-gpu, mig-40g, mig-80g);
    default: cpu for the tiny/local presets, a100-40g for paper."""
    cluster_config: str | None = None
    """The autoscaler config of the cluster (``cluster.yaml``): trials are checked against what its node types can
    ever hold, not against the nodes up now, and the autoscaler launches the rest (default: the autoscaler's own
    config in the GCS, or ``~/ray_bootstrap_config.yaml`` when the driver runs on a ``ray up`` head; neither: the
    nodes up now)."""
    limit: int | None = None
    """Run only the first N trials of each stage (smoke runs)."""
    paper_ids: list[int] | None = None
    """paper19 only: run these stage-1 rows and the continuations of those among them (e.g. [3, 7])."""
    max_steps_per_epoch: int | None = None
    """Override the preset's optimizer steps per epoch (tiny: 2, local: 1, local-long: 24, paper: the whole
    variant)."""
    max_concurrent: int | None = None
    """Stage-1 trials in flight (default: as many as the cluster fits)."""
    max_failures: int = 2
    """Train restarts of a failed trial (from its last checkpoint)."""
    resume: bool = False
    """Continue an interrupted sweep: finished trials are not rerun."""
    dry_run: bool = False
    """Print the trials, their profiles and the Ray resources they request; run nothing."""
    verbose: bool = False
    """Ray's, Tune's and Ray Data's own output and every INFO line on the console too (they always go to
    ``OUT/logs/vlm-sweep.log``); without it the console has one line per trial event."""
    wandb: str = "auto"
    """W&B logging: ``auto`` (online with a key, else offline), ``offline``, ``online`` or ``disabled``."""
    min_free_gb: float | None = None
    """Refuse to start unless ``out`` and the temp folder (trials' scratch) have this much free space (GiB;
    default: the preset's ``min_free_gb``; a stage-2 checkpoint of ``local`` is ~1.6 GB with its optimizer state)."""
    feature_cache: bool = True
    """Encode every image once per (dataset, encoder, layer selection) on Ray Data before the trials, next to the
    dataset (``<data>/<variant>/features/<key>/``, else under ``out``), and have trials read those features instead
    of running the frozen encoder; ``false`` encodes on the fly in every trial."""
    assets: str | None = None
    """An assets folder (``vlm-sweep assets download --preset paper --to DIR``, on shared storage): hub models it
    holds at their pinned revision load from it, so trial workers never download them (default:
    ``$VLM_SWEEP_ASSETS``)."""
    num_workers: int | None = None
    """Ray Train workers per trial: data-parallel ranks training one model (gloo on CPU, NCCL on GPU), each optimizer
    step's global batch split across them, so N workers make the update one makes (default: the hardware
    profile's, 1). Fractional-GPU backends refuse more than one (NCCL needs whole devices)."""
    stage2_num_workers: int | None = None
    """Workers per stage-2 trial (default: ``num_workers``)."""
    stage2_sharding: str = "none"
    """Stage-2 trials that tune the whole LLM: ``none`` (each worker holds the whole model) or ``fsdp`` (its weights,
    gradients and AdamW state split over the trial's workers: an LLM too large for one GPU trains, with the same
    update; needs ``stage2_num_workers`` >= 2 to shard anything). LoRA trials are never sharded."""
    runner: str = "auto"
    """How a trial runs its training loop: ``auto`` — in the Tune trial itself for the CPU backend's one-worker
    trials (no Train controller and worker processes to start: ~8 s less a trial here; Tune reuses the trial
    processes and restarts failed trials), through a Ray Train ``TorchTrainer`` for the rest (GPUs, several
    workers); ``train`` — every trial through a ``TorchTrainer``."""
    dense_groups: int | None = None
    """G of the dense-connector trials: DCI averages G contiguous groups of the encoder's hidden states (default:
    the preset's, 4; see vlm_core.model.projectors)."""
    asha: AshaConfig = field(default_factory=AshaConfig)
    eval_benchmarks: str | None = None
    """After training, evaluate every trial's best checkpoint on these benchmarks, comma-separated (pope, vqav2, gqa,
    xgqa-id, textvqa, scienceqa-img, mme, mmbench-en-dev, easy-vqa), as Ray tasks across the cluster (one per
    checkpoint × benchmark × shard, each asking for the ``a100-10g`` profile's resources on this backend); results
    land in trials.csv and the reports, keyed by checkpoint and protocol (a rerun reuses them)."""
    benchmarks: str | None = None
    """The folder holding one folder per benchmark (README: "Benchmarks"; shared storage on a cluster)."""
    benchmark_files: str | None = None
    """``NAME=FOLDER,...``: where a benchmark's files are, instead of under ``benchmarks``."""
    benchmark_images: str | None = None
    """``NAME=FOLDER,...``: where a benchmark's images are."""
    benchmark_budgets: str | None = None
    """``NAME=N,...``: new tokens per answer instead of a benchmark's reference budget (a protocol of its own)."""
    eval_limit: int | None = None
    """Questions per benchmark: a seeded subset, the same for every checkpoint (default: all)."""
    eval_stage: int = 2
    """Evaluate the checkpoints of this stage and later (1: the stage-1 projectors too)."""
    eval_shards: int = 1
    """Ray tasks per checkpoint × benchmark (each answers every n-th question)."""
    select_by: str = "val_loss"
    """What picks each stage's best config in the reports: ``val_loss`` or a benchmark metric (e.g. ``pope.f1``)."""
    search: str = "grid"
    """How each stage's trials are chosen (``sweeps.search``): ``grid`` (the grid's rows, each once), ``random``
    (``--num-samples`` draws of ``--space`` per row) or ``optuna`` (Optuna's TPE, ``--num-samples`` trials)."""
    space: str | None = None
    """Stage 1's search space: a YAML file or an inline mapping of trial fields to distributions, e.g.
    ``'{"train.lr": {"loguniform": [1.0e-5, 1.0e-2]}}'`` (README "Search")."""
    stage2_space: str | None = None
    """Stage 2's search space (default: none; stage 2 runs each continuation once)."""
    num_samples: int = 8
    """Trials a ``random`` search draws per row, or an ``optuna`` search runs in all (points to evaluate count)."""
    search_seed: int = 0
    """Seeds the searcher: the same seed suggests the same configs."""
    search_storage: str | None = None
    """``optuna``: keep the study in this database (``sqlite:///study.db``, a PostgreSQL URL), which
    ``optuna-dashboard`` opens (default: in memory, saved with the Tune experiment)."""
    scheduler: str = "auto"
    """Early stopping: ``asha`` in both stages, ``none`` in neither, ``auto``: stage 2 always, stage 1 when it
    searches (``--search random`` / ``optuna``)."""
    stage2_scheduler: str | None = None
    """Stage 2's early stopping, when it differs from ``scheduler`` (``asha`` or ``none``; e.g. a search that prunes
    stage 1 and trains every continuation to the end, to compare them on the benchmarks)."""
    stage2_parents: int | None = None
    """Stage 2 continues the best K stage-1 trials (by ``val_loss``) instead of the grid's continuations (default:
    2 when stage 1 searches, else the grid's)."""
    stage2_with_points: bool = False
    """A searched stage 1: stage 2 also continues the trials of its points evaluated first (the space file's
    ``points``, by default each row's own values), so the search's best meets the study's own choice in stage 2 and
    the evaluation."""
    rehearsal: bool = field(default=False, init=False)
    """Set by ``vlm-sweep rehearse`` only (not a flag, not a config key): the trials ask Ray for what they would ask
    the real cluster, and train on the CPU (``sweeps.trial_config.Trial.rehearsal``)."""

    def eval_config(self) -> SweepEvalConfig | None:
        """The benchmark evaluation asked for (None: none)."""
        if not self.eval_benchmarks:
            return None
        return SweepEvalConfig([b.strip() for b in self.eval_benchmarks.split(",") if b.strip()],
                               root=self.benchmarks, limit=self.eval_limit,
                               files=by_name(self.benchmark_files, "benchmark_files"),
                               images=by_name(self.benchmark_images, "benchmark_images"),
                               budgets=budgets_by_name(self.benchmark_budgets, "benchmark_budgets"),
                               stages=[s for s in (1, 2) if s >= self.eval_stage], shards=self.eval_shards)

    def __post_init__(self) -> None:
        self.assets = self.assets or os.environ.get(ASSETS_ENV) or None
        if self.assets:  # absolute: trial configs name folders that workers in other directories must find
            self.assets = str(Path(self.assets).expanduser().resolve())
        check_field(self.assets is None or Path(self.assets).is_dir(), "assets",
                    f"{self.assets} is not a folder; create it with `vlm-sweep assets download --preset "
                    f"{self.preset} --to {self.assets}`")

        PRESETS.check(self.preset)
        STAGES.check(self.stage)
        GRIDS.check(self.grid)
        if self.backend is not None:
            BACKENDS.check(self.backend)
        check_field(self.max_failures >= 0, "max_failures", "must be >= 0")
        check_field(self.max_concurrent is None or self.max_concurrent >= 1, "max_concurrent", "must be >= 1")
        check_field(self.min_free_gb is None or self.min_free_gb >= 0, "min_free_gb", "must be >= 0")
        check_field(self.limit is None or self.limit >= 1, "limit", "must be >= 1")
        check_field(self.dense_groups is None or self.dense_groups >= 1, "dense_groups", "must be >= 1")
        TRIAL_RUNNERS.check(self.runner)
        choices.SHARDING.check(self.stage2_sharding, "stage2_sharding")
        for name in ("num_workers", "stage2_num_workers"):
            check_field(getattr(self, name) is None or getattr(self, name) >= 1, name, "must be >= 1")
        check_field(self.max_steps_per_epoch is None or self.max_steps_per_epoch >= 1, "max_steps_per_epoch",
                    "must be >= 1")
        check_field(not self.paper_ids or self.grid in ("paper19", "lora"), "paper_ids",
                    "only applies to --grid paper19 or lora")
        WANDB_MODES.check(self.wandb)
        check_field(self.eval_stage in (1, 2), "eval_stage", "must be 1 or 2")
        check_select_by(self.select_by)
        check_field(self.select_by == "val_loss" or bool(self.eval_benchmarks), "select_by",
                    f"{self.select_by} needs --eval-benchmarks naming its benchmark")
        self.eval_config()  # benchmark names, limit and shards refused now, not after training
        SEARCHERS.check(self.search)
        SCHEDULERS.check(self.scheduler)
        if self.stage2_scheduler is not None:
            SCHEDULERS.check(self.stage2_scheduler, "stage2_scheduler")
        check_field(self.num_samples >= 1, "num_samples", "must be >= 1")
        check_field(self.stage2_parents is None or self.stage2_parents >= 1, "stage2_parents", "must be >= 1")
        check_field(self.search_storage is None or self.search == "optuna", "search_storage",
                    "keeps an Optuna study; use it with --search optuna")
        check_field(self.select_by == "val_loss" or not self.searching, "select_by",
                    f"a search optimises what its trials report (val_loss); {self.select_by} is measured after "
                    f"training, by the evaluation tasks; search by val_loss and rank by {self.select_by} in the report")

    @property
    def searching(self) -> bool:
        """Stage 1 draws its trials (``random`` / ``optuna``) rather than enumerating the grid."""
        return self.search != "grid"

    def search_settings(self) -> SearchSettings:
        return SearchSettings(self.search, self.num_samples, self.search_seed, self.search_storage,
                              f"vlm-sweep-{Path(self.out).name}")

    def asha_in(self, stage: int) -> bool:
        """Whether ASHA stops this stage's trials early (``--scheduler``)."""
        which = self.stage2_scheduler if stage == 2 and self.stage2_scheduler is not None else self.scheduler
        return which == "asha" or (which == "auto" and (stage == 2 or self.searching))


class SweepInterrupted(VlmSweepError, RuntimeError):
    """The sweep stopped before every trial of a stage finished (Ctrl-C, SIGUSR1); its state is saved."""


STAGES: Registry[tuple[int, ...]] = Registry("stage", "stage", {"1": (1,), "2": (2,), "all": (1, 2)})
"""``--stage``: which training stages a sweep runs."""

SCHEDULERS: Registry[str] = Registry("scheduler", "scheduler", {
    "auto": "ASHA in stage 2, and in stage 1 when it searches", "asha": "ASHA in both stages",
    "none": "every trial runs all its epochs"})
"""``--scheduler``: early stopping per stage (Ray's synchronous HyperBand is not offered: it pauses trials, which
the per-trial rung waits of ``sweeps.scheduling`` do not know)."""


@dataclass
class PlannedTrial:
    """A trial of the matrix as planned: its row, its Ray resources and its configs, built once (stage 2's parent
    checkpoint and every trial's feature cache are filled in when they are known: :func:`make_trial`)."""

    spec: TrialSpec
    resources: TrialResources
    model: VLMConfig
    train: TrainConfig


@dataclass
class SweepPlan:
    """The trials of every stage the sweep runs (stage 2 of a search: the continuations of every stage-1 row, which
    the best stage-1 trials replace once they are known), and each stage's search space."""

    stages: dict[int, list[PlannedTrial]]
    spaces: dict[int, SearchSpace] = field(default_factory=dict)

    @property
    def every(self) -> list[PlannedTrial]:
        return [p for planned in self.stages.values() for p in planned]


def plan(cfg: SweepConfig, stage: int) -> list[PlannedTrial]:
    """Stage ``stage``'s trials: the grid's rows (``--paper-ids``, ``--limit``), their resources on the backend, and
    their model and training configs under the preset's scale."""
    if stage == 2 and continues_best(cfg):  # its rows are known after stage 1: plan those of every stage-1 row
        trials = [continuation(t) for t in _grid_rows(cfg, 1)]
    else:
        trials = _grid_rows(cfg, stage)
    return plan_specs(cfg, trials)


def _grid_rows(cfg: SweepConfig, stage: int) -> list[TrialSpec]:
    trials = get_grid(cfg.grid, stage)
    if cfg.paper_ids:
        trials = [t for t in trials if t.paper_id in cfg.paper_ids]
    return trials[: cfg.limit] if cfg.limit else trials


def continues_best(cfg: SweepConfig) -> bool:
    """Stage 2 continues the best stage-1 trials (a searched stage 1, or ``--stage2-parents``)."""
    return cfg.searching or cfg.stage2_parents is not None


def plan_specs(cfg: SweepConfig, trials: list[TrialSpec]) -> list[PlannedTrial]:
    """Each row's resources on the backend and its model and training configs under the preset's scale."""
    backend = cfg.backend or preset(cfg.preset).backend
    scale = preset(cfg.preset).scale
    if cfg.max_steps_per_epoch:
        scale = dataclasses.replace(scale, max_steps_per_epoch=cfg.max_steps_per_epoch)
    planned = []
    for t in trials:
        workers = (cfg.stage2_num_workers or cfg.num_workers) if t.stage == 2 else cfg.num_workers
        res = trial_resources(t.profile, backend, workers or PROFILES[t.profile].num_workers)
        model, train = trial_configs(t, cfg.preset, scale, None, res.gradient_checkpointing, cfg.assets,
                                     cfg.dense_groups, cfg.stage2_sharding)
        planned.append(PlannedTrial(t, res, model, train))
    return planned


def plan_sweep(cfg: SweepConfig) -> SweepPlan:
    """Every stage's trials and search space, checked before Ray starts."""
    stages = {s: plan(cfg, s) for s in STAGES[cfg.stage]}
    spaces = {}
    for s, spec in ((1, cfg.space), (2, cfg.stage2_space)):
        if spec and s in stages:
            first = stages[s][0] if stages[s] else None
            spaces[s] = read_space(spec, s, (first.model, first.train) if first else None)
            # stage 2's rows are known after stage 1 (its best K): checked again then, by the searcher
            check_search(cfg.search, spaces[s], len(stages[s]) if s == 1 else 1)
    if cfg.space and 1 not in stages:
        log.warning("--space searches stage 1, which --stage %s does not run", cfg.stage)
    if cfg.searching and not spaces.get(1) and 1 in stages:
        raise ConfigError(f"search: --search {cfg.search} draws from a search space; pass --space FILE.yaml "
                          f"(README \"Search\"), or --search grid for the grid's rows")
    return SweepPlan(stages, spaces)


def format_plan(planned: list[PlannedTrial]) -> str:
    lines = [f"{'trial':44} {'profile':9} {'workers':7} {'resources per worker':32} notes"]
    for p in planned:
        lines.append(f"{p.spec.config_id:44} {p.spec.profile:9} {p.resources.num_workers:<7} "
                     f"{json.dumps(p.resources.resources_per_worker):32} {'; '.join(p.resources.notes)}")
    return "\n".join(lines)


def check_space(out: Path, preset_name: str, override: float | None, what: str) -> None:
    """``out`` and the temp folder (the trials' scratch) are writable and hold the preset's ``min_free_gb``
    (or ``override``) free: checked before Ray starts, not after hours of work."""
    need = int((override if override is not None else preset(preset_name).min_free_gb) * GiB)
    check_output_dir(out, need, what)
    check_output_dir(tempfile.gettempdir(), need, "trial scratch folder (TMPDIR)")


def _variant_paths(cfg: SweepConfig, dataset: str) -> DataSpec:
    vdir = Path(cfg.data) / dataset
    train, val = vdir / "train-00000.parquet", vdir / "val-00000.parquet"
    if not train.is_file():
        raise ConfigError(f"data: {train} is missing; build the variant first (vlm-sweep data build --out "
                          f"{cfg.data} with a variant named {dataset})")
    has_val = val.is_file() and _parquet_rows(val) > 0
    if val.is_file() and not has_val:
        log.warning("%s is empty; each trial holds out 10%% of %s (by id hash) for validation instead", val, train)
    return DataSpec(train=str(train.resolve()), images=str(Path(cfg.images).resolve()),
                    val=str(val.resolve()) if has_val else None)


def _parquet_rows(path: Path) -> int:
    import pyarrow.parquet as pq

    return pq.ParquetFile(path).metadata.num_rows


def encoder_actors(trials: list[PlannedTrial], view: ClusterView) -> EncoderActors:
    """GPU trials on an autoscaling cluster: encode on that many GPUs of the trials' card (up to one node's worth),
    which the autoscaler launches for the trials anyway; otherwise as the nodes up now allow."""
    gpu = next((p.resources for p in trials if p.resources.use_gpu), None)
    if gpu is None or view.shape is None:
        return EncoderActors()
    one = {"GPU": 1.0, **({f"accelerator_type:{gpu.accelerator_type}": 0.001} if gpu.accelerator_type else {})}
    per_node = max((t.slots(one) for t in view.shape.holders(one)), default=0)
    return EncoderActors(per_node, gpu.accelerator_type) if per_node else EncoderActors()


def build_feature_caches(cfg: SweepConfig, trials: list[PlannedTrial], storage: Path, data: dict[str, DataSpec],
                         actors: EncoderActors = EncoderActors()) -> dict[tuple[str, str], str]:
    """One feature cache per (dataset, projector selection) the trials need, built on Ray Data or reused: every
    selection of a dataset from one pass of the encoder over its images."""
    import pyarrow.parquet as pq

    wanted: dict[str, dict[str, VLMConfig]] = {}  # dataset → projector → a model with that selection
    for p in trials:
        wanted.setdefault(p.spec.dataset, {}).setdefault(p.model.projector.name, p.model)
    caches: dict[tuple[str, str], str] = {}
    for dataset, models in wanted.items():
        paths = data[dataset]
        images = [img for f in (paths.train, paths.val) if f
                  for img in pq.read_table(f, columns=["image"]).column("image").to_pylist()]
        root = Path(cfg.data) / dataset / "features"
        try:
            root.mkdir(exist_ok=True)
        except OSError:  # a read-only dataset folder: keep the cache with the experiment
            root = storage / "features" / dataset
        built = build_feature_caches_of(list(models.values()), images, paths.images, root, actors)
        caches.update({(dataset, name): str(folder) for name, folder in zip(models, built)})
    return caches


def make_trial(cfg: SweepConfig, p: PlannedTrial, storage: Path, data: dict[str, DataSpec],
               caches: dict[tuple[str, str], str], init_checkpoint: str | None = None,
               asha: AshaLink | None = None) -> Trial:
    """The trial Tune runs: the planned configs with the stage-2 parent's checkpoint and the feature cache."""
    train = dataclasses.replace(p.train, init_checkpoint=init_checkpoint)
    features = caches.get((p.spec.dataset, p.model.projector.name))
    run = TrialRun(p.model, train, dataclasses.replace(data[p.spec.dataset], features=features),
                   faults=faults_from_env())  # tests only (vlm_core.training.faults); None in a normal sweep
    return Trial(p.spec, p.resources, str(storage / "train"), cfg.max_failures, run,
                 runs_in_tune(p.resources, cfg.runner), asha, rehearsal=cfg.rehearsal)


def spread_cpus(planned: list[PlannedTrial], node_cpus: float, concurrent: int) -> list[PlannedTrial]:
    """``cpu`` backend: trials that run ``concurrent`` at a time share a node's CPUs instead of taking one each.

    Ray sets a worker's torch threads from its CPU request, so a trial running alone on a 2-core machine with
    ``{"CPU": 1}`` leaves a core idle (stage 2 runs one at a time; local-long's stage 1 has one trial). One
    worker per trial only; other backends are left as planned."""
    share = max(1, int(node_cpus // max(concurrent, 1)))
    out = []
    for p in planned:
        r = p.resources
        if not r.use_gpu and r.num_workers == 1 and set(r.resources_per_worker) == {"CPU"} and share > 1:
            r = dataclasses.replace(r, resources_per_worker={"CPU": share},
                                    notes=[*r.notes, f"{share} CPUs ({concurrent} trial(s) at a time)"])
        out.append(dataclasses.replace(p, resources=r))
    return out


def concurrent_fit(planned: list[PlannedTrial], view: ClusterView) -> int:
    """How many of the largest trial fit the cluster at once (at least 1)."""
    return min((view.fit(p.resources.per_worker(), p.resources.num_workers) for p in planned), default=1)


def _trial_resources(config: dict[str, Any]):
    """What a Tune trial reserves (see ``_run_experiment``)."""
    import ray.tune

    trial = trial_from_config(config)
    if not trial.in_tune:
        return {"CPU": 0, "memory": 1}
    return ray.tune.PlacementGroupFactory([trial.resources.resources_per_worker])


def _run_experiment(cfg: SweepConfig, stage: int, trials: list[Trial], storage: Path, search: TuneSearch,
                    scheduler=None, max_concurrent: int = 1) -> list[TrialResult]:
    """Run (or resume) training stage ``stage``'s trials as one Tune experiment in ``storage/stage<N>``: the rows
    as ``search`` lays them out (a grid, or a searcher's draws); returns their results, or raises
    ``SweepInterrupted`` when some are unfinished (or not yet drawn)."""
    import ray.tune

    name = f"stage{stage}"
    if (storage / name).exists() and not cfg.resume:
        raise ConfigError(f"{storage / name} already holds a stage-{stage} experiment; pass --resume to "
                          f"continue it (finished trials are kept), or choose another --out")
    # A trial that drives a TorchTrainer reserves nothing itself: the trainer reserves the real resources in its own
    # placement group (idle drivers holding CPUs would starve their own Train workers); Ray needs a non-empty
    # request, so it asks for one byte of memory. A trial that trains in itself (the tune runner) reserves its
    # worker's resources, and Tune restarts it on failure and reuses its process for the next trial.
    in_tune = bool(trials) and all(t.in_tune for t in trials)
    trainable = ray.tune.with_resources(run_trial, _trial_resources)
    if cfg.resume and ray.tune.Tuner.can_restore(str(storage / name)):
        event("stage %d · resuming its %d trials from %s", stage, search.trials, storage / name)
        tuner = ray.tune.Tuner.restore(str(storage / name), trainable=trainable, resume_errored=True)
    else:
        event("stage %d · %d trials, up to %d at a time", stage, search.trials, max_concurrent)
        tuner = ray.tune.Tuner(
            trainable,
            param_space=search.param_space,
            tune_config=ray.tune.TuneConfig(metric=METRIC, mode=MODE, scheduler=scheduler,
                                            search_alg=search.search_alg, num_samples=search.num_samples,
                                            max_concurrent_trials=max_concurrent, reuse_actors=in_tune,
                                            trial_name_creator=_trial_name, trial_dirname_creator=_trial_name),
            run_config=ray.tune.RunConfig(name=name, storage_path=str(storage),
                                          failure_config=ray.tune.FailureConfig(
                                              max_failures=cfg.max_failures if in_tune else 0),
                                          callbacks=[*wandb_callbacks(cfg.wandb, f"{storage.name}-stage{stage}"),
                                                     TrialEvents(stage, search.trials)],
                                          verbose=None if is_verbose() else 0,
                                          checkpoint_config=ray.tune.CheckpointConfig(
                                              num_to_keep=1, checkpoint_score_attribute=METRIC,
                                              checkpoint_score_order=MODE)))
        write_search_record(storage / name, search)
    grid = tuner.fit()
    left = remove_workdirs([r.metrics["trial_id"] for r in grid if r.metrics and r.metrics.get("trial_id")])
    if left:
        log.info("removed %d scratch folders of stopped trials", left)
    results = read_trials(storage / name, stage)
    unfinished = [t.config_id for t in results if not t.done]
    if unfinished or len(results) < search.trials:
        also = f"; {search.trials - len(results)} not yet drawn" if len(results) < search.trials else ""
        raise SweepInterrupted(f"stage {stage} was interrupted with {len(unfinished)} of {len(results)} trials "
                               f"unfinished{also} ({', '.join(unfinished) or 'none running'}; state saved in "
                               f"{storage / name}); rerun the same command with --resume")
    return results


def stage1_on_storage(storage: Path) -> list[TrialResult]:
    """``--stage 2`` of a search: the stage-1 trials an earlier run left in ``storage``."""
    if not (storage / "stage1").is_dir():
        raise ConfigError(f"stage 2 continues the best stage-1 trials, and {storage / 'stage1'} holds none; run "
                          f"--stage 1 (or all) with this --out first")
    return read_trials(storage / "stage1", 1)


def storage_points(stage1: list[TrialResult]) -> list[dict[str, Any]]:
    """The points a searched stage 1 evaluated first (its ``search.json``)."""
    if not stage1:
        return []
    record = Path(stage1[0].path).parent / SEARCH_FILE
    return json.loads(record.read_text()).get("evaluated_first", []) if record.is_file() else []


def is_point(trial: TrialResult, points: list[dict[str, Any]]) -> bool:
    """Whether a stage-1 trial ran one of the points evaluated first (its row and drawn values)."""
    row = trial.spec["config_id"]  # the row's id: the trial's without its draw's digest
    return any(p["params"] == trial.params and p.get("row", row) == row for p in points)


def write_search_record(experiment: Path, search: TuneSearch) -> None:
    """``stage<N>/search.json``: the algorithm, its space and the trial count (the reports read it)."""
    experiment.mkdir(parents=True, exist_ok=True)
    atomic_write_text(experiment / SEARCH_FILE, json.dumps(search.record(), indent=2, default=str))


def _trial_name(trial) -> str:
    """A Tune trial's name and folder: its config id (a searched one's ends in its parameters' digest)."""
    return trial_from_config(trial.config).config_id


def measure_lengths(trials: list[PlannedTrial], data: dict[str, DataSpec]) -> list[dict[str, Any]]:
    """Every variant's token-length distribution under each distinct formatter its trials build (tokenizer,
    chat / raw, image tokens, ``max_length``): one row per (dataset, formatter), naming its trials."""
    groups: dict[tuple[str, str], dict[str, Any]] = {}
    for p in trials:
        g = groups.setdefault((p.spec.dataset, formatter_key(p.model)), {"model": p.model, "trials": []})
        g["trials"].append(p.spec.config_id)
    formatters: dict[str, Any] = {}
    records: dict[str, list[dict]] = {}
    rows = []
    for (dataset, key), g in groups.items():
        if dataset not in records:
            records[dataset] = [r for f in (data[dataset].train, data[dataset].val) if f for r in read_records(f)]
        if key not in formatters:
            formatters[key] = formatter_for(g["model"])
        fmt = formatters[key]
        stats = measure(records[dataset], fmt)
        rows.append({"dataset": dataset, "format": f"{fmt.cfg.mode}, {fmt.num_image_tokens} image tokens",
                     "trials": g["trials"], **dataclasses.asdict(stats)})
    return rows


def variant_data(cfg: SweepConfig, trials: list[PlannedTrial]) -> dict[str, DataSpec]:
    """Each dataset variant the trials read: its train / val files (checked to exist) and the image root."""
    return {d: _variant_paths(cfg, d) for d in dict.fromkeys(p.spec.dataset for p in trials)}


def dry_run(sweep: SweepPlan, cfg: SweepConfig) -> dict[str, Any]:
    """``--dry-run``: the trials, their profiles and Ray requests, and the token lengths when the data is there."""
    for s, planned in sweep.stages.items():
        print(f"stage {s}: {len(planned)} trials\n{format_plan(planned)}\n")
    try:
        lengths = measure_lengths(sweep.every, variant_data(cfg, sweep.every))
        print(f"token lengths (LLM tokens per sample, before any training):\n{lengths_table(lengths)}\n")
    except (ConfigError, OSError) as e:  # no data yet, or a tokenizer this machine cannot load
        lengths = None
        print(f"token lengths: not measured ({e})\n")
    evaluation = None
    if (ecfg := cfg.eval_config()) is not None:
        res = eval_resources(cfg.backend or preset(cfg.preset).backend)
        evaluation = {"benchmarks": ecfg.benchmarks, "stages": ecfg.stages, "shards": ecfg.shards,
                      "limit": ecfg.limit, "resources_per_task": res.resources_per_worker, "notes": res.notes}
        print(f"evaluation: {', '.join(ecfg.benchmarks)} on the best checkpoint of every stage {ecfg.stages} trial, "
              f"{ecfg.shards} Ray task(s) per checkpoint × benchmark, each asking {res.resources_per_worker}\n")
    return {"dry_run": True, "trials": {s: [p.spec.config_id for p in planned] for s, planned in sweep.stages.items()},
            "token_lengths": lengths, "evaluation": evaluation}


def preflight(cfg: SweepConfig, sweep: SweepPlan) -> tuple[Path, ClusterView]:
    """Before anything runs: the output and scratch folders have room, Ray is up, and the cluster can ever hold
    every trial and evaluation task (Ray would wait for ever otherwise): on an autoscaling cluster, some node type
    can hold it (the autoscaler launches it); on a fixed one, the nodes up now. Returns the experiment folder and the
    cluster's view."""
    storage = Path(cfg.out).resolve()
    check_space(storage, cfg.preset, cfg.min_free_gb, "sweep --out")
    view = ClusterView(init_ray(), discover(cfg.cluster_config, joined_existing=bool(os.environ.get("RAY_ADDRESS"))))
    backend = cfg.backend or preset(cfg.preset).backend
    if view.shape is not None:
        event("cluster: autoscaling, node types from %s: %s", view.shape.source, view.shape.describe())
    for p in sweep.every:
        view.check(p.resources.per_worker(), p.resources.num_workers, p.spec.config_id, p.spec.profile, backend)
    if cfg.eval_config() is not None:
        res = eval_resources(backend)
        view.check(res.per_worker(), 1, "an evaluation task", EVAL_PROFILE, backend)
    storage.mkdir(parents=True, exist_ok=True)
    return storage, view


def record_token_lengths(sweep: SweepPlan, data: dict[str, DataSpec], storage: Path) -> list[dict[str, Any]]:
    """Measure every variant's token lengths under the trials' formatters before anything trains, write them to
    ``token_lengths.json`` and warn about samples ``format.max_length`` cuts or drops."""
    lengths = measure_lengths(sweep.every, data)
    atomic_write_text(storage / LENGTHS_FILE, json.dumps({"rows": lengths}, indent=2))
    log.info("token lengths before the trials (see %s):\n%s", storage / LENGTHS_FILE, lengths_table(lengths))
    for row in lengths:
        if row["over"]:
            log.warning("%s (%s): %d of %d samples are longer than format.max_length=%d: %d cut to whole turns, "
                        "%d dropped", row["dataset"], row["format"], row["over"], row["rows"], row["max_length"],
                        row["cut"], row["dropped"])
    return lengths


def run_stage1(cfg: SweepConfig, planned: list[PlannedTrial], storage: Path, view: ClusterView,
               data: dict[str, DataSpec], caches: dict[tuple[str, str], str],
               space: SearchSpace | None = None) -> list[TrialResult]:
    """The projector-only trials (the grid's rows, or a search's draws from them), as many at once as the cluster
    fits, grown to its limits when it autoscales (or ``--max-concurrent``); under ASHA when ``--scheduler`` says."""
    fit = concurrent_fit(planned, view)
    running = min(cfg.max_concurrent or fit, len(planned) * (cfg.num_samples if space else 1))
    asha, scheduler = stage_asha(cfg, 1, storage, planned, space)
    trials = [make_trial(cfg, p, storage, data, caches, asha=asha)
              for p in spread_cpus(planned, largest_node("CPU"), running)]
    search = stage_search(cfg, trials, planned, space)
    return _run_experiment(cfg, 1, trials, storage, search, scheduler, min(running, search.trials))


def stage_search(cfg: SweepConfig, trials: list[Trial], planned: list[PlannedTrial],
                 space: SearchSpace | None) -> TuneSearch:
    """The stage's Tune layout: its rows as a grid, or searched over ``space`` with ``--search``."""
    rows = [Row(t.config_id, t.to_dict(), p.model, p.train) for t, p in zip(trials, planned)]
    return tune_search(rows, space or SearchSpace(), cfg.search_settings() if space else SearchSettings())


def stage_asha(cfg: SweepConfig, stage: int, storage: Path, planned: list[PlannedTrial],
               space: SearchSpace | None) -> tuple[AshaLink | None, RecordingASHA | None]:
    """ASHA for the stage (``--scheduler``), recording its rung decisions in ``stage<N>/asha_decisions.jsonl``
    (trials read them at each rung, and when they resume from a checkpoint of a rung ASHA may not have decided),
    with the link its trials read them through; (None, None) without early stopping."""
    if not cfg.asha_in(stage):
        return None, None
    searched = space.fields.get("train.epochs") if space else None
    max_t = max([p.train.epochs for p in planned] + [int(v) for v in (searched.values if searched else ())])
    milestones = rung_milestones(cfg.asha.grace_period, cfg.asha.reduction_factor, max_t)
    if not milestones:  # every trial ends before its first rung: nothing to decide
        log.info("stage %d: ASHA has no rung below %d epochs (grace period %d); every trial runs to its end",
                 stage, max_t, cfg.asha.grace_period)
        return None, None
    decisions = str(storage / f"stage{stage}" / DECISIONS_FILE)
    link = AshaLink(decisions, cfg.asha.decision_wait_s, milestones)
    return link, RecordingASHA(decisions, time_attr="epoch", max_t=max_t, grace_period=cfg.asha.grace_period,
                               reduction_factor=cfg.asha.reduction_factor, identify=trial_identity)


def best_continuations(cfg: SweepConfig, stage1: list[TrialResult]) -> list[PlannedTrial]:
    """Stage 2 of a searched stage 1 (or ``--stage2-parents``): the best K stage-1 trials by their best
    ``val_loss`` (finite, with a checkpoint on storage), each continued as the grid continues a row: the same
    dataset / dense / chat / scheduler, stage 2's epochs, batch and rate, and the parent's searched model fields
    (its projector is what stage 2 starts from)."""
    top = cfg.stage2_parents or 2
    usable = sorted((t for t in stage1 if t.best_checkpoint()[0] and t.best_val_loss is not None
                     and math.isfinite(t.best_val_loss)), key=lambda t: t.best_val_loss)
    ranked = usable[:top]
    if cfg.stage2_with_points:
        points = storage_points(stage1)
        ranked += [t for t in usable[top:] if is_point(t, points)]
        if len(ranked) > top:
            event("stage 2 also continues the %d point(s) stage 1 evaluated first", len(ranked) - top)
    if not ranked:
        raise ConfigError("stage 2: no stage-1 trial finished with a finite val_loss and a checkpoint to continue "
                          "(see the stage-1 report)")
    out = []
    for t in ranked:
        spec = dataclasses.replace(continuation(TrialSpec(**{k: v for k, v in t.spec.items() if k != "config_id"})),
                                   parent=t.config_id)
        (p,) = plan_specs(cfg, [spec])
        inherited = {n: v for n, v in (t.config.get("params") or {}).items() if n.startswith("model.")}
        model, train = apply(p.model, p.train, inherited)
        out.append(dataclasses.replace(p, model=model, train=train))
    event("stage 2 continues %d stage-1 trial(s), best val_loss first: %s", len(out),
          ", ".join(f"{t.config_id} ({t.best_val_loss:.4f})" for t in ranked))
    return out


def parent_checkpoint(p: PlannedTrial, lineage: dict[str, Any], lineage_file: Path) -> str:
    """The best checkpoint of the stage-1 config a stage-2 trial continues, checked before any trial starts (a
    corrupt parent would fail every retry of its continuations)."""
    parent = lineage.get(p.spec.parent)
    if not parent or not parent.get("checkpoint") or not Path(parent["checkpoint"]).is_dir():
        raise ConfigError(f"stage 2 trial {p.spec.config_id} continues {p.spec.parent}, which has no "
                          f"finished stage-1 checkpoint in {lineage_file}; run --stage 1 (or all) first")
    try:
        read_meta(parent["checkpoint"])
        check_projector_selection(parent["checkpoint"])
    except CheckpointError as e:
        raise ConfigError(f"stage 2 trial {p.spec.config_id} continues {p.spec.parent}, whose stage-1 "
                          f"checkpoint is unusable ({e}); run stage 1 again (a new --out, or --stage all)") from e
    return parent["checkpoint"]


def run_stage2(cfg: SweepConfig, planned: list[PlannedTrial], storage: Path, data: dict[str, DataSpec],
               caches: dict[tuple[str, str], str], lineage: dict[str, Any],
               space: SearchSpace | None = None) -> list[TrialResult]:
    """The continuations, each from its parent's best checkpoint (searched over ``--stage2-space`` if given),
    under ASHA unless ``--scheduler none``."""
    asha, scheduler = stage_asha(cfg, 2, storage, planned, space)
    trials = [make_trial(cfg, p, storage, data, caches, parent_checkpoint(p, lineage, storage / LINEAGE_FILE), asha)
              for p in spread_cpus(planned, largest_node("CPU"), cfg.asha.max_concurrent)]
    return _run_experiment(cfg, 2, trials, storage, stage_search(cfg, trials, planned, space), scheduler,
                           cfg.asha.max_concurrent)


def evaluate_trials(cfg: SweepConfig, ecfg: SweepEvalConfig, results: dict[int, list[TrialResult]],
                    storage: Path) -> dict[str, Any]:
    """Every evaluated stage's trials' best checkpoints on the benchmarks (``sweeps.evaluation``), into
    ``OUT/eval/``; trials without a checkpoint are named and skipped."""
    if 1 in ecfg.stages and 1 not in results:  # stage 2 only this run: the stage-1 trials on storage
        results = {**results, **read_sweep(storage, {s: r for s, r in results.items()})}
    items, skipped = [], []
    for stage in ecfg.stages:
        for t in results.get(stage, []):
            ckpt, _ = t.best_checkpoint()
            (items.append((t.config_id, ckpt)) if ckpt else skipped.append(t.config_id))
    if skipped:
        log.warning("evaluation: no checkpoint on storage for %s; not evaluated", ", ".join(skipped))
    event("eval: %d checkpoints × %s", len(items), ", ".join(ecfg.benchmarks))
    evals = evaluate_checkpoints(items, ecfg, storage / "eval", cfg.backend or preset(cfg.preset).backend)
    run = log_evaluation(evals, storage, cfg.wandb)
    return {"evaluated": [c for c, _ in items], "skipped": skipped, "results": str(storage / EVAL_FILE),
            "wandb": str(run) if run else None}


def run_sweep(cfg: SweepConfig) -> dict[str, Any]:
    """Plan, pre-flight and run the requested stages, step by step; returns the lineage and per-trial summaries."""
    sweep = plan_sweep(cfg)                                         # every trial's configs, built once
    if cfg.dry_run:
        return dry_run(sweep, cfg)
    storage, view = preflight(cfg, sweep)                           # space, Ray, the cluster can hold every trial
    data = variant_data(cfg, sweep.every)
    record_token_lengths(sweep, data, storage)                      # nothing cut or dropped silently
    caches = build_feature_caches(cfg, sweep.every, storage, data, encoder_actors(sweep.every, view)) \
        if cfg.feature_cache else {}
    lineage_file = storage / LINEAGE_FILE
    lineage = json.loads(lineage_file.read_text()) if lineage_file.is_file() else {}
    results: dict[int, list[TrialResult]] = {}
    summary: dict[str, Any] = {"stages": {}}
    if 1 in sweep.stages:                                           # stage 1, then its best checkpoints
        results[1] = run_stage1(cfg, sweep.stages[1], storage, view, data, caches, sweep.spaces.get(1))
        summary["stages"][1] = [t.summary() for t in results[1]]
        lineage = record_lineage(summary["stages"][1], lineage)
        atomic_write_text(lineage_file, json.dumps(lineage, indent=2))
    if 2 in sweep.stages:                                           # stage 2 from them, under ASHA
        planned2 = sweep.stages[2]
        if continues_best(cfg):                                     # the best stage-1 trials, now known
            planned2 = best_continuations(cfg, results[1] if 1 in results else stage1_on_storage(storage))
        results[2] = run_stage2(cfg, planned2, storage, data, caches, lineage, sweep.spaces.get(2))
        summary["stages"][2] = [t.summary() for t in results[2]]
    atomic_write_text(storage / "trials.json", json.dumps(summary, indent=2, default=str))
    if (ecfg := cfg.eval_config()) is not None:                     # the benchmarks, as Ray tasks
        summary["evaluation"] = evaluate_trials(cfg, ecfg, results, storage)
    summary["report"] = write_report(storage, results, cfg.select_by)  # the stages read are not read again
    return {"lineage": lineage, **summary}
