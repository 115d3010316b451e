"""Orbax checkpoints of the train state and the data iterator's position, written atomically.

Orbax writes each step into a temporary folder and renames it when complete, so a run killed
mid-save leaves the previous checkpoint intact and the partial one is ignored on restore.
Restoring takes the abstract state with its shardings, so arrays come back born sharded.

Once orbax has finalised a step, process 0 records the size of every file in it
(``STEP/iedp_manifest.json``). A step whose files no longer match (truncated or lost, e.g. by a
full disk or a partial copy) is damaged: training skips it with a warning naming the file and
resumes from the previous step, keeping it as ``STEP.damaged`` (nothing is deleted but by
orbax's keep-N policy). Folders may be ``gs://`` URLs (:mod:`iedp_jax.infra.paths`).
"""

from __future__ import annotations

import json
import os
from typing import Any

import grain
import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from iedp_jax.infra.distributed import barrier
from iedp_jax.infra.errors import ConfigError, InputError
from iedp_jax.infra.logs import log_line
from iedp_jax.infra.paths import as_path
from iedp_jax.infra.sharding import replicated

PyTree = Any


ITEMS = ("state", "data", "meta")
MANIFEST = "iedp_manifest.json"


def _files(step_dir: epath.Path) -> dict[str, int]:
    """Every file under ``step_dir`` (the manifest excepted) and its size in bytes."""
    out, todo = {}, [step_dir]
    while todo:  # (epath refuses rglob on cloud paths; a step has a few dozen files)
        for f in todo.pop().iterdir():
            if f.is_dir():
                todo.append(f)
            elif f.name != MANIFEST:
                out[str(f.relative_to(step_dir))] = f.stat().length
    return out


def write_manifest(step_dir: epath.Path) -> None:
    """Records the size of every file of a finalised step (atomically: a temp file, renamed)."""
    tmp = step_dir / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps({"files": _files(step_dir)}, sort_keys=True))
    tmp.rename(step_dir / MANIFEST)


def damage(step_dir: epath.Path) -> str | None:
    """What is wrong with a step folder (a file missing, or of another size than when it was
    saved), None when it matches its manifest or has none (saved by an older release, or the
    run died between orbax's commit and the manifest) but holds orbax's ``state/_METADATA``: a
    digit-named folder without it (a partial copy, another tool's folder) is damaged too."""
    manifest = step_dir / MANIFEST
    if not manifest.exists():  # no sizes to compare: at least orbax's own record of the state must be there
        needed = step_dir / "state" / "_METADATA"
        if not needed.exists():
            return f"{needed} is missing: not a complete checkpoint, but a partial copy or another tool's folder"
        return None
    try:
        expected = json.loads(manifest.read_text())["files"]
    except (ValueError, KeyError, TypeError):
        return f"its manifest {manifest} is unreadable"
    for name, size in sorted(expected.items()):
        f = step_dir / name
        if not f.exists():
            return f"{f} is missing"
        got = f.stat().length
        if got != size:
            return f"{f} has {got} bytes, {size} when saved"
    return None


def _manager(directory: epath.Path, options: ocp.CheckpointManagerOptions,
             host_gb: float = 0.0) -> ocp.CheckpointManager:
    """The one orbax layout: items ``state``, ``data`` and ``meta`` under step folders.

    ``host_gb > 0`` bounds the bytes of the state that orbax holds on the host while it writes
    (its ``save_concurrent_gb``, at least 1); 0 keeps orbax's default (96 GB: in practice the
    whole state)."""
    if host_gb <= 0:
        return ocp.CheckpointManager(directory, options=options, item_names=ITEMS)
    handlers = {"state": ocp.StandardCheckpointHandler(save_concurrent_gb=max(1, int(host_gb))),
                "data": grain.checkpoint.CheckpointHandler(), "meta": ocp.JsonCheckpointHandler()}
    return ocp.CheckpointManager(directory, options=options, item_handlers=handlers)


class Checkpointer:
    """Saves when told (the trainer decides the cadence), keeps ``keep``, restores the latest.

    A checkpoint holds three items: ``state`` (the sharded train state, written by all processes
    together), ``data`` (grain's iterator state, one JSON file per process) and ``meta`` (the
    data order's seed, size and next step, written once). ``host_gb`` bounds what orbax keeps of
    the state on the host while it writes (:func:`_manager`).
    """

    def __init__(self, directory: str | os.PathLike, every: int, keep: int = 3, host_gb: float = 0.0) -> None:
        if every <= 0:
            raise ConfigError(f"train.ckpt_every must be positive, got {every}.")
        self.directory = as_path(directory)
        self._saved: set[int] = set()  # steps this run saved (only these get a manifest)
        self.manager = _manager(self.directory, ocp.CheckpointManagerOptions(
            save_interval_steps=every, max_to_keep=keep, create=True, cleanup_tmp_directories=True,
            async_options=ocp.AsyncOptions(post_finalization_callback=self._write_manifests)), host_gb)

    def _write_manifests(self) -> None:
        """After orbax finalises a save (its background thread): manifests for this run's steps."""
        if jax.process_index() != 0:
            return
        for step in sorted(self._saved):
            step_dir = self.directory / str(step)
            try:
                if step_dir.is_dir() and not (step_dir / MANIFEST).exists():
                    write_manifest(step_dir)
            except OSError as e:  # a manifest is a safeguard: never fail a run over it
                log_line(f"warning: could not write {step_dir / MANIFEST}: {e}")

    def latest_step(self) -> int | None:
        """The newest undamaged step (None when there is none).

        A damaged step (see :func:`damage`) is skipped with a warning naming the file, and
        process 0 renames it ``STEP.damaged`` so that this run can save that step again.
        """
        damaged = []
        for step in sorted(self.manager.all_steps(), reverse=True):
            why = damage(self.directory / str(step))
            if why is None:
                break
            damaged.append((step, why))
        if not damaged:
            return self.manager.latest_step()
        barrier("checked checkpoints")  # every process has read the folders before any is moved
        if jax.process_index() == 0:
            for step, why in damaged:
                kept = _keep_aside(self.directory / str(step))
                log_line(f"warning: the checkpoint of step {step} is damaged ({why}): skipped, kept as {kept}")
        barrier("moved damaged checkpoints")
        self.manager.reload()
        return self.manager.latest_step()

    def save(self, step: int, state: PyTree, data_iterator: Any, meta: dict, force: bool = False) -> bool:
        """Starts an (asynchronous) save if ``step`` is due or ``force``; True when it saves."""
        self._saved.add(int(step))  # before: the finalisation callback may run before save returns
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
        self._write_manifests()
        self.manager.close()


def _keep_aside(step_dir: epath.Path) -> epath.Path:
    """Renames a damaged step folder out of orbax's sight (``STEP.damaged``, numbered if taken)."""
    target, n = step_dir.with_name(f"{step_dir.name}.damaged"), 1
    while target.exists():
        n += 1
        target = step_dir.with_name(f"{step_dir.name}.damaged{n}")
    step_dir.rename(target)
    return target


class BestCheckpointer:
    """Keeps the one checkpoint whose validation ``metric`` is best (orbax's ``best_fn``), in the
    same layout as :class:`Checkpointer` (item ``state`` = ``{"step", "params"}``), so
    :func:`restore_params` and ``--checkpoint DIR/STEP`` read it. Its metrics are saved with it, so
    a resumed run keeps comparing against the best so far."""

    def __init__(self, directory: str | os.PathLike, metric: str, mode: str, host_gb: float = 0.0) -> None:
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {mode!r}.")
        self.directory, self.metric = as_path(directory), metric
        self.manager = _manager(self.directory, ocp.CheckpointManagerOptions(
            max_to_keep=1, best_fn=lambda m: m[metric], best_mode=mode, create=True, cleanup_tmp_directories=True),
            host_gb)

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


def _step_folders(folder: epath.Path) -> list[int]:
    return sorted(int(p.name) for p in folder.iterdir() if p.is_dir() and p.name.isdigit())


def _latest_undamaged(folder: epath.Path, steps: list[int]) -> int | None:
    """The newest of ``steps`` in ``folder`` that is not damaged; each damaged one is a warning."""
    for step in reversed(steps):
        why = damage(folder / str(step))
        if why is None:
            return step
        log_line(f"warning: the checkpoint of step {step} is damaged ({why}): skipped")
    return None


def resolve_checkpoint(workdir: str | os.PathLike, checkpoint: str | os.PathLike | None = None
                       ) -> tuple[epath.Path, int]:
    """``(checkpoints folder, step)``: the latest undamaged step of ``workdir/checkpoints``, or
    ``checkpoint`` (a step folder such as ``.../checkpoints/2000``, or a folder of step folders).
    A missing folder, one without a checkpoint, or a damaged step folder is an ``InputError`` of
    one sentence."""
    default = as_path(workdir) / "checkpoints"
    if checkpoint:
        path = as_path(checkpoint)
        if not path.is_dir():
            raise InputError(
                f"the checkpoint folder {path} does not exist: pass a step folder such as {default / '2000'}, "
                f"or leave --checkpoint out to use the latest checkpoint in {default}.")
        if path.name.isdigit():
            if why := damage(path):
                raise InputError(f"the checkpoint {path} is damaged ({why}): pass an earlier step folder.")
            return path.parent, int(path.name)
        steps = _step_folders(path)
        if not steps:
            raise InputError(f"{path} is neither a checkpoint step folder (named by its step, e.g. "
                                    f"{path / '2000'}) nor a folder holding them.")
        folder = path
    else:
        steps, folder = (_step_folders(default) if default.is_dir() else []), default
        if not steps:
            raise InputError(f"there is no checkpoint in {default}: train into this workdir first "
                             "or pass --checkpoint=PATH/TO/checkpoints/STEP.")
    step = _latest_undamaged(folder, steps)
    if step is None:
        raise InputError(f"every checkpoint in {folder} is damaged (see the warnings above): train again or "
                         "restore the folder from a copy.")
    return folder, step


def _saved_shapes(state_dir: epath.Path) -> dict[str, tuple[int, ...]] | None:
    """``{'['unet'][...]': shape}`` of the ``params`` saved in a step's ``state`` item, from
    orbax's metadata alone (None when it cannot be read: the restore then decides)."""
    try:
        tree = ocp.PyTreeCheckpointHandler().metadata(state_dir)
        tree = getattr(tree, "tree", tree)["params"]
    except Exception:  # an older layout or a damaged folder: leave it to the restore
        return None
    return {jax.tree_util.keystr(k): tuple(v.shape) for k, v in jax.tree_util.tree_leaves_with_path(tree)
            if hasattr(v, "shape")}


def check_shapes(state_dir: str | os.PathLike, abstract_params: PyTree, fix: str) -> None:
    """An ``InputError`` naming the first parameter whose saved shape differs from the model's
    (both shapes), or that one of them lacks, before orbax is asked to restore it: a checkpoint
    of another run (another model or class count). ``fix`` ends the sentence."""
    state_dir = as_path(state_dir)
    saved = _saved_shapes(state_dir)
    if saved is None:
        return
    want = {jax.tree_util.keystr(k): tuple(v.shape) for k, v in jax.tree_util.tree_leaves_with_path(abstract_params)}
    where = state_dir.parent
    for name in sorted(set(saved) | set(want)):
        if saved.get(name) == want.get(name):
            continue
        if name not in saved:
            why = f"it has no parameter params{name} (shape {want[name]} in this config's model)"
        elif name not in want:
            why = f"its parameter params{name} (shape {saved[name]}) is not in this config's model"
        else:
            why = f"its parameter params{name} has shape {saved[name]}, this config's model {want[name]}"
        raise InputError(f"the checkpoint {where} is of another model ({why}): {fix}.")


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
        manager = _manager(as_path(directory), options)
    finally:
        logging.set_verbosity(verbosity)
    check_shapes(as_path(directory) / str(int(step)) / "state", abstract_params,
                 "pass a checkpoint of this workdir's run, or the workdir (and config) of the run that saved it")
    mesh = jax.tree.leaves(abstract_params)[0].sharding.mesh
    target = {"step": jax.ShapeDtypeStruct((), jnp.int32, sharding=replicated(mesh)),
              "params": abstract_params}
    try:
        out = manager.restore(int(step), args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
            item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target), partial_restore=True)))
    finally:
        manager.close()
    return out["state"]["params"], int(jax.device_get(out["state"]["step"]))
