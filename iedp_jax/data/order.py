"""The training order shared by every dataset source: a pure function of (seed, step).

Global row ``i`` of step ``s`` is example ``perm_e[(s * B + i) % n]`` of the epoch
``e = (s * B + i) // n`` permutation, so a resumed run sees exactly the batches an uninterrupted
run would, and each process can compute its own rows without talking to the others.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from iedp_jax.infra.errors import ConfigError


class EpochOrder:
    """Mixin: needs ``self.seed`` and ``self.num_train``; provides :meth:`train_indices` and the
    iterator state saved in checkpoints (the next step; the seed is checked on restore)."""

    seed: int
    num_train: int
    _perm_cache: dict[int, np.ndarray] | None = None

    def _perm(self, epoch: int) -> np.ndarray:
        cache = self._perm_cache  # read once: decoding threads may replace it concurrently
        if cache and epoch in cache:
            return cache[epoch]
        perm = np.random.default_rng((self.seed, epoch)).permutation(self.num_train)
        self._perm_cache = {epoch: perm}
        return perm

    def train_indices(self, step: int, batch_size: int) -> np.ndarray:
        """Example indices of the global batch of ``step``."""
        return np.array([self.train_index(step, row, batch_size) for row in range(batch_size)])

    def train_index(self, step: int, row: int, batch_size: int) -> int:
        """Example index of global row ``row`` of the batch of ``step``."""
        flat = int(step) * int(batch_size) + int(row)
        return int(self._perm(flat // self.num_train)[flat % self.num_train])

    def state(self, next_step: int) -> dict[str, Any]:
        """What a checkpoint records about the order (beside grain's iterator state)."""
        return {"next_step": int(next_step), "seed": self.seed, "num_train": self.num_train}

    def restore(self, state: dict[str, Any]) -> None:
        """Checks that a checkpoint's order is this run's order."""
        if state and state.get("seed", self.seed) != self.seed:
            raise ConfigError(f"the checkpoint was written with seed {state['seed']}, this run uses "
                             f"{self.seed}: keep the seed to resume, or use a new --workdir.")
        if state and state.get("num_train", self.num_train) != self.num_train:
            raise ConfigError(f"the checkpoint was written for {state['num_train']} training examples, this "
                             f"dataset has {self.num_train}: resume on the same data, or use a new --workdir.")
