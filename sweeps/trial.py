"""One Tune trial = one run of ``vlm_core``'s training loop, on one of two runners.

``run_trial`` is the Tune *function* trainable. With the ``train`` runner (GPUs, several workers, and any trial
with ``--runner train``) it builds a Ray Train ``TorchTrainer`` (the Train V2 pattern) whose workers run
``train_worker``; ``TuneReportCallback`` forwards their reports to Tune (so ASHA can stop the trial), Train keeps
the checkpoints and restarts failed workers. With the ``tune`` runner (the CPU backend's one-worker trials, by
default) ``train_worker`` runs in the Tune trial itself: no Train controller and worker processes to start
(BENCHMARKS.md has each runner's cost per trial), Tune reuses the trial processes (``reuse_actors``), restarts a
failed trial (``FailureConfig``), and :class:`TuneSession` keeps the checkpoints where and as Train keeps them.

Either way ``train_worker`` rebuilds its typed run (``sweeps.trial_config.TrialRun``) from the dict on its first
line, resumes from the newest checkpoint of the run when restarted after a failure (in stage 2 first saying again a
rung's result that ASHA never saw, see sweeps/scheduling.py), and reports ``epoch``, ``train_loss``, ``val_loss``,
``lr`` and tokens/s with a checkpoint every epoch.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

from vlm_core.base.devices import cap_cuda_memory
from vlm_core.base.errors import NonFiniteLoss
from vlm_core.base.logs import configure_logging
from vlm_core.base.outputs import atomic_dir
from vlm_core.base.registry import Registry
from vlm_core.training.checkpoint import keep_newest_and_best, newest_usable, read_meta
from vlm_core.training.faults import from_config
from vlm_core.training.one_stage import run_stage

from .profiles import TrialResources
from .scheduling import resume_decision, wait_for_decision
from .statuses import METRIC, MODE, STATUS_NON_FINITE, STATUS_RUNNING
from .trial_config import TrialRun, trial_from_config

log = logging.getLogger(__name__)

class StoppedAtRung(Exception):
    """ASHA stopped this trial at the rung it just reported (see ``sweeps.scheduling.wait_for_decision``)."""

    def __init__(self, rung: Any) -> None:
        super().__init__(f"stopped by ASHA at rung {rung}")
        self.rung = rung


class TrainSession:
    """``train_worker`` in a Ray Train worker: Train gives the device, keeps the reported checkpoints (the best by
    ``val_loss``) and hands the newest back to a restarted worker."""

    def device(self):
        import ray.train.torch

        return ray.train.torch.get_device()  # this worker's GPU (Train may show a node's workers all of them), or CPU

    def resume_point(self, workdir: Path) -> tuple[Path | None, str | None]:
        """(a local copy of the checkpoint to resume from, its path on storage), or (None, None)."""
        import ray.train

        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            return None, None
        return Path(checkpoint.to_directory(str(workdir / "resume"))), checkpoint.path

    def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None = None) -> None:
        import ray.train

        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(str(checkpoint_dir))
                         if checkpoint_dir else None)

    def report_kept(self, metrics: dict[str, Any], local: Path, path: str | None) -> None:
        """Say again the result of the checkpoint this run resumed from (Train keeps it again)."""
        self.report(metrics, local)


def _index(checkpoint: Path) -> int:
    return int(checkpoint.name.rsplit("_", 1)[1])


class TuneSession:
    """``train_worker`` in the Tune trial itself (the ``tune`` runner: one CPU worker). Checkpoints are kept as
    Train keeps them: copied into the trial's stable run folder (``<storage>/train/<train run name>/checkpoint_N``,
    which a rerun of the same config after a lost driver finds again), the newest and the best by ``val_loss``
    kept, each reported to Tune as the ``checkpoint_path`` metric (what ``sweeps.reporting.results`` reads); a trial
    Tune restarts after a failure resumes from the newest usable one."""

    def __init__(self, run_dir: Path, cpus: float = 1) -> None:
        self.run_dir, self.cpus = Path(run_dir), cpus

    def device(self):
        import torch

        torch.set_num_threads(max(1, int(self.cpus)))  # a reused trial process may have run another trial
        return torch.device("cpu")

    def _kept(self) -> list[Path]:
        """The kept checkpoints, oldest first (``checkpoint_N``: N counts the reports with a checkpoint)."""
        return sorted(self.run_dir.glob("checkpoint_*"), key=_index)

    def resume_point(self, workdir: Path) -> tuple[Path | None, str | None]:
        kept = self._kept()
        if not kept:
            return None, None
        newest = newest_usable(kept) or kept[-1]  # an unusable one is refused by name by train_worker
        return newest, str(newest)

    def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None = None) -> None:
        import ray.tune

        if checkpoint_dir is None:
            ray.tune.report(metrics)
            return
        kept = self._kept()
        dest = self.run_dir / f"checkpoint_{_index(kept[-1]) + 1 if kept else 0:06d}"
        with atomic_dir(dest) as tmp:
            shutil.copytree(checkpoint_dir, tmp, dirs_exist_ok=True)
        # as Train keeps them (num_to_keep=1 by the metric), plus the newest for restarts
        keep_newest_and_best(self._kept(), dest, METRIC)
        ray.tune.report({**metrics, "checkpoint_path": str(dest)})

    def report_kept(self, metrics: dict[str, Any], local: Path, path: str | None) -> None:
        """Say again the result of the checkpoint this run resumed from (already in the run folder)."""
        import ray.tune

        ray.tune.report({**metrics, "checkpoint_path": path})



def train_worker(config: dict[str, Any], session: TrainSession | TuneSession | None = None) -> None:
    """One training run of a trial: rebuild the typed run, resume if restarted after a failure, train, report every
    epoch (through ``session``: a Ray Train worker's by default)."""
    import torch

    run = TrialRun.from_dict(config)
    session = session or TrainSession()
    epochs_planned = run.train.epochs
    device = torch.device(run.device) if run.device else session.device()
    placed = where_this_runs()
    if device.type == "cuda":
        torch.cuda.set_device(device)  # NCCL collectives run on the current device: each rank on its own
    cap_cuda_memory(run.cuda_memory_fraction, device if device.type == "cuda" else None)
    workdir = Path(tempfile.mkdtemp(prefix=run.workdir_prefix))
    resume_dir, resume_path = session.resume_point(workdir)
    if resume_dir is not None:  # a restart after a failure: continue where the last report left off
        log.info("resuming from %s", resume_dir)

    if resume_dir is not None and newest_usable([resume_dir]) is None:
        # e.g. a bad copy off a lost node: a retry from it would fail the same way (the warning names it)
        log.warning("the checkpoint to resume from is unusable; this trial starts over")
        resume_dir = None

    last = read_meta(resume_dir, verify=False)["metrics"] if resume_dir is not None else None  # its result
    replayed = False
    if last is not None and run.asha:
        # every worker reads the same file, written only by the driver for other trials meanwhile, so with several
        # workers all reach the same decision and make the same (collective) report
        replay = resume_decision(run.asha, last)
        if replay:
            # the sweep's driver died before Tune kept this result (a rung ASHA had not decided yet, or the one it
            # stopped the trial on): say it again, naming its checkpoint when it is the one on storage
            kind, said = replay
            log.info("resumed at epoch %s: reporting the result of epoch %s again (%s ASHA rung)", last["epoch"],
                     said["epoch"], kind)
            session.report({**said, "epochs_planned": epochs_planned, "status": STATUS_RUNNING,
                            **({"checkpoint_path": resume_path} if said is last else {})})
            replayed = True
            if kind == "stopped" or wait_for_decision(run.asha, said["epoch"]) == "stop":
                # ASHA stopped this trial before the restore (or now, on the result said again): it trains no more
                shutil.rmtree(workdir, ignore_errors=True)
                return

    reported = []

    def on_epoch(metrics: dict[str, Any], ckpt_dir: Path | None) -> None:
        # every worker reports (a collective); rank 0 alone holds the checkpoint (the ranks' weights are the same)
        session.report({**metrics, "epochs_planned": epochs_planned, "status": STATUS_RUNNING, **placed}, ckpt_dir)
        reported.append(metrics)
        if metrics["epoch"] < epochs_planned and wait_for_decision(run.asha, metrics["epoch"]) == "stop":
            raise StoppedAtRung(metrics["epoch"])  # ASHA stopped it here: no further epoch, no later checkpoint

    faults = from_config(run.faults, run.run_name)
    try:
        run_stage(run.model, run.train, run.data, workdir / "run", resume_from=resume_dir, on_epoch=on_epoch,
                  write_final=False, faults=faults, device=device)
        if not reported and resume_dir is not None and not replayed:
            # restored from the last checkpoint of a run that had already finished (its driver died before Tune
            # recorded the end): nothing left to train, so say its final result again for this trial
            session.report_kept({**last, "epochs_planned": epochs_planned, "status": STATUS_RUNNING}, resume_dir,
                                resume_path)
    except StoppedAtRung as e:
        log.info("stopped by ASHA at rung %s", e.rung)
    except NonFiniteLoss as e:
        # A clear end, not a crash: Train would retry a crash from the last checkpoint and diverge the same way.
        # val_loss inf ranks the trial last for ASHA and for the best-checkpoint choice.
        log.error("trial stopped: %s", e)
        session.report({"epoch": e.epoch, "step": e.step, METRIC: float("inf"), "train_loss": float("nan"),
                        "epochs_planned": epochs_planned, "status": STATUS_NON_FINITE, "message": str(e)})
    finally:  # every reported checkpoint is already in the run's storage; a stage-2 workdir holds GBs
        shutil.rmtree(workdir, ignore_errors=True)


NODE_TYPE_ENV = "RAY_NODE_TYPE_NAME"
"""The autoscaler's node type of this node, where the node provider exports it (Ray's fake multi-node provider)."""


def where_this_runs() -> dict[str, Any]:
    """What every report of a run says of where it ran: the Ray node, its type where known, and when this worker
    started (a rehearsal measures each trial's wait for resources from it)."""
    import time

    import ray

    node = ray.get_runtime_context().get_node_id() if ray.is_initialized() else None
    return {"node_id": node, "node_type": os.environ.get(NODE_TYPE_ENV), "worker_started_at": time.time()}


def workdir_prefix(trial_id: str) -> str:
    """A trial's scratch folders in the worker's temp dir; the driver removes those of stopped trials (ASHA kills
    their workers before the worker's own cleanup runs)."""
    return f"vlm-trial-{trial_id}-"


def remove_workdirs(trial_ids: list[str]) -> int:
    """Remove this node's scratch folders of the given trials (those the workers could not remove themselves);
    returns how many there were."""
    n = 0
    for tid in trial_ids:
        for d in Path(tempfile.gettempdir()).glob(f"{workdir_prefix(tid)}*"):
            shutil.rmtree(d, ignore_errors=True)
            n += 1
    return n


def train_run_name(config_id: str, run: TrialRun) -> str:
    """The Train run of a config: its id and a hash of everything its workers get (another config, another run)."""
    return f"train-{config_id}-{run.digest()}"


TRAIN_POLL_ENV, TRAIN_POLL_S = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2"


def _in_tune_when_it_can(res: TrialResources) -> bool:
    """One worker on CPUs only: the loop runs in the Tune trial itself (no Train controller and workers)."""
    return res.num_workers == 1 and not res.use_gpu and set(res.resources_per_worker) <= {"CPU", "memory"}


TRIAL_RUNNERS: Registry[Callable[[TrialResources], bool]] = Registry("runner", "trial runner", {
    "auto": _in_tune_when_it_can,
    "train": lambda res: False,
})
"""``--runner`` (how a Tune trial runs its training loop): ``auto`` runs the CPU backend's one-worker trials in the
Tune trial itself and the rest (GPUs, several workers) through a ``TorchTrainer``; ``train`` runs every trial
through a ``TorchTrainer``. Each entry says whether a trial with those resources trains in the Tune trial (where
``vlm_core.training.one_stage`` then runs the stage)."""


def runs_in_tune(res: TrialResources, runner: str = "auto") -> bool:
    """Whether a trial with ``res`` runs its loop in the Tune trial itself under the trial runner ``runner``."""
    return TRIAL_RUNNERS[runner](res)


def run_trial(config: dict[str, Any]) -> None:
    """Tune function trainable: the trial's loop in this process (``tune`` runner), or one ``TorchTrainer`` with
    this trial's resources and a stable run name (``train`` runner)."""
    import ray.train
    import ray.tune
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    trial = trial_from_config(config)  # the grid entry, or a searched row with its draw: everything it needs
    res = trial.resources
    trial_id = ray.tune.get_context().get_trial_id()
    run = trial.run_for(trial_id, workdir_prefix(trial_id))
    run_name = train_run_name(trial.config_id, trial.run)
    if trial.in_tune:
        configure_logging()  # this process's lines (resumes, ASHA replays, epochs) reach the driver's console
        train_worker(run.to_dict(), TuneSession(Path(trial.storage_path) / run_name,
                                                res.resources_per_worker.get("CPU", 1)))
        return
    # Train's controller learns of each report, and of the run's end, when it next polls its workers (Ray's default:
    # every 2 s); TorchTrainer passes this on to the controller and the workers
    os.environ.setdefault(TRAIN_POLL_ENV, TRAIN_POLL_S)
    if trial.rehearsal:
        log.info("rehearsal: %s asks %s × %s as on the cluster; the GPUs are simulated, so it trains on the CPU "
                 "with gloo", trial.config_id, res.num_workers, res.per_worker())
    trainer = TorchTrainer(
        train_worker,
        train_loop_config=run.to_dict(),
        torch_config=TorchConfig(backend="gloo") if trial.rehearsal else None,
        scaling_config=ray.train.ScalingConfig(num_workers=res.num_workers, use_gpu=res.use_gpu,
                                               resources_per_worker=res.resources_per_worker,
                                               accelerator_type=res.accelerator_type),
        run_config=ray.train.RunConfig(
            # Stable across restarts of the driver, even when Tune re-creates the trial under a new id (a driver
            # killed before its experiment state was saved): a rerun of the same config finds its checkpoints
            name=run_name,
            storage_path=trial.storage_path,
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=1, checkpoint_score_attribute=METRIC,
                                                         checkpoint_score_order=MODE),
            failure_config=ray.train.FailureConfig(max_failures=trial.max_failures,
                                                   controller_failure_limit=0),
            callbacks=[TuneReportCallback()]),
    )
    trainer.fit()
