"""Hardware profiles (the study's A100 memory configs) and how a backend maps them onto Ray resources.

A profile is a memory budget; a backend says what the cluster has:

* ``cpu``          every profile runs on CPU workers (the ``local`` preset: the whole study on a laptop);
* ``a100-40g`` / ``a100-80g``  a *fraction* of one A100 of that size (``{"GPU": f}``, the accelerator type of that
  size, ``A100-40G`` / ``A100-80G``, and a per-process CUDA memory cap of the same fraction, since Ray's fractions
  are logical only). The size matters: the cap is a fraction of the card it lands on, so an ``a100-80g`` trial on a
  40 GB card would get half its budget. Ray labels a node ``A100`` by itself; the sized type is a resource the node
  type declares (``cluster.yaml``: ``"accelerator_type:A100-40G": 1``), as Ray's accelerator constants advise;
* ``whole-gpu``    one whole GPU per worker, whatever the budget;
* ``mig``          KubeRay MIG slices exposed as custom resources (``mig-3g.40gb``), the smallest that fits.

Fractions are logical and break multi-worker NCCL, so a fractional profile with several workers is refused.

    vlm-sweep show profiles             # the mapping table for every backend
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

from vlm_core.base.errors import ConfigError
from vlm_core.base.registry import Registry


@dataclass(frozen=True)
class HardwareProfile:
    name: str
    memory_gb: float
    """GPU memory the run needs (the study's A100 config)."""
    cpus: int = 4
    """CPUs per worker on GPU backends (data loading, tokenisation)."""
    gradient_checkpointing: bool = False
    """The tightest budget trains with activation checkpointing."""
    num_workers: int = 1
    """Ray Train workers (data-parallel ranks) a trial of this profile gets unless the sweep says otherwise."""


PROFILES: Registry[HardwareProfile] = Registry("profile", "hardware profile", {p.name: p for p in (
    HardwareProfile("a100-10g", 10.0, gradient_checkpointing=True),
    HardwareProfile("a100-26g", 26.4),
    HardwareProfile("a100-28g", 28.0),
    HardwareProfile("a100-37g", 37.0),
    HardwareProfile("cpu", 0.0, cpus=1),
)})

ACCELERATOR_PREFIX, ACCELERATOR_SHARE = "accelerator_type:", 0.001
"""How Ray turns ``accelerator_type="A100"`` into a resource request (``ray.util.accelerators``)."""

# MIG slices of each A100 size, smallest first: (profile name, memory GB).
MIG_SLICES = {40: [("1g.5gb", 5), ("2g.10gb", 10), ("3g.20gb", 20), ("7g.40gb", 40)],
              80: [("1g.10gb", 10), ("2g.20gb", 20), ("3g.40gb", 40), ("7g.80gb", 80)]}


@dataclass(frozen=True)
class TrialResources:
    """What one Train run asks Ray for."""

    use_gpu: bool
    num_workers: int
    resources_per_worker: dict[str, float]
    accelerator_type: str | None = None
    cuda_memory_fraction: float | None = None  # torch.cuda.set_per_process_memory_fraction in each worker
    gradient_checkpointing: bool = False
    notes: list[str] = field(default_factory=list)

    def per_worker(self) -> dict[str, float]:
        """One worker's request as Ray sees it: its resources plus ``accelerator_type:X`` (Ray asks 0.001 of it)."""
        request = dict(self.resources_per_worker)
        if self.accelerator_type:
            request[f"{ACCELERATOR_PREFIX}{self.accelerator_type}"] = ACCELERATOR_SHARE
        return request

    def total(self) -> dict[str, float]:
        return {k: v * self.num_workers for k, v in self.per_worker().items()}


def _cpu(p: HardwareProfile, n: int, cpus_per_worker: int) -> TrialResources:
    return TrialResources(False, n, {"CPU": cpus_per_worker}, gradient_checkpointing=p.gradient_checkpointing,
                          notes=[f"{p.name} mapped to CPU"])


def _fraction(card_gb: int):
    def resources(p: HardwareProfile, n: int, cpus_per_worker: int) -> TrialResources:
        if p.memory_gb > card_gb:
            raise ConfigError(f"profile {p.name} needs {p.memory_gb} GB, more than one {card_gb} GB card; use the "
                              f"a100-80g backend or whole GPUs")
        frac = math.ceil(p.memory_gb / card_gb * 8) / 8  # eighths: Ray accounts fractions exactly at this grain
        if frac < 1 and n > 1:
            raise ConfigError(f"profile {p.name} as a fraction ({frac}) of a GPU cannot run {n} workers: fractional "
                              f"GPUs are logical and break multi-worker NCCL; use num_workers=1 or whole GPUs")
        return TrialResources(True, n, {"CPU": p.cpus, "GPU": frac}, accelerator_type=f"A100-{card_gb}G",
                              cuda_memory_fraction=frac if frac < 1 else None,
                              gradient_checkpointing=p.gradient_checkpointing,
                              notes=[f"{p.memory_gb} GB of a {card_gb} GB A100 → {frac} GPU"])
    return resources


def _whole(p: HardwareProfile, n: int, cpus_per_worker: int) -> TrialResources:
    return TrialResources(True, n, {"CPU": p.cpus, "GPU": 1}, gradient_checkpointing=p.gradient_checkpointing)


def _mig(card_gb: int):
    def resources(p: HardwareProfile, n: int, cpus_per_worker: int) -> TrialResources:
        fitting = [s for s, mem in MIG_SLICES[card_gb] if mem >= p.memory_gb]
        if not fitting:
            raise ConfigError(f"profile {p.name} needs {p.memory_gb} GB; no MIG slice of a {card_gb} GB A100 fits")
        return TrialResources(False, n, {"CPU": p.cpus, f"mig-{fitting[0]}": 1},
                              gradient_checkpointing=p.gradient_checkpointing,
                              notes=[f"KubeRay worker group exposing resource mig-{fitting[0]}"])
    return resources


BACKENDS: Registry[Callable[[HardwareProfile, int, int], TrialResources]] = Registry("backend", "backend", {
    "cpu": _cpu, "a100-40g": _fraction(40), "a100-80g": _fraction(80), "whole-gpu": _whole, "mig-40g": _mig(40),
    "mig-80g": _mig(80)})


def trial_resources(profile: str, backend: str, num_workers: int = 1, cpus_per_worker: int = 1) -> TrialResources:
    if num_workers < 1:
        raise ConfigError("num_workers: must be >= 1")
    resources = BACKENDS[backend]  # an unknown name raises ConfigError naming the choices
    return resources(PROFILES[profile], num_workers, cpus_per_worker)



def profile_table() -> list[str]:
    """One line per (backend, profile): the per-worker Ray request and notes, or why the backend refuses it."""
    lines = []
    for backend in BACKENDS:
        for name in PROFILES:
            try:
                r = trial_resources(name, backend)
                lines.append(f"{backend:10} {name:9} {r.resources_per_worker} {r.notes}")
            except ConfigError as e:
                lines.append(f"{backend:10} {name:9} refused: {e}")
    return lines
