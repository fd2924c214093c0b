"""The study's experiment matrices, as data: the 19 stage-1 runs, the 6 stage-2 continuations, the full grid.

Every trial has a stable id (its position-free description) and a readable name, e.g.
``s1-20kUmap-nodense-raw-linear-e3-b12``; stage-2 trials name the stage-1 config they continue, and a stage-2 trial
that tunes the LLM with LoRA ends in ``-lora``. Grids: ``paper19`` (the study: 19 runs, 6 continuations with the
LLM fully tuned), ``lora`` (the same 19, the 6 continuations with LoRA), ``full`` (the Cartesian grid, every
stage-1 config continued both ways).

    vlm-sweep show grid paper19        # prints the table
    vlm-sweep show grid lora
    vlm-sweep show grid full
"""

from __future__ import annotations

import itertools
import re
from dataclasses import asdict, dataclass
from typing import Any, Callable

from vlm_core.base.errors import ConfigError
from vlm_core.base.registry import Registry

DATASETS = ("20kUmap", "10kRandom")
SCHEDULERS = ("linear", "cosine")
EPOCHS = (3, 6, 9)
BATCH_SIZES = (1, 8, 12)
LR = 2e-5


@dataclass(frozen=True)
class TrialSpec:
    """One run of the study: the ablation axes plus the hardware it was run on."""

    stage: int
    dataset: str
    dense: bool
    chat: bool
    scheduler: str
    epochs: int
    batch_size: int
    profile: str
    lr: float = LR
    paper_id: int | None = None
    parent: str | None = None  # stage 2: the config id of the stage-1 run it continues
    lm_tuning: str = "full"  # stage 2: the whole LLM, or LoRA adapters on it

    @property
    def config_id(self) -> str:
        """Stable, readable id: the same config always has the same id, in any matrix. A stage-2 run is also its
        parent, so its id names the parent's epochs and batch (``...-e3-b3-from-e9-b8``): the full grid continues
        nine stage-1 configs per dataset / dense / chat / scheduler, whose continuations would otherwise share
        one id (and one Tune trial name)."""
        parent = f"-from-{_epochs_and_batch(self.parent)}" if self.stage == 2 and self.parent else ""
        return (f"s{self.stage}-{self.dataset}-{'dense' if self.dense else 'nodense'}-"
                f"{'chat' if self.chat else 'raw'}-{self.scheduler}-e{self.epochs}-b{self.batch_size}{parent}"
                f"{'-lora' if self.lm_tuning == 'lora' else ''}")

    @property
    def axes(self) -> dict[str, Any]:
        return {"dataset": self.dataset, "dense": self.dense, "chat": self.chat, "scheduler": self.scheduler,
                "epochs": self.epochs, "batch_size": self.batch_size}

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "config_id": self.config_id}


def _epochs_and_batch(stage1_id: str) -> str:
    """``e9-b8`` of a stage-1 config id (its epochs and batch, as ``TrialSpec.config_id`` writes them), with a
    searched parent's parameter digest (``e3-b2-p1a2b3c``: ``sweeps.trial_config.Trial.config_id``)."""
    m = re.search(r"e\d+-b\d+(-p[0-9a-f]+)?$", stage1_id)
    return m.group(0) if m else "-".join(stage1_id.split("-")[-2:])


# The seed study's stage-1 table (shared/architecture.md §2): id, dataset, dense, chat, scheduler, epochs, batch,
# GPU config. Kept verbatim as data.
PAPER19_TABLE: list[tuple[int, str, bool, bool, str, int, int, str]] = [
    (1, "20kUmap", False, False, "linear", 3, 1, "a100-10g"),
    (2, "20kUmap", False, False, "linear", 3, 12, "a100-37g"),
    (3, "20kUmap", False, False, "linear", 6, 12, "a100-37g"),
    (4, "20kUmap", False, False, "cosine", 3, 12, "a100-37g"),
    (5, "20kUmap", False, False, "cosine", 6, 12, "a100-37g"),
    (6, "20kUmap", False, True, "cosine", 6, 8, "a100-10g"),
    (7, "20kUmap", False, True, "cosine", 9, 8, "a100-10g"),
    (8, "10kRandom", False, False, "linear", 3, 8, "a100-26g"),
    (9, "10kRandom", False, False, "linear", 6, 8, "a100-26g"),
    (10, "10kRandom", False, False, "cosine", 3, 12, "a100-37g"),
    (11, "10kRandom", False, False, "cosine", 6, 12, "a100-37g"),
    (12, "10kRandom", False, True, "linear", 6, 8, "a100-37g"),
    (13, "10kRandom", False, True, "cosine", 6, 8, "a100-37g"),
    (14, "10kRandom", True, True, "linear", 3, 8, "a100-37g"),
    (15, "10kRandom", True, True, "linear", 6, 8, "a100-37g"),
    (16, "10kRandom", True, True, "linear", 9, 8, "a100-37g"),
    (17, "10kRandom", True, True, "cosine", 3, 8, "a100-26g"),
    (18, "10kRandom", True, True, "cosine", 6, 8, "a100-26g"),
    (19, "10kRandom", True, True, "cosine", 9, 8, "a100-26g"),
]
STAGE2_CONTINUES = (3, 7, 9, 13, 16, 19)
STAGE2_EPOCHS, STAGE2_BATCH, STAGE2_PROFILE = 3, 3, "a100-28g"
# Full grid: the profile follows the batch size (the study's memory need grows with it).
PROFILE_BY_BATCH = {1: "a100-10g", 8: "a100-26g", 12: "a100-37g"}


def paper19_stage1() -> list[TrialSpec]:
    return [TrialSpec(1, d, dense, chat, sched, ep, bs, prof, paper_id=i)
            for i, d, dense, chat, sched, ep, bs, prof in PAPER19_TABLE]


def continuation(parent: TrialSpec, lm_tuning: str = "full") -> TrialSpec:
    """Stage 2 of a stage-1 config: same dataset / dense / chat / scheduler, 3 epochs, batch 3; the LLM tuned fully
    or with LoRA."""
    return TrialSpec(2, parent.dataset, parent.dense, parent.chat, parent.scheduler, STAGE2_EPOCHS, STAGE2_BATCH,
                     STAGE2_PROFILE, paper_id=parent.paper_id, parent=parent.config_id, lm_tuning=lm_tuning)


def paper19_stage2(lm_tuning: str = "full") -> list[TrialSpec]:
    by_id = {t.paper_id: t for t in paper19_stage1()}
    return [continuation(by_id[i], lm_tuning) for i in STAGE2_CONTINUES]


def lora_stage2() -> list[TrialSpec]:
    """The study's six continuations with LoRA instead of full tuning."""
    return paper19_stage2("lora")


def full_stage1() -> list[TrialSpec]:
    return [TrialSpec(1, d, dense, chat, sched, ep, bs, PROFILE_BY_BATCH[bs])
            for d, dense, chat, sched, ep, bs in itertools.product(DATASETS, (False, True), (False, True),
                                                                    SCHEDULERS, EPOCHS, BATCH_SIZES)]


def full_stage2() -> list[TrialSpec]:
    """Every stage-1 config of the grid continued (dataset × dense × chat × scheduler × epochs × batch), the LLM
    tuned fully and with LoRA."""
    return [continuation(t, tuning) for t in full_stage1() for tuning in ("full", "lora")]


GRIDS: Registry[tuple[Callable[[], list[TrialSpec]], Callable[[], list[TrialSpec]]]] = Registry("grid", "grid", {
    "paper19": (paper19_stage1, paper19_stage2), "lora": (paper19_stage1, lora_stage2),
    "full": (full_stage1, full_stage2)})
"""Grid name → (its stage-1 trials, its stage-2 trials)."""


def get_grid(name: str, stage: int) -> list[TrialSpec]:
    if stage not in (1, 2):
        raise ConfigError(f"stage: {stage} is not 1 or 2")
    return GRIDS[name][stage - 1]()


def format_table(trials: list[TrialSpec]) -> str:
    head = f"{'paper':>5}  {'config id':50} {'profile':9} {'continues'}"
    lines = [head, "-" * len(head)]
    for t in trials:
        lines.append(f"{t.paper_id or '':>5}  {t.config_id:50} {t.profile:9} {t.parent or ''}")
    return "\n".join(lines)
