"""A sweep trial, typed: built once by the driver, sent through Ray Tune as a plain dict, rebuilt on the other side.

* :class:`Trial` — everything Tune's function trainable (``sweeps.trial.run_trial``) needs: the config id and the
  matrix row, the Ray resources, where Train keeps its runs, how often a failed run restarts, whether the loop runs
  in the Tune trial itself, and the run every worker trains (:class:`TrialRun`);
* :func:`trial_configs` — the model and training configs of a matrix row under a preset and its scale;
* :class:`TrialRun` — what every Train worker of the trial gets: the model, training and data configs (and the
  fault injection tests ask for), plus what the trainable adds per run (its name, scratch folder prefix, CUDA
  memory cap, and the ASHA decisions file a stage-2 run reads at each rung, :class:`AshaLink`).

Ray's own pattern: Tune's ``param_space`` and Train's ``train_loop_config`` carry plain dicts (``to_dict``); the
receiving function turns its dict back into the dataclass on its first line (``from_dict``), which refuses unknown
keys by name. The dict layout is the one Tune records in each trial's ``params.json``, which the reports, W&B and
ASHA's replay read back.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from vlm_core.assets.hub import localize
from vlm_core.config import TrainConfig, VLMConfig, from_dict
from vlm_core.presets import Scale, get_preset
from vlm_core.training.one_stage import DataSpec

from .matrix import TrialSpec
from .profiles import TrialResources
from .scheduling import AshaLink, config_digest
from .search.space import apply, params_digest, to_plain


@dataclass
class TrialRun:
    """One training run of a trial, as every Train worker gets it."""

    model: VLMConfig
    train: TrainConfig
    data: DataSpec
    faults: dict[str, Any] | None = None
    """Fault injection (tests only, ``vlm_core.training.faults``; from ``VLM_SWEEP_FAULTS``)."""
    run_name: str = ""
    """The trial's config id (what ``faults.only`` matches)."""
    workdir_prefix: str = "vlm-trial-"
    """Prefix of the run's scratch folder in the worker's temp dir (the driver removes a stopped trial's)."""
    cuda_memory_fraction: float | None = None
    """Cap on this process's CUDA caching allocator (a fractional-GPU profile)."""
    asha: AshaLink | None = None
    """Stage 2: ASHA's decisions (None in stage 1)."""
    device: str | None = None
    """Train on this device whatever the worker was given (``cpu`` in a rehearsal, whose GPUs are simulated)."""

    def configs(self) -> dict[str, Any]:
        """What identifies the run: its configs (and faults), as the dict Train's run name and ASHA's records hash."""
        out = {"model": self.model.to_dict(), "train": self.train.to_dict(), "data": dataclasses.asdict(self.data)}
        return {**out, "faults": self.faults} if self.faults else out

    def digest(self) -> str:
        """A hash of :meth:`configs`: with the config id, a trial's identity across restores."""
        return config_digest(self.configs())

    def to_dict(self) -> dict[str, Any]:
        return {**self.configs(), "run_name": self.run_name, "workdir_prefix": self.workdir_prefix,
                "cuda_memory_fraction": self.cuda_memory_fraction, "device": self.device,
                "asha": dataclasses.asdict(self.asha) if self.asha else None}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrialRun:
        return from_dict(cls, d)


@dataclass
class Trial:
    """One trial of a sweep: what Tune's function trainable gets."""

    spec: TrialSpec
    """Its row of the matrix (the config id derives from it)."""
    resources: TrialResources
    """What each Train worker asks Ray for, and how many workers."""
    storage_path: str
    """Where Train keeps the trial's run (``<out>/train``)."""
    max_failures: int
    """Restarts of a failed run from its last checkpoint."""
    run: TrialRun
    in_tune: bool
    """The loop runs in the Tune trial itself (the ``tune`` runner) rather than through a ``TorchTrainer``."""
    asha: AshaLink | None = None
    """Stage 2: ASHA's decisions file (the run's copy names the trial)."""
    rehearsal: bool = False
    """A rehearsal on a simulated cluster (``vlm-sweep rehearse``): Ray is asked for exactly what the cluster would
    be asked (GPUs, accelerator type, workers), but the GPUs exist only as numbers, so the workers train on the CPU
    and talk gloo, with no CUDA memory cap. Set only by the rehearsal; a sweep has no flag for it."""
    params: dict[str, Any] = field(default_factory=dict)
    """A searched trial: the values its searcher drew (dotted field → value, ``sweeps.search``), already applied to
    ``run`` and ``spec``; empty in a grid."""

    @property
    def config_id(self) -> str:
        """The row's id; a searched trial's ends in ``-p`` and six hex digits of its parameters."""
        return f"{self.spec.config_id}-p{params_digest(self.params)}" if self.params else self.spec.config_id

    def with_params(self, params: dict[str, Any]) -> Trial:
        """This row with a searcher's draw applied: the configs rebuilt (their checks run), the spec's axes set to
        what the trial runs, and a searched encoder or projector field encoding on the fly (a feature cache holds one
        projector's selection)."""
        if not params:
            return self
        params = {k: to_plain(v) for k, v in sorted(params.items())}
        model, train = apply(self.run.model, self.run.train, params)
        axes = {axis: getter(model, train) for name, (axis, getter) in SPEC_AXES.items() if name in params}
        data = self.run.data
        if any(k.startswith(("model.vision.", "model.projector.")) for k in params):
            data = dataclasses.replace(data, features=None)
        return dataclasses.replace(self, spec=dataclasses.replace(self.spec, **axes), params=params,
                                   run=dataclasses.replace(self.run, model=model, train=train, data=data))

    def run_for(self, trial_id: str, workdir_prefix: str) -> TrialRun:
        """The run the trial's workers train: its name, scratch folder, CUDA cap, and ASHA's link for this trial."""
        asha = dataclasses.replace(self.asha, trial=self.config_id, config_hash=self.run.digest()) \
            if self.asha else None
        if self.rehearsal:
            return dataclasses.replace(self.run, run_name=self.config_id, workdir_prefix=workdir_prefix,
                                       cuda_memory_fraction=None, asha=asha, device="cpu")
        return dataclasses.replace(self.run, run_name=self.config_id, workdir_prefix=workdir_prefix,
                                   cuda_memory_fraction=self.resources.cuda_memory_fraction, asha=asha)

    def to_dict(self) -> dict[str, Any]:
        """Tune's ``param_space`` entry (and ``params.json``): the run as its configs only (``worker``)."""
        out = {"config_id": self.config_id, "spec": self.spec.to_dict(),
               "resources": dataclasses.asdict(self.resources), "storage_path": self.storage_path,
               "max_failures": self.max_failures, "worker": self.run.configs(), "in_tune": self.in_tune}
        if self.rehearsal:
            out["rehearsal"] = True
        if self.params:
            out["params"] = self.params
        return {**out, "asha": dataclasses.asdict(self.asha)} if self.asha else out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Trial:
        d = {k: v for k, v in d.items() if k != "config_id"}  # derived from the spec, as is the spec's own
        d["spec"] = {k: v for k, v in d["spec"].items() if k != "config_id"}
        d["run"] = d.pop("worker")
        return from_dict(cls, d)


SPEC_AXES = {
    "train.scheduler": ("scheduler", lambda m, t: t.scheduler),
    "train.epochs": ("epochs", lambda m, t: t.epochs),
    "train.batch_size": ("batch_size", lambda m, t: t.batch_size),
    "train.lr": ("lr", lambda m, t: t.lr),
    "train.lm_tuning": ("lm_tuning", lambda m, t: t.lm_tuning),
    "model.projector.name": ("dense", lambda m, t: m.projector.name.startswith("dense")),
    "model.format.mode": ("chat", lambda m, t: m.format.mode == "chat"),
}
"""A searched field that is also an axis of the study's rows → (the spec's axis, its value from the configs)."""


def trial_from_config(config: dict[str, Any]) -> Trial:
    """The trial a Tune config describes: a grid's ``trial`` entry, or a search's row (``rows[row]``) with the
    searcher's ``params`` applied (``sweeps.search.algorithms`` lays the config out)."""
    if "trial" in config:
        return Trial.from_dict(config["trial"])
    return Trial.from_dict(config["rows"][config["row"]]).with_params(config.get("params") or {})


def trial_identity(config: dict[str, Any]) -> tuple[str | None, str | None]:
    """(config id, config hash) of a trial from its Tune config: the same after any restore (what ASHA's records
    are keyed by)."""
    if not isinstance(config, dict) or not ({"trial", "rows"} & config.keys()):
        return None, None
    trial = trial_from_config(config)
    return trial.config_id, trial.run.digest()


PROJECTOR_FOR_DENSE = {False: "mlp2x_gelu", True: "dense_connector"}
FORMAT_FOR_CHAT = {False: "raw", True: "chat"}


def trial_configs(spec: TrialSpec, preset: str, scale: Scale, init_checkpoint: str | None = None,
                  gradient_checkpointing: bool = False, assets: str | None = None,
                  dense_groups: int | None = None, stage2_sharding: str = "none") -> tuple[VLMConfig, TrainConfig]:
    """The model and training configs of one trial of the matrix. With ``assets`` (an assets folder), hub models
    the folder holds at their pinned revision are loaded from it (the config names the folder); ``dense_groups``
    sets the dense connector's G (default: the preset's); ``stage2_sharding`` applies to stage-2 trials that tune
    the whole LLM (stage 1 trains only the projector; LoRA's base LLM is frozen)."""
    model = get_preset(preset)
    for part in (model.vision, model.lm):
        part.source = localize(part.source, part.revision, assets)
    if model.lm.tokenizer:
        model.lm.tokenizer = localize(model.lm.tokenizer, model.lm.tokenizer_revision, assets)
    model.projector.name = PROJECTOR_FOR_DENSE[spec.dense]
    if dense_groups is not None:
        model.projector.dense_groups = dense_groups
    model.format.mode = FORMAT_FOR_CHAT[spec.chat]
    batch = min(spec.batch_size, scale.batch_size_cap) if scale.batch_size_cap else spec.batch_size
    lr = (scale.stage1_lr if spec.stage == 1 else scale.stage2_lr) or spec.lr
    epochs = max(1, spec.epochs // scale.stage1_epoch_divisor) if spec.stage == 1 else spec.epochs
    sharding = stage2_sharding if spec.stage == 2 and spec.lm_tuning == "full" else "none"
    train = TrainConfig(stage=spec.stage, epochs=epochs, batch_size=batch, lr=lr, lm_tuning=spec.lm_tuning,
                        sharding=sharding,
                        scheduler=spec.scheduler, init_checkpoint=init_checkpoint,
                        gradient_checkpointing=gradient_checkpointing,
                        max_steps_per_epoch=scale.max_steps_per_epoch, max_val_samples=scale.max_val_samples)
    return model, train
