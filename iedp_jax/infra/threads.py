"""How many host threads decode data: one rule for every pool (training, evaluation, DiffSegmenter)."""

from __future__ import annotations

import os

from iedp_jax.infra.errors import ConfigError


def default_threads() -> int:
    """Decoding threads when the config leaves ``data.num_workers`` at -1."""
    return max(1, min(16, os.cpu_count() or 1))


def config_threads(num_workers: int) -> int:
    """Threads for ``data.num_workers``: -1 = :func:`default_threads`, 0 = decode inline."""
    n = int(num_workers)
    if n < -1:
        raise ConfigError(f"data.num_workers must be -1 (one per core, at most 16), 0 or more, got {n}.")
    return default_threads() if n == -1 else n
