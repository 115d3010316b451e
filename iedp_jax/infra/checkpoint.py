"""Orbax checkpoints of the train state and the data iterator's position, written atomically.

Orbax writes each step into a temporary folder and renames it when complete, so a run killed
mid-save leaves the previous checkpoint intact and the partial one is ignored on restore.
Restoring takes the abstract state with its shardings, so arrays come back born sharded.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp

PyTree = Any


class Checkpointer:
    """Saves every ``every`` steps (and when forced), keeps ``keep``, restores the latest.

    A checkpoint holds three items: ``state`` (the sharded train state, written by all processes
    together), ``data`` (grain's iterator state, one JSON file per process) and ``meta`` (the
    data order's seed, size and next step, written once).
    """

    def __init__(self, directory: str | os.PathLike, every: int, keep: int = 3) -> None:
        if every <= 0:
            raise ValueError(f"train.ckpt_every must be positive, got {every}.")
        options = ocp.CheckpointManagerOptions(save_interval_steps=every, max_to_keep=keep, create=True,
                                               cleanup_tmp_directories=True)
        self.directory = Path(directory).absolute()
        self.manager = ocp.CheckpointManager(self.directory, options=options,
                                             item_names=("state", "data", "meta"))

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: PyTree, data_iterator: Any, meta: dict, force: bool = False) -> bool:
        """Starts an (asynchronous) save if ``step`` is due or ``force``; True when it saves."""
        return self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), data=grain.checkpoint.CheckpointSave(data_iterator),
            meta=ocp.args.JsonSave(meta)), force=force)

    def restore(self, step: int, abstract_state: PyTree) -> tuple[PyTree, dict]:
        """The state at ``step`` with the shardings of ``abstract_state`` (ShapeDtypeStructs),
        and the data ``meta`` record."""
        out = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
        return out["state"], dict(out["meta"] or {})

    def restore_data(self, step: int, data_iterator: Any) -> bool:
        """Sets ``data_iterator`` to its saved state at ``step``; False when this checkpoint has no
        state for this process (it was written by a different number of processes)."""
        own = self.directory / str(step) / "data" / (
            f"process_{jax.process_index()}-of-{jax.process_count()}.json")
        if not own.is_file():
            return False
        self.manager.restore(step, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(data_iterator)))
        return True

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def abstract_like(tree: PyTree) -> PyTree:
    """``ShapeDtypeStruct``s with shardings, the restore target for ``tree``."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)
