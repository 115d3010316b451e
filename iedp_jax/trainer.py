"""The IEDP trainer (what ``python -m iedp_jax.train`` runs).

One jitted, sharded train step (``('data', 'fsdp')`` mesh, donated state) that compiles once,
orbax checkpoints that resume automatically from the workdir (the data order too), TensorBoard
events and ``metrics.jsonl``, a progress bar, and at the end the quick centred-crop evaluation
(:func:`iedp_jax.eval.runner.quick_eval`) written to ``results.json``.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import optax
from ml_collections import ConfigDict
from tqdm.auto import tqdm

from iedp_jax.build import abstract_params, build_model
from iedp_jax.data.catalog import make_dataset
from iedp_jax.data.pipeline import next_step, step_state, train_iterator
from iedp_jax.data.sources import DataSource
from iedp_jax.eval.runner import HEADLINE, quick_eval
from iedp_jax.infra import memory, sharding
from iedp_jax.infra.checkpoint import Checkpointer, abstract_like
from iedp_jax.infra.compile import Synchronized
from iedp_jax.infra.errors import ConfigError, NonFiniteLoss
from iedp_jax.infra.logs import MetricWriter, log_line, write_results
from iedp_jax.infra.threads import config_threads
from iedp_jax.model import IEDP
from iedp_jax.optim import make_optimizer
from iedp_jax.run_files import write_run_files

PyTree = Any


def make_train_step(model: IEDP, tx, mesh, state_sh: PyTree, frozen_sh: PyTree, batch_keys: tuple[str, ...],
                    schedule, seed: int):
    """The jitted train step ``(state, frozen, batch) -> (state, metrics)``; state is donated."""
    base_rng = jax.random.PRNGKey(seed)

    def step_fn(state: PyTree, frozen: PyTree, batch: Mapping[str, jax.Array]):
        rng = jax.random.fold_in(base_rng, state["step"])
        (_, metrics), grads = jax.value_and_grad(model.loss, has_aux=True)(state["params"], frozen, batch, rng)
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        params = jax.tree.map(lambda p, u: (p + u).astype(p.dtype), state["params"], updates)
        finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(p)) for p in jax.tree.leaves(params)]))
        metrics = dict(metrics, grad_norm=optax.tree.norm(grads), lr=schedule(state["step"]),
                       params_finite=finite.astype(jnp.float32))
        return {"step": state["step"] + 1, "params": params, "opt_state": opt_state}, metrics

    batch_sh = {k: sharding.batch_sharding(mesh) for k in batch_keys}
    return Synchronized(jax.jit(step_fn, in_shardings=(state_sh, frozen_sh, batch_sh),
                                out_shardings=(state_sh, sharding.replicated(mesh)), donate_argnums=(0,)),
                        "train step")


def init_state(model: IEDP, tx, mesh, unet_params: PyTree, frozen: PyTree, image_hw: tuple[int, int],
               seed: int) -> tuple[PyTree, PyTree]:
    """The initial train state, born sharded, and its shardings."""

    def make(unet_params, frozen):
        heads = model.init_head_params(jax.random.PRNGKey(seed + 1), image_hw, unet_params, frozen)
        params = {"unet": unet_params, **heads}
        return {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params)}

    abstract = jax.eval_shape(make, unet_params, frozen)
    state_sh = sharding.tree_shardings(mesh, abstract)
    frozen_sh = sharding.tree_shardings(mesh, frozen)
    unet_sh = state_sh["params"]["unet"]
    unet_params = sharding.put(unet_params, unet_sh)  # host arrays -> global arrays (multi-host safe)
    state = jax.jit(make, in_shardings=(unet_sh, frozen_sh), out_shardings=state_sh)(unet_params, frozen)
    return state, state_sh


def _check_finite(step: int, metrics: Mapping[str, Any], last_saved: int | None) -> dict[str, float]:
    m = {k: float(v) for k, v in jax.device_get(metrics).items()}
    if not (math.isfinite(m["loss"]) and math.isfinite(m["grad_norm"]) and m.pop("params_finite") == 1.0):
        kept = f"the checkpoint of step {last_saved} is kept" if last_saved else "no checkpoint was written"
        raise NonFiniteLoss(f"loss={m['loss']} grad_norm={m['grad_norm']} at step {step}: training stopped and "
                            f"{kept}; lower optim.lr or set optim.clip_grad_norm, then rerun to resume.")
    return m


@dataclasses.dataclass
class Trainer:
    """Everything a training run holds: data, model, frozen weights, sharded state, jitted step."""

    dataset: DataSource
    model: IEDP
    mesh: jax.sharding.Mesh
    frozen: PyTree
    state: PyTree
    step_fn: Synchronized
    schedule: optax.Schedule


def build_trainer(cfg: ConfigDict, workdir: Path, mesh=None) -> Trainer:
    """Loads data and weights, creates the sharded state and compiles nothing yet."""
    mesh = mesh or sharding.make_mesh(tuple(cfg.mesh.shape))
    dataset = make_dataset(cfg.data, seed=cfg.seed)
    model, unet_params, frozen = build_model(cfg, dataset, workdir)
    image_hw = tuple(cfg.data.crop_size)
    tx, schedule = make_optimizer(cfg.optim, abstract_params(model, unet_params, frozen, image_hw, cfg.seed),
                                  int(cfg.train.total_steps))
    frozen = sharding.put(frozen, sharding.tree_shardings(mesh, frozen))
    state, state_sh = init_state(model, tx, mesh, unet_params, frozen, image_hw, cfg.seed)
    step_fn = make_train_step(model, tx, mesh, state_sh, jax.tree.map(lambda x: x.sharding, frozen),
                              dataset.batch_keys, schedule, cfg.seed)
    return Trainer(dataset, model, mesh, frozen, state, step_fn, schedule)


def _resume(ckpt: Checkpointer, t: Trainer, batches: Any, rows: slice, workdir: Path) -> tuple[PyTree, int]:
    """The state and first step: the latest checkpoint's (data order included), or step 0."""
    latest = ckpt.latest_step()
    if latest is None:
        return t.state, 0
    state, meta = ckpt.restore(latest, abstract_like(t.state))
    t.dataset.restore(meta)
    start = int(latest)
    per = rows.stop - rows.start
    if not ckpt.restore_data(latest, batches):
        log_line(f"the checkpoint's data state is for another process count: restarting the "
                 f"(step-determined) order at step {start}")
        batches.set_state(step_state(batches, start, per))
    got = next_step(batches.get_state(), per)
    if got != start:
        raise ConfigError(f"the checkpoint of step {start} holds a data iterator at step {got}: the checkpoint "
                          "is inconsistent; remove it or use a new --workdir.")
    log_line(f"resumed from {workdir / 'checkpoints'} at step {start}")
    return state, start


class _MetricLog:
    """Checks each step's metrics for NaN (one step late, so the host never waits on the device)
    and writes every ``log_every``-th with the throughput."""

    def __init__(self, writer: MetricWriter, bar: tqdm, log_every: int, batch_size: int, end: int) -> None:
        self.writer, self.bar, self.log_every, self.batch_size, self.end = writer, bar, log_every, batch_size, end
        self.last_saved: int | None = None
        self.pending: tuple[int, Any] | None = None
        self.t_last, self.n_since = time.perf_counter(), 0

    def push(self, step_done: int, metrics: Any) -> None:
        """Records step ``step_done``'s metrics and finishes the previous step's."""
        self.flush()
        self.pending = (step_done, metrics)

    def flush(self) -> None:
        if self.pending is None:
            return
        step_done, metrics = self.pending
        self.pending = None
        m = _check_finite(step_done, metrics, self.last_saved)
        self.n_since += 1
        if step_done % self.log_every == 0 or step_done == self.end:
            now = time.perf_counter()
            m["images_per_s"] = self.n_since * self.batch_size / (now - self.t_last)
            self.t_last, self.n_since = now, 0
            self.writer.write(step_done, m)
            self.bar.set_postfix(loss=f"{m['loss']:.4f}", lr=f"{m['lr']:.2e}")


def train(config: ConfigDict, workdir: str | os.PathLike, stop_after: int | None = None) -> dict:
    """Trains (resuming from ``workdir`` if it holds a checkpoint), then evaluates.

    Args:
      config: a config from ``configs/*.py`` (with overrides applied).
      workdir: checkpoints, TensorBoard events, ``metrics.jsonl`` and ``results.json`` go here.
      stop_after: stop (without evaluating) once this global step is reached, as if killed after
        its checkpoint; used by tests of resumption.

    Returns:
      The evaluation results (empty when stopped early).
    """
    if "://" in str(workdir):
        raise ConfigError(f"--workdir={workdir} is a URL: the workdir must be a folder every process can write "
                          "(on TPU pods mount the bucket with gcsfuse, as launch/tpu_pod.sh does).")
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    cfg = config
    total = int(cfg.train.total_steps)
    end = total if stop_after is None else min(stop_after, total)
    t = build_trainer(cfg, workdir)
    write_run_files(workdir, cfg, t.dataset)
    log_line(memory.describe(memory.plan(t.state, t.frozen), t.mesh.shape))

    ckpt = Checkpointer(workdir / "checkpoints", cfg.train.ckpt_every, cfg.train.keep_checkpoints)
    rows = sharding.process_rows(cfg.train.batch_size)
    batches = train_iterator(t.dataset, cfg.train.batch_size, rows, total,
                             num_threads=config_threads(cfg.data.num_workers))
    state, start = _resume(ckpt, t, batches, rows, workdir)
    writer = MetricWriter(workdir, enabled=jax.process_index() == 0)
    bar = tqdm(total=total, initial=start, desc="train", unit="step", dynamic_ncols=True,
               disable=jax.process_index() != 0)
    log = _MetricLog(writer, bar, cfg.train.log_every, cfg.train.batch_size, end)
    log.last_saved = ckpt.latest_step()
    for step in range(start, end):
        state, metrics = t.step_fn(state, t.frozen, sharding.global_batch(t.mesh, next(batches)))
        if step == start and (compiled := memory.describe_compiled(t.step_fn.memory_analysis())):
            log_line(compiled)
        log.push(step + 1, metrics)
        bar.update(1)
        if (step + 1) % cfg.train.ckpt_every == 0 or step + 1 == end:
            log.flush()
            ckpt.save(step + 1, state, batches, t.dataset.state(step + 1), force=True)
            log.last_saved = step + 1
    log.flush()
    bar.close()
    ckpt.close()
    if t.step_fn.cache_size() > 1:  # a recompilation would be a performance bug
        log_line(f"warning: the train step compiled {t.step_fn.cache_size()} times")
    if end < total:
        writer.close()
        return {}
    results = quick_eval(t.model, state["params"], t.frozen, t.dataset, t.mesh, int(cfg.train.eval_batch_size),
                         float(cfg.data.min_depth))
    results["step"] = int(jax.device_get(state["step"]))
    writer.write(total, {f"eval/{k}": v for k, v in results.items() if isinstance(v, (int, float))})
    writer.close()
    write_results(results, [workdir / "results.json"], HEADLINE[t.model.config.task], "results")
    return results
