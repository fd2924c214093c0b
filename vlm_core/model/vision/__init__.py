"""Vision encoders: the frozen image side of the VLM.

``encoder`` (the geometry projectors are built from, the protocol every kind implements, the frozen
``VisionTower``, the ``VISION_ENCODERS`` registry), one module per registered kind (``clip``: a ``CLIPVisionModel``;
``efficientnet``: the ImageNet-trained EfficientNet-Lite0 CNN) and ``processors`` (the square image processor they
share). Importing the package registers every kind.
"""

from __future__ import annotations

from . import clip, efficientnet  # noqa: F401  (each registers its kind in VISION_ENCODERS)
from .encoder import (
    VISION_ENCODERS,
    EncoderGeometry,
    VisionEncoder,
    VisionTower,
    build_vision_tower,
    encoder_geometry,
    expand_to_square,
)

__all__ = ["VISION_ENCODERS", "EncoderGeometry", "VisionEncoder", "VisionTower", "build_vision_tower",
           "encoder_geometry", "expand_to_square"]
