"""The training input pipeline: a grain dataset over this process's rows of every step.

Element ``j`` of process ``p`` is global row ``rows.start + j % per`` of step ``j // per``
(``per`` = rows per process), produced by ``source.train_example(step, row, batch_size)``, which
is a pure function of ``(seed, step, row)``. Grain decodes and augments elements on
``num_threads`` threads ahead of the train step and stacks them into this process's share of the
global batch. The iterator's state (``{'next_index': ...}``) goes into the orbax checkpoint with
grain's handler, one file per process, so a resumed run continues the exact sample order; since
the order is a function of the step alone, :func:`train_iterator` can also start at any step
(used when the process count changed between runs).
"""

from __future__ import annotations

from typing import Any, Protocol

import grain
import numpy as np

from iedp_jax.infra.threads import default_threads


class TrainSource(Protocol):
    """What the pipeline needs from a dataset source."""

    def train_example(self, step: int, row: int, batch_size: int) -> dict[str, np.ndarray]: ...


def train_iterator(source: TrainSource, batch_size: int, rows: slice, num_steps: int,
                   start_step: int = 0, num_threads: int | None = None,
                   prefetch_batches: int = 2) -> Any:
    """A grain iterator yielding this process's rows of the batches of steps ``start_step ..
    num_steps - 1`` (dicts of stacked NumPy arrays).

    Args:
      source: gives ``train_example(step, row, batch_size)``.
      batch_size: the global batch size.
      rows: this process's rows of each global batch (:func:`iedp_jax.infra.sharding.process_rows`).
      num_steps: the length of the run in steps (the iterator ends there).
      start_step: the first step to yield.
      num_threads: decoding threads (None: :func:`default_threads`; 0 decodes in the caller).
      prefetch_batches: how many batches grain keeps decoded ahead of the consumer.
    """
    first, last = rows.start or 0, rows.stop if rows.stop is not None else batch_size
    per = last - first
    if per <= 0 or last > batch_size:
        raise ValueError(f"rows {rows} are not a slice of a batch of {batch_size}.")
    if not 0 <= start_step <= num_steps:
        raise ValueError(f"start step {start_step} is outside the run's {num_steps} steps.")
    threads = default_threads() if num_threads is None else int(num_threads)

    def element(j: int) -> dict[str, np.ndarray]:
        step, r = divmod(int(j), per)
        return source.train_example(step, first + r, batch_size)

    options = grain.ReadOptions(num_threads=threads, prefetch_buffer_size=max(1, prefetch_batches * per))
    ds = grain.MapDataset.range(num_steps * per).map(element)
    it = iter(ds.to_iter_dataset(options).batch(per, drop_remainder=True))
    if start_step:
        it.set_state(step_state(it, start_step, per))
    return it


def step_state(it: Any, step: int, per: int) -> dict[str, Any]:
    """The iterator state that yields ``step`` next (same structure as ``it.get_state()``)."""
    state = it.get_state()
    return _replace_index(state, step * per)


def _replace_index(state: Any, index: int) -> Any:
    if isinstance(state, dict):
        return {k: (index if k == "next_index" else _replace_index(v, index)) for k, v in state.items()}
    return state


def next_step(state: dict[str, Any], per: int) -> int:
    """The step an iterator in ``state`` yields next."""
    index = _find_index(state)
    if index is None or index % per:
        raise ValueError(f"the saved data iterator state {state} does not sit on a batch boundary "
                         f"of {per} rows: resume with the same batch size and process count.")
    return index // per


def _find_index(state: Any) -> int | None:
    if isinstance(state, dict):
        if "next_index" in state:
            return int(state["next_index"])
        for v in state.values():
            found = _find_index(v)
            if found is not None:
                return found
    return None
