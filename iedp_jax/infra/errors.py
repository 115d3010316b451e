"""The user-error family: mistakes a user fixes by changing a path, a flag or an input.

An entry point prints such an error as its one sentence (:func:`iedp_jax.infra.cli.run`);
anything else is a bug and keeps its traceback. Each class also derives from the built-in
exception it replaces, so ``except ValueError`` around library calls keeps working.
"""

from __future__ import annotations


class UserError(Exception):
    """Base: the message is one sentence that says what to do."""


class ConfigError(UserError, ValueError):
    """A config value, flag or environment variable is wrong."""


class DatasetError(UserError, FileNotFoundError):
    """A dataset folder or prepared dataset is missing or not in the expected layout."""


class InputError(UserError, ValueError):
    """A user-supplied file (image, caption file, checkpoint) cannot be used."""


class NonFiniteLoss(UserError, FloatingPointError):
    """Training diverged (the loss became NaN or infinite)."""


class MissingDependency(UserError, ImportError):
    """An optional dependency needed by the chosen path is not installed."""


class MemoryPlanError(ConfigError, MemoryError):
    """A run would not fit in the memory of its devices or host (refused before it starts)."""
