"""Train IEDP: ``python -m iedp_jax.train --config configs/smoke_seg.py --workdir /tmp/iedp``.

One jitted, sharded train step (``('data', 'fsdp')`` mesh, donated state), orbax checkpoints
that resume automatically from ``--workdir``, TensorBoard events and ``metrics.jsonl``, a
progress bar, and at the end an evaluation on the validation split written to ``results.json``.
Override any config field with ``--config.section.key=value``; unknown keys are an error.
"""

from __future__ import annotations

import dataclasses
import json
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

from iedp_jax.infra import memory, sharding
from iedp_jax.infra.checkpoint import Checkpointer, abstract_like
from iedp_jax.data.datasets import make_dataset
from iedp_jax.data.pipeline import next_step, step_state, train_iterator
from iedp_jax.infra.threads import config_threads
from iedp_jax.infra.compile import Synchronized
from iedp_jax.evaluate import evaluate
from iedp_jax.model import IEDP, SEG
from iedp_jax.optim import make_optimizer
from iedp_jax.builder import build_model
from iedp_jax.infra.errors import NonFiniteLoss
from iedp_jax.infra.logs import log_line
from iedp_jax.infra.logs import MetricWriter

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

    dataset: Any
    model: IEDP
    mesh: Any
    frozen: PyTree
    state: PyTree
    step_fn: Any
    schedule: Any


def abstract_params(model: IEDP, unet_params: PyTree, frozen: PyTree, image_hw: tuple[int, int],
                    seed: int) -> PyTree:
    """``ShapeDtypeStruct``s of the trained parameters (``unet`` + heads), computed without
    materializing the heads (``jax.eval_shape``)."""
    heads = jax.eval_shape(lambda u, f: model.init_head_params(jax.random.PRNGKey(seed + 1), image_hw, u, f),
                           unet_params, frozen)
    unet = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), unet_params)
    return {"unet": unet, **heads}


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
        raise ValueError(f"--workdir={workdir} is a URL: the workdir must be a folder every process can write "
                         "(on TPU pods mount the bucket with gcsfuse, as launch/tpu_pod.sh does).")
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    cfg = config
    total = int(cfg.train.total_steps)
    t = build_trainer(cfg, workdir)
    dataset, model, mesh, frozen, state, step_fn = t.dataset, t.model, t.mesh, t.frozen, t.state, t.step_fn

    log_line(memory.describe(memory.plan(state, frozen), mesh.shape))
    ckpt = Checkpointer(workdir / "checkpoints", cfg.train.ckpt_every, cfg.train.keep_checkpoints)
    rows = sharding.process_rows(cfg.train.batch_size)
    batches = train_iterator(dataset, cfg.train.batch_size, rows, total,
                             num_threads=config_threads(cfg.data.num_workers))
    start = 0
    latest = ckpt.latest_step()
    if latest is not None:
        state, meta = ckpt.restore(latest, abstract_like(state))
        dataset.restore(meta)
        start = int(latest)
        if not ckpt.restore_data(latest, batches):
            log_line(f"the checkpoint's data state is for another process count: restarting the "
                     f"(step-determined) order at step {start}")
            batches.set_state(step_state(batches, start, rows.stop - rows.start))
        got = next_step(batches.get_state(), rows.stop - rows.start)
        if got != start:
            raise ValueError(f"the checkpoint of step {start} holds a data iterator at step {got}: "
                             "the checkpoint is inconsistent; remove it or use a new --workdir.")
        log_line(f"resumed from {workdir / 'checkpoints'} at step {start}")
    last_saved = latest

    writer = MetricWriter(workdir, enabled=jax.process_index() == 0)
    end = total if stop_after is None else min(stop_after, total)

    from tqdm.auto import tqdm  # noqa: PLC0415 - progress bar only for the loop

    bar = tqdm(total=total, initial=start, desc="train", unit="step", dynamic_ncols=True,
               disable=jax.process_index() != 0)
    pending: tuple[int, Any] | None = None
    t_last, n_since = time.perf_counter(), 0

    def finish(step_done: int, metrics) -> dict[str, float]:
        nonlocal t_last, n_since
        m = _check_finite(step_done, metrics, last_saved)
        n_since += 1
        if step_done % cfg.train.log_every == 0 or step_done == end:
            now = time.perf_counter()
            m["images_per_s"] = n_since * cfg.train.batch_size / (now - t_last)
            t_last, n_since = now, 0
            writer.write(step_done, m)
            bar.set_postfix(loss=f"{m['loss']:.4f}", lr=f"{m['lr']:.2e}")
        return m

    for step in range(start, end):
        batch = sharding.global_batch(mesh, next(batches))
        state, metrics = step_fn(state, frozen, batch)
        if step == start:
            compiled = memory.describe_compiled(step_fn.memory_analysis())
            if compiled:
                log_line(compiled)
        if pending is not None:
            finish(*pending)
        pending = (step + 1, metrics)
        bar.update(1)
        if (step + 1) % cfg.train.ckpt_every == 0 or step + 1 == end:
            finish(*pending)
            pending = None
            ckpt.save(step + 1, state, batches, dataset.state(step + 1), force=True)
            last_saved = step + 1
    if pending is not None:
        finish(*pending)
    bar.close()
    ckpt.close()
    if step_fn.cache_size() > 1:  # noqa: SLF001 - a recompilation would be a performance bug
        log_line(f"warning: the train step compiled {step_fn.cache_size()} times")
    if end < total:
        writer.close()
        return {}
    results = evaluate(model, state["params"], frozen, dataset, mesh, cfg)
    results["step"] = int(jax.device_get(state["step"]))
    if jax.process_index() == 0:
        (workdir / "results.json").write_text(json.dumps(results, indent=2))
    writer.write(total, {f"eval/{k}": v for k, v in results.items() if isinstance(v, (int, float))})
    writer.close()
    headline = ("mIoU", "aAcc") if model.config.task == SEG else ("rmse", "abs_rel", "delta1")
    log_line("results: " + ", ".join(f"{k}={results[k]:.4f}" for k in headline) + f" -> {workdir / 'results.json'}")
    return results


def _define_flags() -> None:
    from absl import flags  # noqa: PLC0415

    flags.DEFINE_integer("stop_after", None, "Stop once this global step is trained and checkpointed, without "
                         "evaluating (e.g. to fit a job slot); rerun without it to resume.")


if __name__ == "__main__":
    from iedp_jax.infra.cli import run

    run(lambda config, workdir, flag_values: train(config, workdir, flag_values.get("stop_after")), _define_flags)
