"""Typed configs, as data: the model's (``vlm``), a training run's (``train``), the named choices their fields take
(``choices``) and the round trip through plain dicts (``parse``). They import nothing of the model or the training
code above them, so any layer can read them.
"""

from __future__ import annotations

from . import choices
from .parse import check_field, from_dict
from .train import LORA_TARGETS, LoraSpec, TrainConfig
from .vlm import IMAGE_MARKER, PINNED_DATE, FormatConfig, LMConfig, ProjectorConfig, VisionConfig, VLMConfig

__all__ = ["IMAGE_MARKER", "LORA_TARGETS", "PINNED_DATE", "FormatConfig", "LMConfig", "LoraSpec", "ProjectorConfig",
           "TrainConfig", "VLMConfig", "VisionConfig", "check_field", "choices", "from_dict"]
