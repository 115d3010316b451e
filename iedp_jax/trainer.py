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

import contextlib
import dataclasses
import math
import os
import sys
import time
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from etils import epath
from ml_collections import ConfigDict

from iedp_jax.build import abstract_params, build_model, model_remat
from iedp_jax.data.catalog import make_dataset
from iedp_jax.data.pipeline import next_step, step_state, train_iterator
from iedp_jax.data.sources import DataSource
from iedp_jax.eval.runner import HEADLINE
from iedp_jax.eval.validation import PROTOCOL, CenterCropValidation
from iedp_jax.infra import memory, sharding
from iedp_jax.infra.checkpoint import BestCheckpointer, Checkpointer, abstract_like, check_shapes
from iedp_jax.infra.compile import Synchronized
from iedp_jax.infra.errors import ConfigError, NonFiniteLoss
from iedp_jax.infra.logs import MetricWriter, log_line, progress, write_results
from iedp_jax.infra.paths import as_path, is_local
from iedp_jax.infra.threads import config_threads
from iedp_jax.model import IEDP, SEG
from iedp_jax.optim import make_optimizer
from iedp_jax.run_files import write_run_files

PyTree = Any
CKPT_STREAM_GB = 1.0  # the checkpoint's host copy when the whole state would not fit beside the step


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


def _state_maker(model: IEDP, tx, image_hw: tuple[int, int], seed: int):
    def make(unet_params, frozen):
        heads = model.init_head_params(jax.random.PRNGKey(seed + 1), image_hw, unet_params, frozen)
        params = {"unet": unet_params, **heads}
        return {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params)}

    return make


def abstract_state(model: IEDP, tx, mesh, unet_params: PyTree, frozen: PyTree, image_hw: tuple[int, int],
                   seed: int) -> tuple[PyTree, PyTree]:
    """The train state as ``ShapeDtypeStruct``s carrying their shardings (nothing allocated),
    and those shardings."""
    abstract = jax.eval_shape(_state_maker(model, tx, image_hw, seed), unet_params, frozen)
    state_sh = sharding.tree_shardings(mesh, abstract)
    return sharding.with_shardings(abstract, state_sh), state_sh


def init_state(model: IEDP, tx, mesh, unet_params: PyTree, frozen: PyTree, image_hw: tuple[int, int],
               seed: int) -> tuple[PyTree, PyTree]:
    """The initial train state, born sharded, and its shardings."""
    make = _state_maker(model, tx, image_hw, seed)
    _, state_sh = abstract_state(model, tx, mesh, unet_params, frozen, image_hw, seed)
    frozen_sh = sharding.tree_shardings(mesh, frozen)
    unet_sh = state_sh["params"]["unet"]
    unet_params = sharding.put(unet_params, unet_sh)  # host arrays -> global arrays (multi-host safe)
    # The UNet's parameters are donated: the state's copy replaces them (no second copy at peak).
    state = jax.jit(make, in_shardings=(unet_sh, frozen_sh), out_shardings=state_sh,
                    donate_argnums=(0,))(unet_params, frozen)
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
    """Everything a training run holds: data, model, frozen weights, sharded state, jitted step.

    Built with ``abstract=True``, ``frozen`` and ``state`` are ``ShapeDtypeStruct``s with their
    shardings (no weight read): enough to compile the step and plan its memory."""

    dataset: DataSource
    model: IEDP
    mesh: jax.sharding.Mesh
    frozen: PyTree
    state: PyTree
    step_fn: Synchronized
    schedule: optax.Schedule
    batch_size: int  # the global (micro-batch x accumulation) batch of one step

    def batch_spec(self) -> dict[str, jax.ShapeDtypeStruct]:
        """The global batch of one step as ``ShapeDtypeStruct``s (one example decoded for its
        shapes; the data order is untouched)."""
        example = self.dataset.train_example(0, 0, self.batch_size)
        sh = sharding.batch_sharding(self.mesh)
        return {k: jax.ShapeDtypeStruct((self.batch_size, *np.shape(example[k])), np.asarray(example[k]).dtype,
                                        sharding=sh) for k in self.dataset.batch_keys}

    def compile_step(self):
        """Compiles the train step for this run's shapes (once; the real call reuses it)."""
        return self.step_fn.compile(self.state, self.frozen, self.batch_spec())


def build_trainer(cfg: ConfigDict, workdir: epath.Path, mesh=None, weights: str = "all",
                  dataset: DataSource | None = None, step_fn: Synchronized | None = None) -> Trainer:
    """Loads data and weights, creates the sharded state and compiles nothing yet.

    ``weights`` (:data:`iedp_jax.build.WEIGHTS`): ``"all"`` initialises the state from the
    backbone; ``"frozen"`` loads only the frozen towers and leaves the state abstract (a resumed
    run restores it); ``"none"`` reads no weight at all (shapes from the config files: enough to
    compile the step and plan its memory). Abstract trees are ``ShapeDtypeStruct``s with their
    shardings. ``dataset`` and ``step_fn`` reuse those of another trainer of the same config."""
    mesh = mesh or sharding.make_mesh(tuple(cfg.mesh.shape))
    k, _ = accumulation(int(cfg.train.batch_size), int(cfg.train.grad_accum_steps), mesh)
    dataset = dataset or make_dataset(cfg.data, seed=cfg.seed)
    model, unet_params, frozen = build_model(cfg, dataset, workdir, weights=weights)
    image_hw = tuple(cfg.data.crop_size)
    tx, schedule = make_optimizer(cfg.optim, abstract_params(model, unet_params, frozen, image_hw, cfg.seed),
                                  int(cfg.train.total_steps))
    frozen_sh = sharding.tree_shardings(mesh, frozen)
    frozen = sharding.with_shardings(frozen, frozen_sh) if weights == "none" else sharding.put(frozen, frozen_sh)
    if weights == "all":
        state, state_sh = init_state(model, tx, mesh, unet_params, frozen, image_hw, cfg.seed)
    else:
        state, state_sh = abstract_state(model, tx, mesh, unet_params, frozen, image_hw, cfg.seed)
    step_fn = step_fn or make_train_step(model, tx, mesh, state_sh, frozen_sh, dataset.batch_keys, schedule,
                                         cfg.seed, k)
    return Trainer(dataset, model, mesh, frozen, state, step_fn, schedule, int(cfg.train.batch_size))


def _memory_advice(cfg: ConfigDict, mesh) -> str:
    """What to change to need less memory, naming the knobs not yet turned."""
    per_device = int(cfg.train.batch_size) // int(cfg.train.grad_accum_steps) // mesh.devices.size
    tips = []
    if per_device > 1:
        tips.append(f"fewer images per device (now {per_device}: raise train.grad_accum_steps to keep the "
                    f"batch of {cfg.train.batch_size}, or lower train.batch_size)")
    if cfg.model.dtype == "float32":
        tips.append("model.dtype=bfloat16")
    if model_remat(cfg) is False:
        tips.append("model.remat=blocks")
    if mesh.shape[sharding.FSDP] == 1 and jax.device_count() > 1:
        tips.append(f"shard parameters and optimizer state with mesh.shape=(-1,{jax.device_count()}) (fsdp)")
    if not tips:
        tips.append("a smaller data.crop_size, or more devices with fsdp")
    return "use " + ", ".join(tips) + " (or train.memory_guard=False to try anyway)"


def guard_memory(cfg: ConfigDict, plan: Trainer, compiled) -> float:
    """Stops a run that cannot fit before it starts (:class:`MemoryPlanError`, one sentence with
    the numbers and the knobs), and returns the bound on the checkpoint's host copy (GB; 0 =
    orbax's default, unbounded) that lets saving fit beside the step.

    Compares XLA's compiled peak per device (parameters, optimizer state, frozen towers,
    gradients and activations) with the free memory of each device, or on a CPU, where the
    devices' memory is the host's, all local devices' peaks plus the host-side needs (the input
    pipeline's buffers and the checkpoint's host copy) with the host's available memory."""
    sizes = memory.compiled_sizes(compiled.memory_analysis())
    state_bytes = memory.per_device_bytes(plan.state) * len(plan.mesh.local_devices)
    data_bytes = 4 * sum(x.size * x.dtype.itemsize for x in plan.batch_spec().values()) // jax.process_count()
    requested = float(cfg.train.ckpt_host_gb)
    if requested < 0:
        raise ConfigError(f"train.ckpt_host_gb={requested:g} must be 0 (automatic) or a positive number of GB.")
    if sizes is None:
        log_line("this backend gives no memory analysis of the compiled step: the memory guard is skipped")
        return requested
    device = plan.mesh.local_devices[0]
    per_device = int(sizes["peak"] * memory.GIB)
    on_host = device.platform == "cpu"  # the devices' memory is the host's
    step_host = per_device * len(plan.mesh.local_devices) if on_host else 0
    host_free = memory.host_available_bytes()
    # The checkpoint's host copy: the whole state unless bounded. Auto (0): unbounded when it fits
    # beside the step, else streamed through CKPT_STREAM_GB.
    if requested > 0:
        host_gb = requested
    elif host_free is not None and step_host + data_bytes + state_bytes > host_free:
        host_gb = CKPT_STREAM_GB
    else:
        host_gb = 0.0
    ckpt_bytes = min(int(host_gb * 1e9), state_bytes) if host_gb > 0 else state_bytes
    micro = int(cfg.train.batch_size) // int(cfg.train.grad_accum_steps) // plan.mesh.devices.size
    purpose = (f"{micro} image{'s' if micro > 1 else ''} of {tuple(cfg.data.crop_size)} per device in "
               f"{cfg.model.dtype}, remat {model_remat(cfg) or 'none'}")
    if not cfg.train.memory_guard:
        log_line("train.memory_guard=False: the memory check is skipped")
        return host_gb
    advice = _memory_advice(cfg, plan.mesh)
    if on_host:
        memory.check_fits(step_host + data_bytes + ckpt_bytes, "the train step", advice, host_free,
                          purpose=purpose + " (with the input pipeline and the checkpoint's host copy)",
                          place="the host")
    else:
        memory.check_fits(per_device, "the train step", advice, memory.available_bytes(device), purpose=purpose)
        memory.check_fits(data_bytes + ckpt_bytes, "checkpoint saving and the input pipeline",
                          "set train.ckpt_host_gb to a few GB (the checkpoint is then streamed), or free host memory",
                          host_free, place="the host")
    if host_gb > 0 and requested <= 0:
        log_line(f"the checkpoint's host copy is streamed through {host_gb:g} GB (the whole state would not fit "
                 "beside the step)")
    return host_gb


def _check_resumable(step_dir: epath.Path, params: PyTree, workdir: epath.Path) -> None:
    """A checkpoint of another model (a changed config) is refused in one sentence, before any write."""
    check_shapes(step_dir / "state", params, f"resume with the config it was trained with ({workdir / 'config.json'}"
                 "), or train into a new --workdir")


def _resume(ckpt: Checkpointer, t: Trainer, batches: Any, rows: slice, workdir: epath.Path) -> tuple[PyTree, int]:
    """The state and first step: the latest checkpoint's (data order included), or step 0."""
    latest = ckpt.latest_step()
    if latest is None:
        return t.state, 0
    _check_resumable(ckpt.directory / str(latest), t.state["params"], workdir)
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


def _rate(value: float) -> str:
    """A throughput with three significant digits, whatever its size (``0.0571``, ``142``)."""
    return f"{value:.3g}"


class _MetricLog:
    """Checks each step's metrics for NaN (one step late, so the host never waits on the device)
    and writes every ``log_every``-th with the throughput: to TensorBoard and ``metrics.jsonl``,
    to the progress bar on a terminal, and as a plain line otherwise (batch logs).

    Throughput and ETA count training steps only: the first step of a run (warm-up) and the
    time spent in :meth:`paused` (checkpoint saves, validation) are left out, so ``s/step`` and
    ``img/s`` are the steady state and the ETA is the training time left."""

    def __init__(self, writer: MetricWriter, log_every: int, batch_size: int, start: int, end: int,
                 total: int) -> None:
        self.writer, self.log_every, self.batch_size, self.end, self.total = writer, log_every, batch_size, end, total
        self.plain = not sys.stderr.isatty()
        self.bar = progress(total, "train", "step", initial=start)
        self.last_saved: int | None = None
        self.pending: tuple[int, Any] | None = None
        self.t_mark: float | None = None  # when the last timed interval began (after the first step)
        self.excluded = 0.0               # paused seconds inside the current interval
        self.n_since = 0                  # steps finished in the current interval
        self.timed_steps, self.timed_seconds = 0, 0.0  # every timed step of this run, for the ETA

    @contextlib.contextmanager
    def paused(self):
        """Time inside this block is not training time (saves, validation)."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.excluded += time.perf_counter() - t0

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
        m = _check_finite(step_done, metrics, self.last_saved)  # waits for the step to finish
        now = time.perf_counter()
        if self.t_mark is None:  # the run's first step (warm-up: transfers, allocation) is not timed
            self.t_mark, self.excluded = now, 0.0
        else:
            self.n_since += 1
        if step_done % self.log_every == 0 or step_done == self.end:
            if self.n_since:
                seconds = max(now - self.t_mark - self.excluded, 1e-9)
                m["seconds_per_step"] = seconds / self.n_since
                m["images_per_s"] = self.n_since * self.batch_size / seconds
                self.timed_steps += self.n_since
                self.timed_seconds += seconds
                self.t_mark, self.excluded, self.n_since = now, 0.0, 0
            self.writer.write(step_done, m)
            self.bar.set_postfix(loss=f"{m['loss']:.4f}", lr=f"{m['lr']:.2e}")
            if self.plain:
                losses = " ".join(f"{k}={v:.4f}" for k, v in m.items() if k.startswith("loss"))
                speed = "first step (warm-up, not timed)"
                if "images_per_s" in m:
                    eta = self.timed_seconds / self.timed_steps * (self.total - step_done)
                    speed = (f"{_rate(m['images_per_s'])} img/s {_rate(m['seconds_per_step'])} s/step "
                             f"ETA {_duration(eta)}")
                log_line(f"step {step_done}/{self.total} {losses} lr={m['lr']:.2e} {speed}")

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

    def __init__(self, cfg: ConfigDict, t: Trainer, workdir: epath.Path, writer: MetricWriter,
                 host_gb: float = 0.0) -> None:
        self.every, self.panels, self.writer, self.workdir = int(cfg.train.eval_every), int(cfg.train.num_panels), \
            writer, workdir
        self.runner = CenterCropValidation(t.model, t.dataset, t.mesh, int(cfg.train.eval_batch_size),
                                           float(cfg.data.min_depth))
        self.metric, mode = ("mIoU", "max") if t.model.config.task == SEG else ("rmse", "min")
        self.best = BestCheckpointer(workdir / "best", self.metric, mode, host_gb) if self.every > 0 else None

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
      config: a config from ``iedp_jax/configs/*.py`` (with overrides applied).
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
    # The step is compiled from the shapes alone and checked against the memory there is before
    # any weight is read: a run that cannot fit stops here with one sentence.
    plan = build_trainer(cfg, workdir, weights="none")
    if (workdir / "checkpoints").is_dir() and (steps := sorted(
            int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())):
        _check_resumable(workdir / "checkpoints" / str(steps[-1]), plan.state["params"], workdir)  # before compiling
    log_line(memory.describe(memory.plan(plan.state, plan.frozen), plan.mesh.shape))
    k, micro = accumulation(int(cfg.train.batch_size), int(cfg.train.grad_accum_steps), plan.mesh)
    if k > 1:
        log_line(f"effective batch {cfg.train.batch_size} per step: {k} accumulated micro-batches of {micro} "
                 "(activations are those of one micro-batch)")
    log_line("compiling the train step")
    compiled = plan.compile_step()
    if line := memory.describe_compiled(compiled.memory_analysis()):
        log_line(line)
    host_gb = guard_memory(cfg, plan, compiled)

    ckpt = Checkpointer(workdir / "checkpoints", cfg.train.ckpt_every, cfg.train.keep_checkpoints, host_gb)
    resuming = ckpt.latest_step() is not None  # then the state comes from the checkpoint, not the UNet folder
    t = build_trainer(cfg, workdir, plan.mesh, weights="frozen" if resuming else "all", dataset=plan.dataset,
                      step_fn=plan.step_fn)
    rows = sharding.process_rows(cfg.train.batch_size)
    batches = train_iterator(t.dataset, cfg.train.batch_size, rows, total,
                             num_threads=config_threads(cfg.data.num_workers))
    state, start = _resume(ckpt, t, batches, rows, workdir)  # a refused resume leaves config.json as it was
    write_run_files(workdir, cfg, t.dataset)
    writer = MetricWriter(workdir, enabled=jax.process_index() == 0, resume_step=start)
    writer.write_text("config", "```\n" + cfg.to_json_best_effort(indent=2) + "\n```")
    validation = _Validation(cfg, t, workdir, writer, host_gb)
    log = _MetricLog(writer, cfg.train.log_every, cfg.train.batch_size, start, end, total)
    log.last_saved = ckpt.latest_step()
    for step in range(start, end):
        profile.before(step)
        state, metrics = t.step_fn(state, t.frozen, sharding.global_batch(t.mesh, next(batches)))
        profile.after(step, state)
        log.push(step + 1, metrics)
        if (step + 1) % cfg.train.ckpt_every == 0 or step + 1 == end:
            log.flush()
            with log.paused():
                ckpt.save(step + 1, state, batches, t.dataset.state(step + 1), force=True)
            log.last_saved = step + 1
        if validation.due(step + 1) and step + 1 < total:
            log.flush()
            with log.paused():
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
    results["checkpoint_kind"] = "final"  # the end-of-schedule parameters (best-by-validation: WORKDIR/best)
    validation.close()
    writer.close()
    write_results(results, [workdir / "results.json"], HEADLINE[t.model.config.task],
                  f"results ({PROTOCOL}; the published protocol: python -m iedp_jax.evaluate --workdir {workdir})")
    return results
