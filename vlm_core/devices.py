"""Which device a process computes on: the one rule (a GPU when this process sees one, else the CPU) that training,
the feature cache, embedding and translation share. Ray sets ``CUDA_VISIBLE_DEVICES`` per worker / actor from its
request, so "sees one" means "was given one".

    python -c "from vlm_core.devices import pick_device; print(pick_device())"
"""

from __future__ import annotations

import torch


def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
