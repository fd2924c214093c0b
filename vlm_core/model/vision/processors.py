"""The square image processor every vision encoder's preprocessing is built from (``clip``'s random-init encoder,
``efficientnet_lite0``): resize the short side, centre-crop, rescale to [0, 1], normalise per channel."""

from __future__ import annotations

# CLIP's normalisation constants (OpenAI), used by the tiny random-init encoder's processor.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def image_processor(size: int, mean=CLIP_MEAN, std=CLIP_STD):
    """A square ``size`` px processor. The PIL class: the default (fast) one needs torchvision, which the CPU torch
    wheel lacks."""
    from transformers import CLIPImageProcessorPil

    return CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size},
                                 image_mean=list(mean), image_std=list(std))
