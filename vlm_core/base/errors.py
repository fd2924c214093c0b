"""The project's error types. Every error a user can cause or fix derives from :class:`VlmSweepError`; its message
already says what is wrong (the file, row, key or path) and how to fix it, so ``vlm-sweep`` prints it in one line,
without a traceback, and exits with 2. Each also keeps the builtin base it had (``ValueError``, ``RuntimeError``,
...), so ``except ValueError`` around config parsing still works.

The types used across modules live here; a module's own refinements (``images.ImageError``,
``feature_cache.FeatureCacheError``, ``conversation.SampleSkipped``, ``data_pipeline.records.SourceError``,
``data_pipeline.sampling.SamplingError``, ``sweeps.driver.SweepInterrupted``, ...) derive from these next to the
code that raises them.
"""

from __future__ import annotations


class VlmSweepError(Exception):
    """An error whose message names what is wrong and the fix (printed without a traceback by the CLI)."""


class ConfigError(VlmSweepError, ValueError):
    """A config value is wrong; the message names the field and the fix."""


class DataError(VlmSweepError, ValueError):
    """A training-time data file cannot be read; the message names the file (and line) and the fix."""


class FormatError(VlmSweepError, ValueError):
    """The conversation cannot be formatted; the message says why."""


class CheckpointError(VlmSweepError, RuntimeError):
    """A checkpoint is missing, incomplete or corrupt; the message names the path."""


class ModelSourceError(VlmSweepError, FileNotFoundError):
    """A model path or hub id cannot be resolved; the message names it and the fix."""


class AssetError(VlmSweepError, RuntimeError):
    """An asset is missing, cannot be converted or cannot be fetched; the message names it and the fix."""


class OutputError(VlmSweepError, RuntimeError):
    """An output folder cannot be written or is too full; the message names the folder and the fix."""


class RayUnreachable(VlmSweepError, ConnectionError):
    """``RAY_ADDRESS`` names a cluster that does not answer."""


class NonFiniteLoss(VlmSweepError, FloatingPointError):
    """The loss became NaN/inf; training stops instead of continuing on garbage."""

    def __init__(self, message: str, step: int = 0, epoch: float = 0.0):
        super().__init__(message)
        self.step, self.epoch = step, epoch
