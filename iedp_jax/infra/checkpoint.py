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
import jax.numpy as jnp
import orbax.checkpoint as ocp
from absl import logging

from iedp_jax.infra.errors import ConfigError, InputError
from iedp_jax.infra.sharding import replicated

PyTree = Any


ITEMS = ("state", "data", "meta")


def _manager(directory: Path, options: ocp.CheckpointManagerOptions) -> ocp.CheckpointManager:
    """The one orbax layout: items ``state``, ``data`` and ``meta`` under step folders."""
    return ocp.CheckpointManager(directory, options=options, item_names=ITEMS)


class Checkpointer:
    """Saves when told (the trainer decides the cadence), keeps ``keep``, restores the latest.

    A checkpoint holds three items: ``state`` (the sharded train state, written by all processes
    together), ``data`` (grain's iterator state, one JSON file per process) and ``meta`` (the
    data order's seed, size and next step, written once).
    """

    def __init__(self, directory: str | os.PathLike, every: int, keep: int = 3) -> None:
        if every <= 0:
            raise ConfigError(f"train.ckpt_every must be positive, got {every}.")
        self.directory = Path(directory).absolute()
        self.manager = _manager(self.directory, ocp.CheckpointManagerOptions(
            save_interval_steps=every, max_to_keep=keep, create=True, cleanup_tmp_directories=True))

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


class BestCheckpointer:
    """Keeps the one checkpoint whose validation ``metric`` is best (orbax's ``best_fn``), in the
    same layout as :class:`Checkpointer` (item ``state`` = ``{"step", "params"}``), so
    :func:`restore_params` and ``--checkpoint DIR/STEP`` read it. Its metrics are saved with it, so
    a resumed run keeps comparing against the best so far."""

    def __init__(self, directory: str | os.PathLike, metric: str, mode: str) -> None:
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {mode!r}.")
        self.directory, self.metric = Path(directory).absolute(), metric
        self.manager = _manager(self.directory, ocp.CheckpointManagerOptions(
            max_to_keep=1, best_fn=lambda m: m[metric], best_mode=mode, create=True, cleanup_tmp_directories=True))

    def save(self, step: int, state: PyTree, metrics: dict[str, float]) -> None:
        """Offers the params of ``step`` with its validation ``metrics``; orbax keeps the best."""
        self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave({"step": state["step"], "params": state["params"]})),
            metrics={self.metric: float(metrics[self.metric])}, force=True)

    def best_step(self) -> int | None:
        return self.manager.best_step()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def abstract_like(tree: PyTree) -> PyTree:
    """``ShapeDtypeStruct``s with shardings, the restore target for ``tree``."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


def _step_folders(folder: Path) -> list[int]:
    return sorted(int(p.name) for p in folder.iterdir() if p.is_dir() and p.name.isdigit())


def resolve_checkpoint(workdir: str | os.PathLike, checkpoint: str | os.PathLike | None = None
                       ) -> tuple[Path, int]:
    """``(checkpoints folder, step)``: the latest step of ``workdir/checkpoints``, or ``checkpoint``
    (a step folder such as ``.../checkpoints/2000``, or a folder of step folders). A missing
    folder or one without a checkpoint is a ``FileNotFoundError`` of one sentence."""
    workdir = Path(workdir)
    default = workdir / "checkpoints"
    if checkpoint:
        path = Path(checkpoint).expanduser()
        if not path.is_dir():
            raise InputError(
                f"the checkpoint folder {path} does not exist: pass a step folder such as {default / '2000'}, "
                f"or leave --checkpoint out to use the latest checkpoint in {default}.")
        if path.name.isdigit():
            return path.parent, int(path.name)
        steps = _step_folders(path)
        if not steps:
            raise InputError(f"{path} is neither a checkpoint step folder (named by its step, e.g. "
                                    f"{path / '2000'}) nor a folder holding them.")
        return path, steps[-1]
    steps = _step_folders(default) if default.is_dir() else []
    if not steps:
        raise InputError(f"there is no checkpoint in {default}: train into this workdir first "
                                "or pass --checkpoint=PATH/TO/checkpoints/STEP.")
    return default, steps[-1]


def restore_params(directory: str | os.PathLike, step: int, abstract_params: PyTree) -> tuple[PyTree, int]:
    """The trained parameters of ``step`` (born with the shardings of ``abstract_params``) and
    the step counter, read through a read-only orbax manager.

    Only ``params`` and ``step`` are read (orbax partial restore): the AdamW moments, twice the
    parameters' size, never reach a device. Unlike :class:`Checkpointer`
    the manager never cleans temporary folders, so it is safe next to a run still saving there.
    """
    options = ocp.CheckpointManagerOptions(read_only=True, create=False, save_interval_steps=0,
                                           max_to_keep=None)
    verbosity = logging.get_verbosity()
    logging.set_verbosity(logging.ERROR)  # orbax warns "Given directory is read only" on every read
    try:
        manager = _manager(Path(directory).absolute(), options)
    finally:
        logging.set_verbosity(verbosity)
    mesh = jax.tree.leaves(abstract_params)[0].sharding.mesh
    target = {"step": jax.ShapeDtypeStruct((), jnp.int32, sharding=replicated(mesh)),
              "params": abstract_params}
    try:
        out = manager.restore(int(step), args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
            item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target), partial_restore=True)))
    finally:
        manager.close()
    return out["state"]["params"], int(jax.device_get(out["state"]["step"]))
