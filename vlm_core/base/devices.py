"""Which device a process computes on: the one rule (a GPU when this process sees one, else the CPU) that training,
the feature cache, embedding and translation share. Ray sets ``CUDA_VISIBLE_DEVICES`` per worker / actor from its
request, so "sees one" means "was given one".

A fractional GPU request (``{"GPU": 0.25}``) is logical only: Ray shares the card and enforces nothing, so a trial
that asks for a fraction also caps its own CUDA caching allocator at that fraction (:func:`cap_cuda_memory`): it
then fails with an out-of-memory error itself instead of starving the trials beside it.
"""

from __future__ import annotations

import torch


def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def cap_cuda_memory(fraction: float | None, device: torch.device | None = None) -> float | None:
    """Cap this process's CUDA caching allocator at ``fraction`` of ``device``'s memory (the current device when
    None); returns the cap in bytes, or None when there is nothing to cap (no fraction, a whole card, no CUDA)."""
    if not fraction or fraction >= 1 or not torch.cuda.is_available():
        return None
    if device is None or device.index is None:  # "cuda" alone: the current device (torch wants an index)
        device = torch.device("cuda", torch.cuda.current_device())
    torch.cuda.set_per_process_memory_fraction(float(fraction), device)
    return fraction * torch.cuda.get_device_properties(device).total_memory
