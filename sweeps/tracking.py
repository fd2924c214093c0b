"""Weights & Biases for sweeps: one run per trial, logged from Tune by Ray's ``WandbLoggerCallback``.

Projects follow the study: ``multimodal-llama``, and ``multimodal-llama-dense-connector`` for dense-connector
runs; runs are grouped per sweep and stage (``<experiment>-stage1``). The mode is ``offline`` unless the user
has a W&B key (``WANDB_API_KEY`` or ``wandb login``), in which case ``auto`` goes online; ``disabled`` turns
it off. Offline runs land in each trial's folder (``<out>/stage1/<trial>/wandb/offline-run-*``); upload them
later with ``wandb sync``.

    vlm-sweep sweep ... --wandb offline          # default without a key
    wandb sync runs/sweep/stage1/*/wandb/offline-run-*
"""

from __future__ import annotations

import json
import netrc
import os
import shutil
from pathlib import Path
from typing import Any

import ray
from ray.air.integrations.wandb import WandbLoggerCallback, _clean_log, _QueueItem
from ray.air.util.node import _force_on_current_node  # what Ray's own callback pins its actors with

from vlm_core.base.hashing import json_digest
from vlm_core.base.outputs import atomic_write_text
from vlm_core.base.registry import Registry

from .trial_config import trial_from_config

PROJECT = "multimodal-llama"
DENSE_PROJECT = "multimodal-llama-dense-connector"
MODES: Registry[str] = Registry("wandb", "W&B mode", {
    "auto": "online with a key, else offline", "offline": "runs written locally, synced later with `wandb sync`",
    "online": "runs streamed to W&B (needs a key)", "disabled": "no W&B"})


def project_for(spec: dict[str, Any]) -> str:
    """The study's W&B project of one trial spec (a ``TrialSpec.to_dict()``)."""
    return DENSE_PROJECT if spec.get("dense") else PROJECT


def has_wandb_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def resolve_mode(mode: str) -> str:
    """``auto`` → ``online`` with a key, else ``offline``; an explicit ``WANDB_MODE`` wins over ``auto``."""
    if mode != "auto":
        return mode
    return os.environ.get("WANDB_MODE") or ("online" if has_wandb_key() else "offline")


class StudyWandbCallback(WandbLoggerCallback):
    """``WandbLoggerCallback`` that picks the study's project per trial and logs the trial's spec as config."""

    def __init__(self, group: str, mode: str, upload_timeout: int = 120) -> None:
        # a searched trial's config carries every row of its stage ("rows"): its run logs which row and its draw
        super().__init__(project=PROJECT, group=group, mode=mode, job_type="train", upload_timeout=upload_timeout,
                         excludes=["rows"])

    def setup(self, *args, **kwargs) -> None:
        if self.kwargs.get("mode") != "online":  # Ray checks for a key unless WANDB_MODE is set in the env
            self.api_key_file = None
            return
        super().setup(*args, **kwargs)

    def _start_logging_actor(self, trial, exclude_results, **wandb_init_kwargs) -> None:
        # Ray's version hands WANDB_API_KEY to the logging actor in its runtime_env, which Ray's runtime-env agent
        # writes in plain text to /tmp/ray/session_*/logs/runtime_env_agent.log (and the dashboard shows). The
        # actor runs on this node, whose workers already see the key: from this process's environment (a local
        # cluster's workers inherit it; a `ray job submit --runtime-env` key reaches every actor of the job) or
        # from ~/.netrc (`wandb login`). So build the actor class without it.
        if not self._remote_logger_class:
            self._remote_logger_class = ray.remote(num_cpus=0, **_force_on_current_node(), max_restarts=-1,
                                                   max_task_retries=-1)(self._logger_actor_cls)
        super()._start_logging_actor(trial, exclude_results, **wandb_init_kwargs)

    def log_trial_start(self, trial) -> None:
        self.project = project_for(trial_from_config(trial.config).spec.to_dict())
        super().log_trial_start(trial)

    def log_trial_result(self, iteration: int, trial, result: dict) -> None:
        # Ray's version blocks Tune's event loop on a round trip to the trial's queue actor for every result; on a
        # busy 2-core machine that took up to 2.8 s per result (py-spy: ~all of process_trial_result, 121 s over
        # the local study). Actor calls from one caller run in order, so sending without waiting keeps the order.
        if trial not in self._trial_logging_actors:
            self.log_trial_start(trial)
        item = (_QueueItem.RESULT, _clean_log(result, video_kwargs=self.video_kwargs, image_kwargs=self.image_kwargs))
        self._trial_queues[trial].actor.put_nowait.remote(item)

    def on_experiment_end(self, trials, **info) -> None:
        # Trials cut short by Ctrl-C never get log_trial_end: without an END their logging actors never finish
        # and Ray waits the whole upload timeout. End their runs so the interrupted sweep exits promptly.
        for trial in list(self._trial_queues):
            self._signal_logging_actor_stop(trial)
        super().on_experiment_end(trials, **info)  # waits for every run's wandb.finish
        # Runs are written in the driver's staging folder, which Tune syncs to the trial's storage folder when the
        # trial ends: a run that finishes after that sync (a trial stopped by ASHA as the stage ends) would stay
        # truncated there. Copy the finished runs once more.
        for trial in trials:
            src, dst = Path(trial.local_path) / "wandb", Path(trial.path) / "wandb"
            if src.is_dir() and "://" not in str(trial.path) and src.resolve() != dst.resolve():
                shutil.copytree(src, dst, dirs_exist_ok=True)


def wandb_callbacks(mode: str, group: str) -> list[Any]:
    """The Tune callbacks for ``mode`` (none when disabled)."""
    resolved = resolve_mode(mode)
    return [] if resolved == "disabled" else [StudyWandbCallback(group=group, mode=resolved)]


def log_evaluation(evals: dict[str, dict[str, Any]], experiment: Path, mode: str) -> Path | None:
    """The sweep's benchmark results as one W&B run (job type ``eval``, group ``<experiment>-eval``, the study's
    project): summary keys ``CONFIG_ID/BENCH.METRIC`` and a ``benchmarks`` table (one row per config). Offline runs
    land in ``<experiment>/eval/wandb``. Results already logged (a rerun that reused every answer) are not logged
    again: ``eval/wandb-logged.json`` keeps their digest and run. Returns the run's folder, or None when W&B is
    disabled or nothing was evaluated."""
    resolved = resolve_mode(mode)
    if resolved == "disabled" or not evals:
        return None
    import wandb

    from .reporting.benchmark_table import columns

    folder = experiment / "eval"
    folder.mkdir(parents=True, exist_ok=True)
    logged, digest = folder / "wandb-logged.json", json_digest([evals, resolved])
    if logged.is_file() and (last := json.loads(logged.read_text()))["digest"] == digest:
        return Path(last["run"])
    frame = columns(evals)
    run = wandb.init(project=PROJECT, group=f"{experiment.name}-eval", job_type="eval", name=f"{experiment.name}-eval",
                     mode=resolved, dir=str(folder), config={"configs": sorted(evals)})
    try:
        run.summary.update({f"{row['config_id']}/{k}": v for row in frame.to_dict("records") for k, v in row.items()
                            if k != "config_id" and isinstance(v, (int, float))})
        run.log({"benchmarks": wandb.Table(dataframe=frame)})
        folder_of_run = Path(run.dir).parent
        atomic_write_text(logged, json.dumps({"digest": digest, "run": str(folder_of_run)}))
        return folder_of_run
    finally:
        run.finish()
