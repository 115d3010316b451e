"""Scoring IEDP: batched, sharded over all devices, metrics accumulated on device.

- :func:`run_protocol`: the published protocols on full-resolution validation images
  (:mod:`iedp_jax.eval.windows`): mmseg's sliding window (``eval.mode=single``) or multi-scale +
  flip (``multiscale``) for segmentation, scored at the original label size; VPD's two windows +
  flip with the Eigen crop for NYUv2 depth.
- :func:`protocol_batches`: the protocol's batch loop itself, one :class:`ProtocolBatch` (the
  predictions at full resolution) at a time; :func:`run_protocol` scores them, and
  :class:`iedp_jax.trained.TrainedModel` returns them for images without labels.
- :func:`evaluate_checkpoint`: restores a checkpoint of a workdir (:func:`restore_model`) and
  runs the protocol (what ``python -m iedp_jax.evaluate`` calls).

An image that cannot be read (a corrupt or missing file) is reported with one line and skipped:
its row becomes padding, and ``num_unreadable`` / ``unreadable`` in the results say which.

Segmentation: logits resized bilinearly to the label, argmax, a confusion matrix summed over
batches -> mIoU / aAcc / mAcc / per-class IoU. Depth: per-image metric sums -> RMSE, AbsRel,
log10, delta1-3 (and SqRel, RMSE-log). Padding rows carry the ignore label or zero depth and
count for nothing.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from ml_collections import ConfigDict
from PIL import Image

from iedp_jax.build import abstract_params, build_model
from iedp_jax.data.catalog import make_dataset, task_of
from iedp_jax.data.sources import DataSource
from iedp_jax.eval.plan import Protocol, ShapeGroup, batch_indices, build_row, plan_groups, protocol_from_config
from iedp_jax.eval.windows import depth_windows, segmentation_pass
from iedp_jax.infra import sharding, visualize
from iedp_jax.infra.checkpoint import resolve_checkpoint, restore_params
from iedp_jax.infra.compile import Synchronized
from iedp_jax.infra.errors import ConfigError, DatasetError, DataValueError, InputError, UserError
from iedp_jax.infra.logs import log_line, progress, write_results
from iedp_jax.infra.metrics import confusion_matrix, depth_metric_sums, depth_metrics, segmentation_metrics
from iedp_jax.infra.paths import as_path
from iedp_jax.infra.threads import config_threads
from iedp_jax.model import IEDP, SEG

PyTree = Any

HEADLINE = {"seg": ("mIoU", "aAcc"), "depth": ("rmse", "abs_rel", "delta1")}
# What reading one damaged or missing image file raises (PIL: OSError / SyntaxError / EOFError;
# our readers: a UserError); anything else is a bug and stops the run.
UNREADABLE = (OSError, SyntaxError, EOFError, Image.DecompressionBombError, UserError)


def zero_metrics(num_classes: int | None) -> PyTree:
    """The empty accumulator: a [C, C] confusion matrix, or zeroed depth-metric sums (None)."""
    if num_classes is not None:
        return jnp.zeros((num_classes, num_classes), jnp.int32)
    return jax.tree.map(jnp.zeros_like, jax.eval_shape(
        lambda: depth_metric_sums(jnp.ones((1, 2, 2)), jnp.ones((1, 2, 2)))))


def finalize(acc: PyTree, task: str, class_names: tuple[str, ...]) -> dict:
    """Host-side metrics from the device accumulator (float64)."""
    acc = jax.device_get(acc)
    if task == SEG:
        return segmentation_metrics(np.asarray(acc, np.int64), class_names)
    return depth_metrics(acc)


# ------------------------------------------------------------------------------ the protocols


@dataclasses.dataclass(frozen=True)
class ProtocolSteps:
    """The jitted device steps of one protocol run (compiled once per group shape)."""

    seg_pass: Synchronized     # (probs, params, frozen, image, hw, offsets, valid, flip, label_hw) -> probs
    seg_finish: Synchronized   # (acc, probs, label) -> (acc, pred)
    depth_step: Synchronized   # (acc, params, frozen, image, offsets, valid, depth, mask, scene) -> (acc, pred)
    zeros: Any                 # shape -> a batch-sharded float32 zero array


def make_protocol_steps(model: IEDP, protocol: Protocol, mesh, min_depth: float) -> ProtocolSteps:
    c = model.config
    batch_sh, repl = sharding.batch_sharding(mesh), sharding.replicated(mesh)
    pred_dtype = jnp.uint8 if c.num_classes <= 256 else jnp.int32

    def seg_pass(probs, params, frozen, images, hw, offsets, valid, flip, label_hw):
        p = segmentation_pass(lambda x: model.predict(params, frozen, x), images, hw, offsets, valid, flip,
                              label_hw, probs.shape[1:3], protocol.crop)
        return probs + p

    def seg_finish(acc, probs, label):
        pred = jnp.argmax(probs, axis=-1)
        return acc + confusion_matrix(pred, label, c.num_classes, c.ignore_index), pred.astype(pred_dtype)

    def depth_step(acc, params, frozen, images, offsets, valid, depth, mask, scenes):
        def predict(x):  # [b, ch, cw, 3], b = B or 2B (an image and its mirror image stacked)
            # the scenes [B] condition only VPD's depth context (model.context="vpd"), as in VPD's test
            return model.predict(params, frozen, x, jnp.tile(scenes, x.shape[0] // scenes.shape[0]))

        pred = depth_windows(predict, images, offsets, valid, protocol.crop, protocol.flip)
        pred = pred[:, : depth.shape[1], : depth.shape[2]]
        sums = depth_metric_sums(pred, depth, min_depth, c.max_depth, mask, clip=protocol.clip_depth)
        return jax.tree.map(jnp.add, acc, sums), pred

    zeros: dict[tuple[int, ...], Any] = {}

    def zeros_of(shape: tuple[int, ...]) -> jax.Array:
        if shape not in zeros:
            zeros[shape] = jax.jit(lambda: jnp.zeros(shape, jnp.float32), out_shardings=batch_sh)
        return zeros[shape]()

    return ProtocolSteps(
        Synchronized(jax.jit(seg_pass, donate_argnums=(0,), out_shardings=batch_sh), "seg pass"),
        Synchronized(jax.jit(seg_finish, donate_argnums=(0,), out_shardings=(repl, batch_sh)), "seg finish"),
        Synchronized(jax.jit(depth_step, donate_argnums=(0,), out_shardings=(repl, batch_sh)), "depth step"),
        zeros_of)


def _score_batch(steps: ProtocolSteps, model: IEDP, protocol: Protocol, acc, params, frozen, batch: dict,
                 group: ShapeGroup, batch_size: int):
    """One batch through the protocol: ``(acc, predictions [B, Hl, Wl])``."""
    if model.config.task != SEG:
        return steps.depth_step(acc, params, frozen, batch["image0"], batch["offsets0"], batch["valid0"],
                                batch["depth"], batch["mask"], batch["scene"])
    probs = steps.zeros((batch_size, *group.label_size, model.config.num_classes))
    for s, flip in protocol.passes:
        probs = steps.seg_pass(probs, params, frozen, batch[f"image{s}"], batch[f"hw{s}"], batch[f"offsets{s}"],
                               batch[f"valid{s}"], jnp.bool_(flip), batch["label_hw"])
    return steps.seg_finish(acc, probs, batch["label"])


def _write_panels(image_dir: Path, dataset: DataSource, model: IEDP, pred: jax.Array, wanted: list[tuple[int, int]],
                  examples: list[dict | None], group: ShapeGroup) -> None:
    """``image | prediction | ground truth`` PNGs for the rows ``wanted`` = [(row, index)]."""
    local = sharding.local_rows(pred)
    c = model.config
    for r, i in wanted:
        ex = examples[r]
        h, w = group.sizes[i]
        path = image_dir / f"{i:05d}_{dataset.val_name(i)}.png"
        if c.task == SEG:
            visualize.write_segmentation_panel(path, ex["image"], local[r, :h, :w], ex["label"],
                                               visualize.palette(max(c.num_classes, 1)), ignore_index=c.ignore_index)
        else:
            visualize.write_depth_panel(path, ex["image"], local[r, :h, :w], np.where(ex["mask"], ex["depth"], 0.0))


@dataclasses.dataclass
class ProtocolBatch:
    """One batch of a protocol run (see :func:`protocol_batches`)."""

    group: ShapeGroup
    indices: list[int]                 # the image of each row of the global batch; -1 = a padding row
    local: list[int]                   # this process's rows of ``indices``
    examples: list[dict | None]        # their full-resolution examples (None for padding)
    pred: jax.Array                    # [B, Hl, Wl] batch-sharded: class ids (uint8/int32) or metres
    acc: PyTree                        # the metrics accumulator after this batch


def _why(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def _sizes(source: DataSource, n: int, unreadable: dict[int, str]) -> list[tuple[int, int]]:
    """The (H, W) of images ``0..n-1`` from their headers; an unreadable one is recorded in
    ``unreadable`` and planned at 1 x 1 (its row will be padding)."""
    sizes = []
    for i in range(n):
        try:
            sizes.append(tuple(source.val_size(i)))
        except UNREADABLE as e:
            unreadable[i] = _why(e)
            sizes.append((1, 1))
    return sizes


def protocol_batches(model: IEDP, params: PyTree, frozen: PyTree, source: DataSource, n: int, mesh,
                     cfg: ConfigDict, steps: ProtocolSteps | None = None, desc: str = "eval",
                     unreadable: dict[int, str] | None = None) -> Iterator[ProtocolBatch]:
    """Runs the protocol of ``cfg.eval`` over images ``0..n-1`` of ``source`` (``val_size``,
    ``val_image``: a labelled split, or images with placeholder labels), batched over all devices,
    and yields each batch with its predictions at the images' own size (the top-left
    ``group.sizes[i]`` of a row). Groups are landscape / portrait images, each one compiled shape;
    ``steps`` (from :func:`make_protocol_steps`) can be kept to reuse compilations across runs.
    Each batch's ``acc`` is donated to the next step: only the last one is valid afterwards.
    With ``unreadable`` (a dict), an image that cannot be read is recorded there (index -> why;
    this process's rows and every header) and scored as padding, its ``local`` entry -1; without
    it, the error propagates."""
    c = model.config
    protocol = protocol_from_config(cfg, c.task)
    batch_size = sharding.batch_per_step(cfg.eval.batch_size, mesh, "eval.batch_size")
    rows = sharding.process_rows(batch_size)
    skip = unreadable is not None
    unreadable = {} if unreadable is None else unreadable
    groups = plan_groups(_sizes(source, n, unreadable) if skip else [source.val_size(i) for i in range(n)],
                         protocol)
    steps = steps or make_protocol_steps(model, protocol, mesh, float(cfg.data.min_depth))
    acc = jax.device_put(zero_metrics(c.num_classes if c.task == SEG else None), sharding.replicated(mesh))
    total = sum(-(-len(g.indices) // batch_size) for g in groups)
    threads = max(1, config_threads(cfg.data.num_workers))

    def read_row(i: int, group: ShapeGroup):
        if i in unreadable:
            return build_row(source, group, protocol, -1, c.ignore_index)
        try:
            return build_row(source, group, protocol, i, c.ignore_index)
        except UNREADABLE as e:
            if not skip or isinstance(e, DataValueError):  # a wrong dataset copy stops the run
                raise
            unreadable[i] = _why(e)
            return build_row(source, group, protocol, -1, c.ignore_index)

    with ThreadPoolExecutor(threads, thread_name_prefix="iedp-eval") as pool, \
            progress(total, f"{desc} ({protocol.mode})", "batch") as bar:
        for group in groups:
            for chunk in batch_indices(group, batch_size):
                local = list(chunk[rows])
                made = list(pool.map(lambda i, g=group: read_row(i, g), local))
                local = [-1 if i in unreadable else i for i in local]
                host = {k: np.stack([row[k] for row, _ in made]) for k in made[0][0]}
                acc, pred = _score_batch(steps, model, protocol, acc, params, frozen,
                                         sharding.global_batch(mesh, host), group, batch_size)
                bar.update(1)
                yield ProtocolBatch(group, chunk, local, [ex for _, ex in made], pred, acc)


def run_protocol(model: IEDP, params: PyTree, frozen: PyTree, dataset: DataSource, mesh, cfg: ConfigDict,
                 out_dir: str | os.PathLike | None = None) -> dict:
    """Scores ``params`` with the protocol of ``cfg.eval`` over the first ``eval.num_images``
    full-resolution validation images (all for 0), batched over all devices. Writes
    ``eval.num_visualizations`` PNGs under ``out_dir/images`` when given. Returns the metrics
    plus ``mode``, ``protocol`` and ``num_images``."""
    c = model.config
    protocol = protocol_from_config(cfg, c.task)
    n = dataset.num_val if int(cfg.eval.num_images) <= 0 else min(dataset.num_val, int(cfg.eval.num_images))
    if n == 0:
        raise DatasetError("the validation split is empty: nothing to evaluate.")
    num_vis = int(cfg.eval.num_visualizations)
    image_dir = as_path(out_dir) / "images" if out_dir is not None else None
    acc, unreadable = None, {}
    for batch in protocol_batches(model, params, frozen, dataset, n, mesh, cfg, unreadable=unreadable):
        acc = batch.acc
        wanted = [(r, i) for r, i in enumerate(batch.local) if 0 <= i < num_vis]
        if wanted and image_dir is not None:
            _write_panels(image_dir, dataset, model, batch.pred, wanted, batch.examples, batch.group)
    skipped = _all_unreadable(unreadable, n)
    if len(skipped) == n:
        raise DatasetError(f"none of the {n} validation images can be read (the first: {dataset.val_name(skipped[0])}, "
                           f"{unreadable.get(skipped[0], '?')}): check the dataset copy.")
    for i in skipped:
        why = unreadable.get(i, "unreadable on another process")
        log_line(f"skipped validation image {dataset.val_name(i)}: {why}")
    return {**finalize(acc, c.task, dataset.class_names), "mode": protocol.mode, "protocol": protocol.describe(),
            "num_images": n - len(skipped), "num_unreadable": len(skipped),
            "unreadable": [dataset.val_name(i) for i in skipped]}


def _all_unreadable(unreadable: dict[int, str], n: int) -> list[int]:
    """The unreadable image indices of every process (each knows only the rows it read)."""
    mask = np.zeros(n, np.int32)
    mask[list(unreadable)] = 1
    if jax.process_count() > 1:
        mask = np.asarray(multihost_utils.process_allgather(mask)).max(axis=0)
    return [int(i) for i in np.flatnonzero(mask)]


# ------------------------------------------------------------------------------ from a workdir


def restore_model(config: ConfigDict, dataset, workdir: str | os.PathLike, directory: str | os.PathLike,
                  step: int, mesh) -> tuple[IEDP, PyTree, PyTree, int]:
    """``(model, params, frozen, trained steps)``: the model built for ``dataset`` (a data source or
    a :class:`~iedp_jax.run_files.DatasetInfo`: task and names only) with the trained parameters
    of checkpoint ``directory/step``, both on ``mesh``."""
    model, unet_params, frozen = build_model(config, dataset, Path(workdir))
    abstract = abstract_params(model, unet_params, frozen, tuple(config.data.crop_size), config.seed)
    del unet_params  # the checkpoint's UNet replaces the pretrained one
    abstract = jax.tree.map(lambda x, sh: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh), abstract,
                            sharding.tree_shardings(mesh, abstract))
    frozen = sharding.put(frozen, sharding.tree_shardings(mesh, frozen))
    log_line(f"restoring step {step} from {directory}")
    params, trained_steps = restore_params(directory, step, abstract)
    return model, params, frozen, trained_steps


CHECKPOINT_KINDS = ("final", "best")


def _chosen_checkpoint(config: ConfigDict, workdir, checkpoint) -> tuple[Any, int, str]:
    """``(folder, step, kind)`` of the checkpoint to score: ``checkpoint`` when given, else the one
    ``eval.checkpoint`` names. ``kind``: ``best`` (from ``WORKDIR/best``), ``final`` (the last
    step of ``WORKDIR/checkpoints`` at ``train.total_steps``), ``intermediate`` (a step of
    ``WORKDIR/checkpoints`` before ``train.total_steps``) or ``given`` (a folder elsewhere)."""
    kind = str(config.eval.get("checkpoint", "final"))
    if kind not in CHECKPOINT_KINDS:
        raise ConfigError(f"eval.checkpoint must be 'final' (the last step) or 'best' (the best-by-validation "
                          f"checkpoint in WORKDIR/best), got {kind!r}.")
    best = workdir / "best"
    if not checkpoint and kind == "best":
        if not best.is_dir():
            raise InputError(f"eval.checkpoint='best' but {best} does not exist: the trainer keeps a best checkpoint "
                             "only with train.eval_every > 0; use eval.checkpoint=final.")
        checkpoint = best
    directory, step = resolve_checkpoint(workdir, checkpoint)
    if str(directory) == str(best):
        return directory, step, "best"
    if str(directory) != str(workdir / "checkpoints"):
        return directory, step, "given"
    if step != int(config.train.total_steps):
        log_line(f"warning: scoring step {step}, but the schedule has {int(config.train.total_steps)} steps "
                 "(checkpoint_kind 'intermediate', not 'final')")
        return directory, step, "intermediate"
    return directory, step, "final"


def evaluate_checkpoint(config: ConfigDict, workdir: str | os.PathLike,
                        checkpoint: str | os.PathLike | None = None, mesh=None) -> dict:
    """Restores the parameters of a checkpoint of ``workdir`` and scores them with the protocol
    of ``config.eval``; writes ``workdir/eval/results.json`` (and ``results_<mode>.json``) and
    prediction PNGs under ``workdir/eval/images``.

    Args:
      config: the training config (``iedp_jax/configs/*.py`` with overrides); ``config.eval`` picks the
        protocol (``mode`` single|multiscale, ``num_images``, ``num_visualizations``, ...).
      workdir: the training workdir (checkpoints in ``workdir/checkpoints``).
      checkpoint: a step folder (``workdir/checkpoints/2000``) or a folder of them; default
        ``config.eval.checkpoint``: ``final`` the latest step of ``workdir/checkpoints`` (what VPD
        reports: the end of the fixed schedule), ``best`` the best-by-validation checkpoint the
        trainer keeps in ``workdir/best`` (``train.eval_every`` > 0).
      mesh: a ``('data', 'fsdp')`` mesh; default ``config.mesh.shape`` over all devices.

    Returns:
      The metrics, with ``step``, ``checkpoint``, ``checkpoint_kind`` (final, best, intermediate or
      given, :func:`_chosen_checkpoint`), ``mode``, ``protocol`` and ``num_images``.
    """
    workdir = as_path(workdir)  # local or gs://
    directory, step, kind = _chosen_checkpoint(config, workdir, checkpoint)
    protocol_from_config(config, task_of(config.data.name))  # a bad eval section fails before any load
    mesh = mesh or sharding.make_mesh(tuple(config.mesh.shape))
    dataset = make_dataset(config.data, seed=config.seed)
    model, params, frozen, trained_steps = restore_model(config, dataset, workdir, directory, step, mesh)
    out_dir = workdir / "eval"
    results = run_protocol(model, params, frozen, dataset, mesh, config, out_dir=out_dir)
    results = {"step": trained_steps, "checkpoint": str(directory / str(step)), "checkpoint_kind": kind, **results}
    write_results(results, [out_dir / "results.json", out_dir / f"results_{results['mode']}.json"],
                  HEADLINE[model.config.task],
                  f"{results['mode']} ({results['num_images']} images, {kind} checkpoint, step {results['step']})")
    return results
