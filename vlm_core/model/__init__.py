"""The LLaVA-style VLM: a frozen vision encoder (``vision/``), a trainable projector (``projectors``), the causal
language model with its ``<image>`` token (``language_model``), conversation formatting into tokens and labels
(``conversation``), LoRA adapters (``lora``), and the model that splices them together (``vlm``); ``in_memory``
builds the paper-shaped one on any device without files.
"""

from __future__ import annotations

from .conversation import IGNORE_INDEX, ConversationFormatter, Encoded
from .language_model import ImageToken, build_language_model
from .projectors import PROJECTORS, Projector, build_projector
from .vision import VISION_ENCODERS, EncoderGeometry, VisionTower, build_vision_tower
from .vlm import VisionLanguageModel, VLMOutput

__all__ = ["IGNORE_INDEX", "PROJECTORS", "VISION_ENCODERS", "ConversationFormatter", "Encoded", "EncoderGeometry",
           "ImageToken", "Projector", "VLMOutput", "VisionLanguageModel", "VisionTower", "build_language_model",
           "build_projector", "build_vision_tower"]
