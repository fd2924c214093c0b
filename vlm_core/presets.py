"""Named presets, one record each: the models (a ``VLMConfig``), how much of the study a sweep runs (``Scale``), the
default hardware backend, the main job's sizes and the free disk space a whole study needs. Builders stay
size-agnostic; a preset only fills these in, and every command reads them from here (``PRESETS``).

* ``tiny``  — random-init CLIP (64 px, 4 layers) + random 2-layer Llama with the real SmolLM2 tokenizer:
  unit tests and smoke runs, seconds per step on a CPU.
* ``local`` — the ImageNet-trained EfficientNet-Lite0 (packaged weights: 49 tokens at 224 px, TinyCLIP's count) +
  the real packaged SmolLM2-135M-Instruct: the study scaled down to run on a laptop CPU with no hub access.
* ``local-long`` — the ``local`` models; the sweep runs 24 steps of batch 8 per epoch instead of 1 of batch 2, and
  ``vlm-sweep run`` one lineage instead of the whole grid.
* ``local-clip`` / ``local-long-clip`` — ``local`` / ``local-long`` with a random-init CLIP (112 px, 49 patches, 8
  layers) instead of the CNN: the ViT path offline.
* ``paper`` — TinyCLIP-ViT-40M-32 + Llama-3.2-1B-Instruct (hub ids at pinned revisions, or local folders), as in
  the study.
* ``paper-shaped`` / ``paper-shaped-2l`` — ``paper``'s architectures from their published configs with random
  weights (``vlm_core.assets.paper_shaped``), the LLM at its 16 layers / cut to 2 (widths, vocabulary, special ids
  and chat template kept): the real shapes with no hub access. Their models resolve lazily: the folders are
  materialized into the asset cache (once) when the preset's model is asked for, never at import.

README "Presets" has what each measured.

    vlm-sweep show preset local          # a preset's record, its model config included
    vlm-sweep show preset                # every preset's record (lazy models not materialized)
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable

from .assets.hub import LLAMA32_1B, PINNED_REVISIONS, TINYCLIP
from .assets.paper_shaped import paper_shaped_config
from .base.registry import Registry
from .config import FormatConfig, LMConfig, ProjectorConfig, VisionConfig, VLMConfig


@dataclass(frozen=True)
class Scale:
    """How much of each epoch a sweep of the preset runs (the ``local`` preset shrinks the study to fit a laptop)."""

    max_steps_per_epoch: int | None = None
    """Cap on optimizer steps per epoch (None: the whole variant)."""
    batch_size_cap: int | None = None
    """Cap on the batch size (None: the study's)."""
    stage1_lr: float | None = None
    """Stage-1 override of the study's 2e-5 (a projector trained for a few steps needs a larger step)."""
    stage2_lr: float | None = None
    """Stage-2 override (projector + LLM). Leave unset for a pretrained LLM, which a projector's large step wrecks
    (BENCHMARKS.md); only the random tiny LLM takes one."""
    max_val_samples: int | None = None
    """Validate on the first N samples of the variant's val split (None: all)."""
    stage1_epoch_divisor: int = 1
    """Stage-1 trials run ``epochs // divisor`` epochs (at least 1): the ``local`` preset's 3 turns the study's
    3 / 6 / 9 into 1 / 2 / 3, keeping their order and the schedules' shapes. Stage 2 keeps its epochs (ASHA's
    rungs)."""


@dataclass(frozen=True)
class StudySizes:
    """What ``vlm-sweep run`` evaluates (and which rows of the study it runs) for the preset."""

    paper_ids: tuple[int, ...] | None = None
    """paper19 rows to run (None: all)."""
    eval_questions: int = 36
    """Held-out easy-vqa questions per stage-2 checkpoint (equal shares of yes/no, colour, shape)."""
    eval_val_samples: int = 8
    """Held-out conversations scored for loss / perplexity per checkpoint."""


@dataclass(frozen=True)
class Preset:
    """Everything a preset decides, in one record."""

    name: str
    build_model: Callable[[], VLMConfig] = field(repr=False)
    """The model config (a fresh copy each call; lazy presets materialize their folders on the first call)."""
    scale: Scale = Scale()
    backend: str = "cpu"
    """How hardware profiles map to the cluster by default (see ``sweeps.profiles``)."""
    study: StudySizes = StudySizes()
    min_free_gb: float = 10.0
    """Free space ``run`` / ``sweep`` need in their output and temp folders (GiB)."""

    def model(self) -> VLMConfig:
        return self.build_model()

    def describe(self, with_model: bool = True) -> dict[str, Any]:
        """The record as plain data (``with_model=False`` leaves a lazy model unbuilt)."""
        out = {"name": self.name, "scale": dataclasses.asdict(self.scale), "backend": self.backend,
               "study": dataclasses.asdict(self.study), "min_free_gb": self.min_free_gb}
        return {**out, "model": self.model().to_dict()} if with_model else out


def _fixed(cfg: VLMConfig) -> Callable[[], VLMConfig]:
    return lambda: copy.deepcopy(cfg)


def _paper_shaped(lm_layers: int | None) -> Callable[[], VLMConfig]:
    return lambda: paper_shaped_config(PAPER_MODEL, lm_layers=lm_layers)


TINY_MODEL = VLMConfig(
    vision=VisionConfig(source="tiny", image_size=64, patch_size=16, hidden_size=64, num_layers=4, num_heads=4),
    projector=ProjectorConfig(name="mlp2x_gelu"),
    lm=LMConfig(source="tiny", hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128),
    format=FormatConfig(mode="chat", max_length=256))
LOCAL_CLIP_MODEL = VLMConfig(
    vision=VisionConfig(source="tiny", image_size=112, patch_size=16, hidden_size=128, num_layers=8, num_heads=4),
    projector=ProjectorConfig(name="mlp2x_gelu", feature_norm="standardize"),
    lm=LMConfig(source="smollm2"),
    format=FormatConfig(mode="chat", max_length=384))
# The ImageNet-trained EfficientNet-Lite0: a real pretrained encoder offline, 49 tokens at 224 px. The main feature is
# hidden_states[-2], the last stage's output (the head is a 1 x 1 convolution of it), LLaVA's penultimate choice;
# standardised (README "Presets": the runs that chose it over raw features).
LOCAL_MODEL = VLMConfig(
    vision=VisionConfig(encoder="efficientnet_lite0", source="packaged", drop_cls=False),
    projector=ProjectorConfig(name="mlp2x_gelu", feature_norm="standardize"),
    lm=LMConfig(source="smollm2"),
    format=FormatConfig(mode="chat", max_length=384))
PAPER_MODEL = VLMConfig(
    vision=VisionConfig(source=TINYCLIP, revision=PINNED_REVISIONS[TINYCLIP]),
    projector=ProjectorConfig(name="mlp2x_gelu"),
    lm=LMConfig(source=LLAMA32_1B, revision=PINNED_REVISIONS[LLAMA32_1B]),
    # 768 = the smallest multiple of 256 >= 1.5 x the p99 of ShareGPT4V-shaped captions under this preset's formatter
    # (bench/token_lengths.py; BENCHMARKS.md); the 1.5 leaves room for the real file's tail beyond the fixture's.
    # Batches pad to their own longest.
    format=FormatConfig(mode="chat", max_length=768))

def _local(name: str, model: VLMConfig) -> Preset:
    """The whole study on a laptop's CPU cores: every epoch is one step of batch 2 and 4 val samples, stage 1 runs a
    third of its epochs (the machinery, not the study's conclusions). Evaluation: 36 questions (12 per type) and 8
    held-out conversations. Its free-space figure covers six stage-2 checkpoints with their optimizer state."""
    return Preset(name, _fixed(model), min_free_gb=12.0,
                  scale=Scale(max_steps_per_epoch=1, batch_size_cap=2, max_val_samples=4, stage1_lr=1e-3,
                              stage1_epoch_divisor=3))


def _local_long(name: str, model: VLMConfig) -> Preset:
    """One lineage (paper row 7: s1-20kUmap-nodense-chat-cosine-e9-b8 → its stage-2 continuation) trained longer,
    24 steps of batch 8 per epoch, evaluated on more questions."""
    return Preset(name, _fixed(model), min_free_gb=6.0,
                  scale=Scale(max_steps_per_epoch=24, batch_size_cap=8, max_val_samples=16, stage1_lr=1e-3),
                  study=StudySizes(paper_ids=(7,), eval_questions=150, eval_val_samples=16))


PRESETS: Registry[Preset] = Registry("preset", "preset", {p.name: p for p in [
    Preset("tiny", _fixed(TINY_MODEL),
           scale=Scale(max_steps_per_epoch=2, batch_size_cap=2, stage1_lr=1e-3, stage2_lr=1e-3),
           min_free_gb=1.0),
    _local("local", LOCAL_MODEL),
    _local_long("local-long", LOCAL_MODEL),
    _local("local-clip", LOCAL_CLIP_MODEL),  # the same two with a random-init CLIP
    _local_long("local-long-clip", LOCAL_CLIP_MODEL),
    # paper's stage-2 checkpoints hold a 1B model with its optimizer state
    Preset("paper", _fixed(PAPER_MODEL), backend="a100-40g", min_free_gb=100.0),
    Preset("paper-shaped", _paper_shaped(None),  # Llama-3.2-1B's 16 layers (2.5 GB of bf16 weights in the cache)
           backend="a100-40g", min_free_gb=100.0),
    Preset("paper-shaped-2l", _paper_shaped(2)),  # 2 LLM layers: the paper's widths on a CPU
]})


def available_presets() -> list[str]:
    return PRESETS.names()


def preset(name: str) -> Preset:
    """The preset record ``name``; an unknown name raises ``ConfigError`` naming the choices."""
    return PRESETS[name]


def get_preset(name: str) -> VLMConfig:
    """The model config of preset ``name`` (a fresh copy)."""
    return preset(name).model()
