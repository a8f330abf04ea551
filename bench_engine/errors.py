"""Errors raised by the bench engine. Each message names the bad value and how to fix it."""

from db.errors import TranslatableError


class BenchError(TranslatableError):
    """Base class for invalid input to the bench engine; the CLI exits with code 2 on it."""


class UnknownModelError(BenchError):
    """The model name is neither a named PTS Advisor model nor a timm architecture."""


class WeightsError(BenchError):
    """A weights file is missing, unreadable, unsafe to load, or does not fit the architecture."""


class DataError(BenchError):
    """A dataset is missing, empty, or has no images the engine can read."""


class InvalidConfigError(BenchError):
    """A pruning configuration value (sparsity, criterion, pattern, ...) is invalid."""
