"""What every room of vlm_core uses: the error types (``errors``), named choices (``registry``), hashes
(``hashing``), atomic writes and output checks (``outputs``), the console and log files (``logs``), the device rule
(``devices``) and connecting to Ray (``ray_env``)."""

from __future__ import annotations

from .devices import cap_cuda_memory, pick_device
from .errors import (
    AssetError,
    CheckpointError,
    ConfigError,
    DataError,
    FormatError,
    ModelSourceError,
    NonFiniteLoss,
    OutputError,
    RayUnreachable,
    VlmSweepError,
)
from .registry import Registry

__all__ = ["AssetError", "CheckpointError", "ConfigError", "DataError", "FormatError", "ModelSourceError",
           "NonFiniteLoss", "OutputError", "RayUnreachable", "Registry", "VlmSweepError", "cap_cuda_memory",
           "pick_device"]
