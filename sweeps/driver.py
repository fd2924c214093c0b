"""``vlm-sweep sweep``: the ablation study on Ray Tune, one Ray Train run per trial.

Stage 1 runs the grid's projector-only trials; the lineage manifest then records, for every stage-1 config,
its best checkpoint (by validation loss); stage 2 starts each continuation from the checkpoint of the config
it continues, under ASHA (``time_attr="epoch"``). Results live under ``--out`` (Tune's ``storage_path``):
``stage1/``, ``stage2/`` (Tune experiments), ``lineage.json``, ``trials.json`` and the report (``report.md``,
``trials.csv``, ``loss_curves.png``, ``by_axis.png``; see sweeps/report.py). Each trial is one W&B run
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
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from data_pipeline.features import build_feature_cache
from vlm_core.checkpoint import CheckpointError, check_projector_selection, read_meta
from vlm_core.config import SHARDINGS, ConfigError, check_field
from vlm_core.data import read_records
from vlm_core.errors import VlmSweepError
from vlm_core.faults import from_env as faults_from_env
from vlm_core.hub import ASSETS_ENV
from vlm_core.lengths import formatter_for, formatter_key, lengths_table, measure
from vlm_core.logs import event, is_verbose
from vlm_core.outputs import GiB, atomic_write_text, check_output_dir
from vlm_core.presets import Scale, available_presets, preset
from vlm_core.ray_env import init_ray
from vlm_core.runner import DataSpec

from .matrix import TrialSpec, get_grid
from .profiles import BACKENDS, PROFILES, TrialResources, check_fits, trial_resources
from .report import LENGTHS_FILE, write_report
from .results import TrialResult, read_trials, record_lineage
from .scheduling import DECISIONS_FILE, RecordingASHA, rung_milestones
from .statuses import METRIC, MODE
from .tracking import MODES as WANDB_MODES
from .tracking import wandb_callbacks
from .trial import RUNNERS, remove_workdirs, resources_dict, run_trial, runs_in_tune, trial_configs
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
    the preset's, 4; see vlm_core.projectors)."""
    asha: AshaConfig = field(default_factory=AshaConfig)

    def __post_init__(self) -> None:
        self.assets = self.assets or os.environ.get(ASSETS_ENV) or None
        if self.assets:  # absolute: trial configs name folders that workers in other directories must find
            self.assets = str(Path(self.assets).expanduser().resolve())
        check_field(self.assets is None or Path(self.assets).is_dir(), "assets",
                    f"{self.assets} is not a folder; create it with `vlm-sweep assets download --preset "
                    f"{self.preset} --to {self.assets}`")

        check_field(self.preset in available_presets(), "preset",
                    f"unknown preset {self.preset!r}; choose one of {available_presets()}")
        check_field(self.stage in ("1", "2", "all"), "stage", f"{self.stage!r} is not 1, 2 or all")
        if self.backend is not None:
            BACKENDS.check(self.backend)
        check_field(self.max_failures >= 0, "max_failures", "must be >= 0")
        check_field(self.max_concurrent is None or self.max_concurrent >= 1, "max_concurrent", "must be >= 1")
        check_field(self.min_free_gb is None or self.min_free_gb >= 0, "min_free_gb", "must be >= 0")
        check_field(self.limit is None or self.limit >= 1, "limit", "must be >= 1")
        check_field(self.dense_groups is None or self.dense_groups >= 1, "dense_groups", "must be >= 1")
        check_field(self.runner in RUNNERS, "runner", f"{self.runner!r} is not one of {', '.join(RUNNERS)}")
        check_field(self.stage2_sharding in SHARDINGS, "stage2_sharding",
                    f"{self.stage2_sharding!r} is not one of {', '.join(SHARDINGS)}")
        for name in ("num_workers", "stage2_num_workers"):
            check_field(getattr(self, name) is None or getattr(self, name) >= 1, name, "must be >= 1")
        check_field(self.max_steps_per_epoch is None or self.max_steps_per_epoch >= 1, "max_steps_per_epoch",
                    "must be >= 1")
        check_field(not self.paper_ids or self.grid in ("paper19", "lora"), "paper_ids",
                    "only applies to --grid paper19 or lora")
        check_field(self.wandb in WANDB_MODES, "wandb", f"{self.wandb!r} is not one of {', '.join(WANDB_MODES)}")


class SweepInterrupted(VlmSweepError, RuntimeError):
    """The sweep stopped before every trial of a stage finished (Ctrl-C, SIGUSR1); its state is saved."""


@dataclass
class PlannedTrial:
    spec: TrialSpec
    resources: TrialResources


def plan(cfg: SweepConfig, stage: int) -> list[PlannedTrial]:
    backend = cfg.backend or preset(cfg.preset).backend
    trials = get_grid(cfg.grid, stage)
    if cfg.paper_ids:
        trials = [t for t in trials if t.paper_id in cfg.paper_ids]
    if cfg.limit:
        trials = trials[: cfg.limit]
    workers = (cfg.stage2_num_workers or cfg.num_workers) if stage == 2 else cfg.num_workers
    return [PlannedTrial(t, trial_resources(t.profile, backend, workers or PROFILES[t.profile].num_workers))
            for t in trials]


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


def _variant_paths(cfg: SweepConfig, dataset: str) -> dict[str, Any]:
    vdir = Path(cfg.data) / dataset
    train, val = vdir / "train-00000.parquet", vdir / "val-00000.parquet"
    if not train.is_file():
        raise ConfigError(f"data: {train} is missing; build the variant first (vlm-sweep data build --out "
                          f"{cfg.data} with a variant named {dataset})")
    has_val = val.is_file() and _parquet_rows(val) > 0
    if val.is_file() and not has_val:
        log.warning("%s is empty; each trial holds out 10%% of %s (by id hash) for validation instead", val, train)
    return DataSpec(train=str(train.resolve()), images=str(Path(cfg.images).resolve()),
                    val=str(val.resolve()) if has_val else None).__dict__


def _parquet_rows(path: Path) -> int:
    import pyarrow.parquet as pq

    return pq.ParquetFile(path).metadata.num_rows


def _feature_caches(cfg: SweepConfig, trials: list[PlannedTrial], storage: Path) -> dict[tuple[str, str], str]:
    """One feature cache per (dataset, projector selection) the trials need, built on Ray Data or reused."""
    import pyarrow.parquet as pq

    caches: dict[tuple[str, str], str] = {}
    for p in trials:
        model, _ = trial_configs(p.spec, cfg.preset, Scale(), assets=cfg.assets, dense_groups=cfg.dense_groups)
        k = (p.spec.dataset, model.projector.name)
        if k in caches:
            continue
        paths = _variant_paths(cfg, p.spec.dataset)
        images = [img for f in (paths["train"], paths["val"]) if f
                  for img in pq.read_table(f, columns=["image"]).column("image").to_pylist()]
        root = Path(cfg.data) / p.spec.dataset / "features"
        try:
            root.mkdir(exist_ok=True)
        except OSError:  # a read-only dataset folder: keep the cache with the experiment
            root = storage / "features" / p.spec.dataset
        caches[k] = str(build_feature_cache(model, images, paths["images"], root))
    return caches


def _param(cfg: SweepConfig, p: PlannedTrial, storage: Path, init_checkpoint: str | None,
           data: dict[str, dict[str, Any]], caches: dict[tuple[str, str], str] | None = None) -> dict[str, Any]:
    """One trial's Tune parameters; ``data`` caches each dataset's ``_variant_paths`` (read once per sweep)."""
    if p.spec.dataset not in data:
        data[p.spec.dataset] = _variant_paths(cfg, p.spec.dataset)
    scale = preset(cfg.preset).scale
    if cfg.max_steps_per_epoch:
        scale = dataclasses.replace(scale, max_steps_per_epoch=cfg.max_steps_per_epoch)
    model, train = trial_configs(p.spec, cfg.preset, scale, init_checkpoint, p.resources.gradient_checkpointing,
                                 cfg.assets, cfg.dense_groups, cfg.stage2_sharding)
    features = (caches or {}).get((p.spec.dataset, model.projector.name))
    worker = {"model": model.to_dict(), "train": train.to_dict(),
              "data": {**data[p.spec.dataset], "features": features}}
    faults = faults_from_env()  # tests only (vlm_core.faults); absent from a normal trial's config
    if faults:
        worker["faults"] = faults
    return {"config_id": p.spec.config_id, "spec": p.spec.to_dict(), "resources": resources_dict(p.resources),
            "storage_path": str(storage / "train"), "max_failures": cfg.max_failures, "worker": worker,
            "in_tune": runs_in_tune(p.resources, cfg.runner)}


def measure_lengths(cfg: SweepConfig, trials: list[PlannedTrial]) -> list[dict[str, Any]]:
    """Every variant's token-length distribution under each distinct formatter its trials build (tokenizer,
    chat / raw, image tokens, ``max_length``): one row per (dataset, formatter), naming its trials."""
    groups: dict[tuple[str, str], dict[str, Any]] = {}
    for p in trials:
        model, _ = trial_configs(p.spec, cfg.preset, Scale(), assets=cfg.assets, dense_groups=cfg.dense_groups)
        g = groups.setdefault((p.spec.dataset, formatter_key(model)), {"model": model, "trials": []})
        g["trials"].append(p.spec.config_id)
    formatters: dict[str, Any] = {}
    records: dict[str, list[dict]] = {}
    rows = []
    for (dataset, key), g in groups.items():
        if dataset not in records:
            paths = _variant_paths(cfg, dataset)
            records[dataset] = [r for f in (paths["train"], paths["val"]) if f for r in read_records(f)]
        if key not in formatters:
            formatters[key] = formatter_for(g["model"])
        fmt = formatters[key]
        stats = measure(records[dataset], fmt)
        rows.append({"dataset": dataset, "format": f"{fmt.cfg.mode}, {fmt.num_image_tokens} image tokens",
                     "trials": g["trials"], **dataclasses.asdict(stats)})
    return rows


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
        out.append(PlannedTrial(p.spec, r))
    return out


def _largest_node_cpus() -> float:
    import ray

    return max((n["Resources"].get("CPU", 0.0) for n in ray.nodes() if n.get("Alive")), default=0.0)


def concurrent_fit(planned: list[PlannedTrial], cluster: dict[str, Any]) -> int:
    """How many of the largest trial fit the cluster at once (at least 1)."""
    have = {k.lower(): float(v) for k, v in cluster.items()}
    counts = [int(have.get(k.lower(), 0.0) // v) for p in planned for k, v in p.resources.total().items() if v > 0]
    return max(1, min(counts)) if counts else 1


def _trial_resources(config: dict[str, Any]):
    """What a Tune trial reserves (see ``_run_experiment``)."""
    import ray.tune

    trial = config["trial"]
    if not trial.get("in_tune"):
        return {"CPU": 0, "memory": 1}
    return ray.tune.PlacementGroupFactory([trial["resources"]["resources_per_worker"]])


def _run_experiment(cfg: SweepConfig, stage: int, params: list[dict[str, Any]], storage: Path, scheduler=None,
                    fit_count: int = 1) -> list[TrialResult]:
    """Run (or resume) training stage ``stage``'s trials as one Tune experiment in ``storage/stage<N>``; returns
    their results, or raises ``SweepInterrupted`` when some are unfinished."""
    import ray.tune

    name = f"stage{stage}"
    if (storage / name).exists() and not cfg.resume:
        raise ConfigError(f"{storage / name} already holds a stage-{stage} experiment; pass --resume to "
                          f"continue it (finished trials are kept), or choose another --out")
    # A trial that drives a TorchTrainer reserves nothing itself: the trainer reserves the real resources in its own
    # placement group (idle drivers holding CPUs would starve their own Train workers); Ray needs a non-empty
    # request, so it asks for one byte of memory. A trial that trains in itself (the tune runner) reserves its
    # worker's resources, and Tune restarts it on failure and reuses its process for the next trial.
    in_tune = bool(params) and all(p["in_tune"] for p in params)
    trainable = ray.tune.with_resources(run_trial, _trial_resources)
    if cfg.resume and ray.tune.Tuner.can_restore(str(storage / name)):
        event("stage %d · resuming its %d trials from %s", stage, len(params), storage / name)
        tuner = ray.tune.Tuner.restore(str(storage / name), trainable=trainable, resume_errored=True)
    else:
        max_conc = cfg.asha.max_concurrent if stage == 2 else (cfg.max_concurrent or fit_count)
        event("stage %d · %d trials, up to %d at a time", stage, len(params), max_conc)
        tuner = ray.tune.Tuner(
            trainable,
            param_space={"trial": ray.tune.grid_search(params)},
            tune_config=ray.tune.TuneConfig(metric=METRIC, mode=MODE, scheduler=scheduler,
                                            max_concurrent_trials=max_conc, reuse_actors=in_tune,
                                            trial_name_creator=lambda t: t.config["trial"]["config_id"],
                                            trial_dirname_creator=lambda t: t.config["trial"]["config_id"]),
            run_config=ray.tune.RunConfig(name=name, storage_path=str(storage),
                                          failure_config=ray.tune.FailureConfig(
                                              max_failures=cfg.max_failures if in_tune else 0),
                                          callbacks=[*wandb_callbacks(cfg.wandb, f"{storage.name}-stage{stage}"),
                                                     TrialEvents(stage, len(params))],
                                          verbose=None if is_verbose() else 0,
                                          checkpoint_config=ray.tune.CheckpointConfig(
                                              num_to_keep=1, checkpoint_score_attribute=METRIC,
                                              checkpoint_score_order=MODE)))
    grid = tuner.fit()
    left = remove_workdirs([r.metrics["trial_id"] for r in grid if r.metrics and r.metrics.get("trial_id")])
    if left:
        log.info("removed %d scratch folders of stopped trials", left)
    results = read_trials(storage / name, stage)
    unfinished = [t.config_id for t in results if not t.done]
    if unfinished:
        raise SweepInterrupted(f"stage {stage} was interrupted with {len(unfinished)} of {len(results)} trials "
                               f"unfinished ({', '.join(unfinished)}; state saved in {storage / name}); rerun the "
                               f"same command with --resume")
    return results


def run_sweep(cfg: SweepConfig) -> dict[str, Any]:
    """Plan, pre-flight and run the requested stages; returns the lineage and per-trial summaries."""
    stages = [1, 2] if cfg.stage == "all" else [int(cfg.stage)]
    planned = {s: plan(cfg, s) for s in stages}
    every = [p for s in stages for p in planned[s]]
    if cfg.dry_run:
        for s in stages:
            print(f"stage {s}: {len(planned[s])} trials\n{format_plan(planned[s])}\n")
        try:
            lengths = measure_lengths(cfg, every)
            print(f"token lengths (LLM tokens per sample, before any training):\n{lengths_table(lengths)}\n")
        except (ConfigError, OSError) as e:  # no data yet, or a tokenizer this machine cannot load
            lengths = None
            print(f"token lengths: not measured ({e})\n")
        return {"dry_run": True, "trials": {s: [p.spec.config_id for p in planned[s]] for s in stages},
                "token_lengths": lengths}
    storage = Path(cfg.out).resolve()
    check_space(storage, cfg.preset, cfg.min_free_gb, "sweep --out")
    resources = init_ray()
    for s in stages:
        for p in planned[s]:
            check_fits(p.resources, resources, p.spec.config_id)

    lengths = measure_lengths(cfg, every)
    storage.mkdir(parents=True, exist_ok=True)
    atomic_write_text(storage / LENGTHS_FILE, json.dumps({"rows": lengths}, indent=2))
    log.info("token lengths before the trials (see %s):\n%s", storage / LENGTHS_FILE, lengths_table(lengths))
    for row in lengths:
        if row["over"]:
            log.warning("%s (%s): %d of %d samples are longer than format.max_length=%d: %d cut to whole turns, "
                        "%d dropped", row["dataset"], row["format"], row["over"], row["rows"], row["max_length"],
                        row["cut"], row["dropped"])
    summary: dict[str, Any] = {"stages": {}}
    data: dict[str, dict[str, Any]] = {}
    caches = _feature_caches(cfg, every, storage) if cfg.feature_cache else {}
    lineage_file = storage / "lineage.json"
    lineage = json.loads(lineage_file.read_text()) if lineage_file.is_file() else {}
    results: dict[int, list[TrialResult]] = {}
    if 1 in stages:
        fit = concurrent_fit(planned[1], resources)
        running = min(cfg.max_concurrent or fit, len(planned[1]))
        results[1] = _run_experiment(cfg, 1, [_param(cfg, p, storage, None, data, caches) for p in spread_cpus(
            planned[1], _largest_node_cpus(), running)], storage, fit_count=fit)
        summary["stages"][1] = [t.summary() for t in results[1]]
        lineage = record_lineage(summary["stages"][1], lineage)
        atomic_write_text(lineage_file, json.dumps(lineage, indent=2))
    if 2 in stages:
        max_t = max(p.spec.epochs for p in planned[2])
        decisions = str(storage / "stage2" / DECISIONS_FILE)
        # trials read it at each rung (they end there if stopped) and when they resume from a checkpoint (a rung
        # ASHA may not have decided yet)
        asha_param = {"decisions_file": decisions, "wait_s": cfg.asha.decision_wait_s,
                      "milestones": rung_milestones(cfg.asha.grace_period, cfg.asha.reduction_factor, max_t)}
        params = []
        for p in spread_cpus(planned[2], _largest_node_cpus(), cfg.asha.max_concurrent):
            parent = lineage.get(p.spec.parent)
            if not parent or not parent.get("checkpoint") or not Path(parent["checkpoint"]).is_dir():
                raise ConfigError(f"stage 2 trial {p.spec.config_id} continues {p.spec.parent}, which has no "
                                  f"finished stage-1 checkpoint in {lineage_file}; run --stage 1 (or all) first")
            try:  # before any trial starts: a corrupt parent would fail every retry of its continuations
                read_meta(parent["checkpoint"])
                check_projector_selection(parent["checkpoint"])
            except CheckpointError as e:
                raise ConfigError(f"stage 2 trial {p.spec.config_id} continues {p.spec.parent}, whose stage-1 "
                                  f"checkpoint is unusable ({e}); run stage 1 again (a new --out, or --stage all)"
                                  ) from e
            params.append({**_param(cfg, p, storage, parent["checkpoint"], data, caches), "asha": asha_param})
        asha = RecordingASHA(decisions, time_attr="epoch", max_t=max_t, grace_period=cfg.asha.grace_period,
                             reduction_factor=cfg.asha.reduction_factor)
        results[2] = _run_experiment(cfg, 2, params, storage, scheduler=asha)
        summary["stages"][2] = [t.summary() for t in results[2]]
    atomic_write_text(storage / "trials.json", json.dumps(summary, indent=2, default=str))

    summary["report"] = write_report(storage, results)  # the stages this run read are not read again
    return {"lineage": lineage, **summary}
