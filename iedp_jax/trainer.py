"""The IEDP trainer (what ``python -m iedp_jax.train`` runs).

One jitted, sharded train step (``('data', 'fsdp')`` mesh, donated state) that compiles once,
orbax checkpoints that resume automatically from the workdir (the data order too), TensorBoard
events and ``metrics.jsonl`` (plus the config and prediction panels in TensorBoard), a progress
bar on a terminal and plain lines in batch logs, validation with the centre-crop proxy every
``train.eval_every`` steps (:mod:`iedp_jax.eval.validation`, best checkpoint kept in
``WORKDIR/best``) and at the end (``results.json``), gradient accumulation
(``train.grad_accum_steps``) and a profiler window (``train.profile_steps``).
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import time
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax
from etils import epath
from ml_collections import ConfigDict

from iedp_jax.build import abstract_params, build_model
from iedp_jax.data.catalog import make_dataset
from iedp_jax.data.pipeline import next_step, step_state, train_iterator
from iedp_jax.data.sources import DataSource
from iedp_jax.eval.runner import HEADLINE
from iedp_jax.eval.validation import PROTOCOL, CenterCropValidation
from iedp_jax.infra import memory, sharding
from iedp_jax.infra.checkpoint import BestCheckpointer, Checkpointer, abstract_like
from iedp_jax.infra.compile import Synchronized
from iedp_jax.infra.errors import ConfigError, NonFiniteLoss
from iedp_jax.infra.logs import MetricWriter, log_line, progress, write_results
from iedp_jax.infra.paths import as_path, is_local
from iedp_jax.infra.threads import config_threads
from iedp_jax.model import IEDP, SEG
from iedp_jax.optim import make_optimizer
from iedp_jax.run_files import write_run_files

PyTree = Any


def accumulation(batch_size: int, grad_accum_steps: int, mesh) -> tuple[int, int]:
    """``(k, b)``: the global batch of ``batch_size`` as ``k`` micro-batches of ``b`` rows, each
    split over every device; one clear error when it does not divide."""
    k = int(grad_accum_steps)
    devices = mesh.devices.size
    if k < 1 or batch_size % k or (batch_size // k) % devices:
        raise ConfigError(f"train.grad_accum_steps={grad_accum_steps} must divide train.batch_size={batch_size} "
                          f"into micro-batches that split over the {devices} devices.")
    return k, batch_size // k


def make_train_step(model: IEDP, tx, mesh, state_sh: PyTree, frozen_sh: PyTree, batch_keys: tuple[str, ...],
                    schedule, seed: int, grad_accum_steps: int = 1):
    """The jitted train step ``(state, frozen, batch) -> (state, metrics)``; state is donated.

    With ``grad_accum_steps = k > 1`` the global batch [k*b, ...] is k micro-batches (row
    ``i*k + j`` is row ``i`` of micro-batch ``j``, so every device keeps its own rows): a
    ``lax.scan`` sums their gradients and metrics, and one update uses the mean. Activations are
    those of one micro-batch.
    """
    base_rng = jax.random.PRNGKey(seed)
    k = int(grad_accum_steps)
    micro_sh = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(None, sharding.BATCH_AXES))

    def grads_of(params: PyTree, frozen: PyTree, batch: Mapping[str, jax.Array], rng: jax.Array):
        (_, metrics), grads = jax.value_and_grad(model.loss, has_aux=True)(params, frozen, batch, rng)
        return grads, metrics

    def accumulated(params: PyTree, frozen: PyTree, batch: Mapping[str, jax.Array], rng: jax.Array):
        if k == 1:
            return grads_of(params, frozen, batch, rng)
        micro = {name: jax.lax.with_sharding_constraint(
            jnp.swapaxes(x.reshape((x.shape[0] // k, k) + x.shape[1:]), 0, 1), micro_sh)
            for name, x in batch.items()}  # [k, b, ...]

        def body(total, xs):
            mb, j = xs
            return jax.tree.map(jnp.add, total, grads_of(params, frozen, mb, jax.random.fold_in(rng, j))), None

        first = jax.tree.map(lambda x: x[0], micro)
        zero = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), jax.eval_shape(grads_of, params, frozen, first, rng))
        total, _ = jax.lax.scan(body, zero, (micro, jnp.arange(k)))
        return jax.tree.map(lambda x: x / k, total)

    def step_fn(state: PyTree, frozen: PyTree, batch: Mapping[str, jax.Array]):
        rng = jax.random.fold_in(base_rng, state["step"])
        grads, metrics = accumulated(state["params"], frozen, batch, rng)
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        params = jax.tree.map(lambda p, u: (p + u).astype(p.dtype), state["params"], updates)
        finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(p)) for p in jax.tree.leaves(params)]))
        metrics = dict(metrics, grad_norm=optax.tree.norm(grads), lr=schedule(state["step"]),
                       params_finite=finite.astype(jnp.float32))
        return {"step": state["step"] + 1, "params": params, "opt_state": opt_state}, metrics

    batch_sh = {name: sharding.batch_sharding(mesh) for name in batch_keys}
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


def build_trainer(cfg: ConfigDict, workdir: epath.Path, mesh=None) -> Trainer:
    """Loads data and weights, creates the sharded state and compiles nothing yet."""
    mesh = mesh or sharding.make_mesh(tuple(cfg.mesh.shape))
    k, _ = accumulation(int(cfg.train.batch_size), int(cfg.train.grad_accum_steps), mesh)
    dataset = make_dataset(cfg.data, seed=cfg.seed)
    model, unet_params, frozen = build_model(cfg, dataset, workdir)
    image_hw = tuple(cfg.data.crop_size)
    tx, schedule = make_optimizer(cfg.optim, abstract_params(model, unet_params, frozen, image_hw, cfg.seed),
                                  int(cfg.train.total_steps))
    frozen = sharding.put(frozen, sharding.tree_shardings(mesh, frozen))
    state, state_sh = init_state(model, tx, mesh, unet_params, frozen, image_hw, cfg.seed)
    step_fn = make_train_step(model, tx, mesh, state_sh, jax.tree.map(lambda x: x.sharding, frozen),
                              dataset.batch_keys, schedule, cfg.seed, k)
    return Trainer(dataset, model, mesh, frozen, state, step_fn, schedule)


def _resume(ckpt: Checkpointer, t: Trainer, batches: Any, rows: slice, workdir: epath.Path) -> tuple[PyTree, int]:
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


def _duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


class _MetricLog:
    """Checks each step's metrics for NaN (one step late, so the host never waits on the device)
    and writes every ``log_every``-th with the throughput: to TensorBoard and ``metrics.jsonl``,
    to the progress bar on a terminal, and as a plain line otherwise (batch logs)."""

    def __init__(self, writer: MetricWriter, log_every: int, batch_size: int, start: int, end: int,
                 total: int) -> None:
        self.writer, self.log_every, self.batch_size, self.end, self.total = writer, log_every, batch_size, end, total
        self.plain = not sys.stderr.isatty()
        self.bar = progress(total, "train", "step", initial=start)
        self.last_saved: int | None = None
        self.pending: tuple[int, Any] | None = None
        self.t_start, self.step_start = time.perf_counter(), start
        self.t_last, self.n_since = self.t_start, 0

    def push(self, step_done: int, metrics: Any) -> None:
        """Records step ``step_done``'s metrics and finishes the previous step's."""
        self.flush()
        self.pending = (step_done, metrics)
        self.bar.update(1)

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
            if self.plain:
                eta = (now - self.t_start) / max(step_done - self.step_start, 1) * (self.total - step_done)
                losses = " ".join(f"{k}={v:.4f}" for k, v in m.items() if k.startswith("loss"))
                log_line(f"step {step_done}/{self.total} {losses} lr={m['lr']:.2e} "
                         f"{m['images_per_s']:.1f} img/s ETA {_duration(eta)}")

    def close(self) -> None:
        self.flush()
        self.bar.close()


class _Profile:
    """A ``jax.profiler`` trace of steps ``[first, last]`` (``train.profile_steps``) into ``folder``."""

    def __init__(self, steps: tuple[int, ...], folder: epath.Path) -> None:
        if steps and (len(steps) != 2 or not 0 <= steps[0] <= steps[1]):
            raise ConfigError(f"train.profile_steps must be (first, last) with 0 <= first <= last, got {steps}.")
        self.steps, self.folder, self.active = tuple(int(x) for x in steps), folder, False

    def before(self, step: int) -> None:
        if self.steps and step == self.steps[0] and jax.process_index() == 0:
            jax.profiler.start_trace(str(self.folder))
            self.active = True

    def after(self, step: int, state: PyTree) -> None:
        if self.active and step >= self.steps[1]:
            jax.block_until_ready(state)
            jax.profiler.stop_trace()
            self.active = False
            log_line(f"profiled steps {self.steps[0]}-{self.steps[1]} into {self.folder} (tensorboard --logdir there)")


class _Validation:
    """Every ``train.eval_every`` steps: the centre-crop proxy on the validation split, logged as
    ``val/*``, prediction panels in TensorBoard, and the best checkpoint kept in ``WORKDIR/best``."""

    def __init__(self, cfg: ConfigDict, t: Trainer, workdir: epath.Path, writer: MetricWriter) -> None:
        self.every, self.panels, self.writer, self.workdir = int(cfg.train.eval_every), int(cfg.train.num_panels), \
            writer, workdir
        self.runner = CenterCropValidation(t.model, t.dataset, t.mesh, int(cfg.train.eval_batch_size),
                                           float(cfg.data.min_depth))
        self.metric, mode = ("mIoU", "max") if t.model.config.task == SEG else ("rmse", "min")
        self.best = BestCheckpointer(workdir / "best", self.metric, mode) if self.every > 0 else None

    def due(self, step: int) -> bool:
        return self.every > 0 and step % self.every == 0

    def run(self, step: int, state: PyTree, frozen: PyTree, label: str = "validation") -> dict:
        results = self.runner.validate(state["params"], frozen)
        self.writer.write(step, {f"val/{k}": v for k, v in results.items() if isinstance(v, (int, float))})
        self.writer.write_images(step, "val/panels", self.runner.panels(state["params"], frozen, self.panels))
        if self.best is not None:
            self.best.save(step, state, results)
        shown = ", ".join(f"{k}={results[k]:.4f}" for k in HEADLINE[self.runner.model.config.task])
        log_line(f"{label} at step {step} ({PROTOCOL}): {shown}; the published protocol: "
                 f"python -m iedp_jax.evaluate --workdir {self.workdir}")
        return results

    def close(self) -> None:
        if self.best is not None:
            self.best.close()


def check_workdir(cfg: ConfigDict, workdir: str | os.PathLike) -> epath.Path:
    """The workdir as a path (a local folder or a ``gs://`` URL), or a clear error."""
    workdir = as_path(workdir)
    if cfg.model.tiny_backbone and not is_local(workdir):
        raise ConfigError(f"--workdir={workdir} is a URL, but model.tiny_backbone writes a backbone folder into "
                          "the workdir: use a local workdir for the tiny backbone.")
    return workdir


def train(config: ConfigDict, workdir: str | os.PathLike, stop_after: int | None = None) -> dict:
    """Trains (resuming from ``workdir`` if it holds a checkpoint), validates every
    ``train.eval_every`` steps, and scores the final parameters with the centre-crop proxy.

    Args:
      config: a config from ``configs/*.py`` (with overrides applied).
      workdir: checkpoints, TensorBoard events, ``metrics.jsonl`` and ``results.json`` go here.
      stop_after: stop (without evaluating) once this global step is reached, as if killed after
        its checkpoint; used by tests of resumption.

    Returns:
      The final validation results (empty when stopped early).
    """
    cfg = config
    workdir = check_workdir(cfg, workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    total = int(cfg.train.total_steps)
    end = total if stop_after is None else min(stop_after, total)
    profile = _Profile(tuple(cfg.train.profile_steps), workdir / "profile")
    t = build_trainer(cfg, workdir)
    write_run_files(workdir, cfg, t.dataset)
    log_line(memory.describe(memory.plan(t.state, t.frozen), t.mesh.shape))
    k, micro = accumulation(int(cfg.train.batch_size), int(cfg.train.grad_accum_steps), t.mesh)
    if k > 1:
        log_line(f"effective batch {cfg.train.batch_size} per step: {k} accumulated micro-batches of {micro} "
                 "(activations are those of one micro-batch)")

    ckpt = Checkpointer(workdir / "checkpoints", cfg.train.ckpt_every, cfg.train.keep_checkpoints)
    rows = sharding.process_rows(cfg.train.batch_size)
    batches = train_iterator(t.dataset, cfg.train.batch_size, rows, total,
                             num_threads=config_threads(cfg.data.num_workers))
    state, start = _resume(ckpt, t, batches, rows, workdir)
    writer = MetricWriter(workdir, enabled=jax.process_index() == 0)
    writer.write_text("config", "```\n" + cfg.to_json_best_effort(indent=2) + "\n```")
    validation = _Validation(cfg, t, workdir, writer)
    log = _MetricLog(writer, cfg.train.log_every, cfg.train.batch_size, start, end, total)
    log.last_saved = ckpt.latest_step()
    for step in range(start, end):
        profile.before(step)
        state, metrics = t.step_fn(state, t.frozen, sharding.global_batch(t.mesh, next(batches)))
        if step == start and (compiled := memory.describe_compiled(t.step_fn.memory_analysis())):
            log_line(compiled)
        profile.after(step, state)
        log.push(step + 1, metrics)
        if (step + 1) % cfg.train.ckpt_every == 0 or step + 1 == end:
            log.flush()
            ckpt.save(step + 1, state, batches, t.dataset.state(step + 1), force=True)
            log.last_saved = step + 1
        if validation.due(step + 1) and step + 1 < total:
            log.flush()
            validation.run(step + 1, state, t.frozen)
    log.close()
    ckpt.close()
    if t.step_fn.cache_size() > 1:  # a recompilation would be a performance bug
        log_line(f"warning: the train step compiled {t.step_fn.cache_size()} times")
    if end < total:
        validation.close()
        writer.close()
        return {}
    results = validation.run(total, state, t.frozen, label="final validation")
    results["step"] = int(jax.device_get(state["step"]))
    validation.close()
    writer.close()
    write_results(results, [workdir / "results.json"], HEADLINE[t.model.config.task],
                  f"results ({PROTOCOL}; the published protocol: python -m iedp_jax.evaluate --workdir {workdir})")
    return results
