"""Evaluation on the validation split: batched, sharded over all devices, accumulated on device.

Two entry points:

- ``evaluate(model, params, frozen, dataset, mesh, cfg)``: the trainer's end-of-training check
  on the dataset's fixed-size validation batches (a centred crop; cheap, one compiled shape).
- ``python -m iedp_jax.evaluate --config configs/ade.py --workdir DIR [--checkpoint PATH]``
  (:func:`evaluate_checkpoint`): the published protocols on full-resolution validation images
  (:mod:`iedp_jax.inference`): mmseg's sliding window (``eval.mode=single``) or multi-scale +
  flip (``eval.mode=multiscale``) for segmentation, scored at the original label size; VPD's two
  windows + flip with the Eigen crop for NYUv2 depth. It restores the latest checkpoint of
  ``DIR/checkpoints`` (or ``--checkpoint``), writes ``DIR/eval/results.json`` (also
  ``results_<mode>.json``) and ``eval.num_visualizations`` ``image | prediction | ground truth``
  PNGs under ``DIR/eval/images/``.

Segmentation: logits resized bilinearly to the label, argmax, a confusion matrix summed over
batches -> mIoU / aAcc / mAcc / per-class IoU. Depth: per-image metrics summed over batches ->
RMSE, AbsRel, log10, delta1-3 (and SqRel, RMSE-log). Padding rows of the last batch carry the
ignore label (segmentation) or zero depth (depth) and count for nothing.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import ConfigDict

from iedp_jax.infra import sharding
from iedp_jax.infra.threads import config_threads
from iedp_jax.infra.compile import Synchronized
from iedp_jax.sd.layers import resize_bilinear
from iedp_jax.infra.metrics import confusion_matrix, depth_metric_sums, depth_metrics, segmentation_metrics
from iedp_jax.model import DEPTH, IEDP, SEG

PyTree = Any


def zero_metrics(num_classes: int | None) -> PyTree:
    """The empty accumulator: a [C, C] confusion matrix, or zeroed depth-metric sums (None)."""
    if num_classes is not None:
        return jnp.zeros((num_classes, num_classes), jnp.int32)
    return jax.tree.map(jnp.zeros_like, jax.eval_shape(
        lambda: depth_metric_sums(jnp.ones((1, 2, 2)), jnp.ones((1, 2, 2)))))


def evaluate(model: IEDP, params: PyTree, frozen: PyTree, dataset, mesh, cfg: ConfigDict) -> dict:
    """Runs the implicit branch (no labels) over the validation split and returns the metrics."""
    c = model.config
    seg = c.task == SEG
    batch_size = int(cfg.train.eval_batch_size)
    rows = sharding.process_rows(batch_size)
    repl = sharding.replicated(mesh)

    def step(acc, params, frozen, batch):
        pred = model.predict(params, frozen, batch["image"])
        if seg:
            label = batch["label"]
            logits = resize_bilinear(pred.astype(jnp.float32), label.shape[1:3])
            return acc + confusion_matrix(jnp.argmax(logits, -1), label, c.num_classes, c.ignore_index)
        sums = depth_metric_sums(pred.astype(jnp.float32), batch["depth"], cfg.data.min_depth, c.max_depth)
        return jax.tree.map(jnp.add, acc, sums)

    acc = jax.device_put(zero_metrics(c.num_classes if seg else None), repl)
    jstep = Synchronized(jax.jit(step, out_shardings=repl, donate_argnums=(0,)), "eval step")

    from tqdm.auto import tqdm  # noqa: PLC0415

    n = dataset.num_val
    for batch in tqdm(dataset.val_batches(batch_size, rows), total=-(-n // batch_size), desc="eval",
                      unit="batch", dynamic_ncols=True, disable=jax.process_index() != 0):
        acc = jstep(acc, params, frozen, sharding.global_batch(mesh, batch))
    acc = jax.device_get(acc)
    if seg:
        results = segmentation_metrics(np.asarray(acc, np.int64), dataset.class_names)
    else:
        results = depth_metrics(acc)
    results["num_images"] = n
    return results


# =============================================================================================
# The published protocols (python -m iedp_jax.evaluate)
# =============================================================================================

MODES = ("single", "multiscale")


@dataclasses.dataclass(frozen=True)
class Protocol:
    """What ``cfg.eval`` resolves to for one task (see ``config_defaults.base_config``)."""

    task: str
    mode: str
    crop: tuple[int, int]
    stride: tuple[int, int]
    img_scale: tuple[int, int]       # segmentation test resize (long, short); unused for depth
    scales: tuple[float, ...]        # ratios of img_scale, one pass each (and one more with flip)
    flip: bool

    @property
    def passes(self) -> list[tuple[int, bool]]:
        """``(scale index, flip)`` of every segmentation pass, in mmseg's order."""
        return [(i, f) for i in range(len(self.scales)) for f in ((False, True) if self.flip else (False,))]

    def describe(self) -> dict:
        d = {"crop": list(self.crop), "stride": list(self.stride), "flip": self.flip}
        if self.task == SEG:
            d.update(img_scale=list(self.img_scale), scales=list(self.scales))
        return d


def protocol_from_config(cfg: ConfigDict, task: str) -> Protocol:
    """The protocol of ``cfg.eval`` for ``task`` ('seg' or 'depth'), or a clear error."""
    e = cfg.eval
    if e.mode not in MODES:
        raise ValueError(f"eval.mode must be 'single' or 'multiscale', got {e.mode!r}.")

    def pair(value, name, default):
        v = tuple(int(x) for x in value) if len(value) else tuple(int(x) for x in default)
        if len(v) != 2 or min(v) < 1:
            raise ValueError(f"eval.{name} must be (height, width) positive integers or (), got {tuple(value)}.")
        return v

    crop = pair(e.crop, "crop", cfg.data.crop_size)
    stride = pair(e.stride, "stride", [max(c * 2 // 3, 1) for c in crop])
    img_scale = pair(e.img_scale, "img_scale", (4 * min(crop), min(crop)))
    if task == SEG:
        scales = tuple(float(r) for r in e.scales) if e.mode == "multiscale" else (1.0,)
        if not scales or min(scales) <= 0:
            raise ValueError(f"eval.scales must be positive ratios, got {tuple(e.scales)}.")
        flip = bool(e.flip) and e.mode == "multiscale"
    else:
        if e.mode == "multiscale":
            raise ValueError("eval.mode='multiscale' is a segmentation protocol: depth is scored with VPD's "
                             "sliding windows and flip (eval.mode='single', eval.flip=True).")
        scales, flip = (1.0,), bool(e.flip)
    return Protocol(task, e.mode, crop, stride, img_scale, scales, flip)


class ValImages:
    """Full-resolution validation examples of a trainer dataset, as the protocols score them.

    ``load(i)`` gives ``image`` uint8 [H, W, 3] and ``label`` uint8 [H, W] (reduced, 255 =
    ignore) or ``depth`` float32 [H, W] metres plus ``mask`` (the Eigen crop for NYUv2, else all
    True). Reads ADE20K / NYUv2 files through their sources' file lists, and synthetic examples
    straight from the generator (their full resolution is the crop size).
    """

    def __init__(self, dataset, num_images: int = 0) -> None:
        from iedp_jax.data import folders  # noqa: PLC0415
        from iedp_jax.data.datasets import SyntheticSource  # noqa: PLC0415

        self.dataset = dataset
        self.task = dataset.task
        if isinstance(dataset, folders.ADE20KSource):
            self.kind, n = "ade20k", len(dataset.val_files)
        elif isinstance(dataset, folders.NYUv2Source):
            self.kind, n = "nyu", len(dataset.val_files)
        elif isinstance(dataset, SyntheticSource):
            self.kind, n = "synthetic", dataset.num_val
        else:
            raise ValueError(f"the evaluation protocols read full-resolution images from ADE20K, NYUv2 or the "
                             f"synthetic sets, not from {type(dataset).__name__}.")
        self.num = n if num_images <= 0 else min(n, int(num_images))

    def __len__(self) -> int:
        return self.num

    def size(self, i: int) -> tuple[int, int]:
        """``(H, W)`` of example ``i`` (from the file header; nothing is decoded)."""
        from PIL import Image  # noqa: PLC0415

        if self.kind == "synthetic":
            s = self.dataset.data.image_size
            return s, s
        with Image.open(self.dataset.val_files[i][0]) as im:
            w, h = im.size
        return h, w

    def name(self, i: int) -> str:
        if self.kind == "ade20k":
            return Path(self.dataset.val_files[i][0]).stem
        if self.kind == "nyu":
            rgb = Path(self.dataset.val_files[i][0])
            return f"{rgb.parent.name}_{rgb.stem}"
        return f"val_{i:05d}"

    def load(self, i: int) -> dict[str, np.ndarray]:
        from iedp_jax.data import folders  # noqa: PLC0415
        from iedp_jax.data import transforms as T  # noqa: PLC0415

        if self.kind == "ade20k":
            img_path, ann_path = self.dataset.val_files[i]
            image, label = folders.load_rgb(img_path), folders.load_label(ann_path)
            if image.shape[:2] != label.shape:
                raise ValueError(f"{img_path} is {image.shape[:2]} but its annotation {ann_path} is {label.shape}.")
            return {"image": image, "label": T.reduce_zero_label(label)}
        if self.kind == "nyu":
            rgb, dep = self.dataset.val_files[i][:2]
            image, depth = folders.load_rgb(rgb), folders.load_depth_png(dep)
            if image.shape[:2] != depth.shape:
                raise ValueError(f"{rgb} is {image.shape[:2]} but its depth {dep} is {depth.shape}.")
            return {"image": image, "depth": depth, "mask": T.eigen_crop_mask(*depth.shape)}
        ex = self.dataset.data.example("val", i)
        if self.task == SEG:
            return {"image": np.asarray(ex["image"], np.uint8), "label": np.asarray(ex["label"], np.uint8)}
        depth = np.asarray(ex["depth"], np.float32)
        return {"image": np.asarray(ex["image"], np.uint8), "depth": depth, "mask": np.ones(depth.shape, bool)}


@dataclasses.dataclass
class Group:
    """Images evaluated by one compiled shape: one orientation (landscape h <= w, or portrait)."""

    name: str
    indices: list[int]                      # sorted: most windows first
    sizes: dict[int, tuple[int, int]]       # original (H, W)
    resized: dict[int, list[tuple[int, int]]]   # per scale
    windows: dict[int, list[np.ndarray]]        # per scale, slide_grid offsets
    canvases: list[tuple[int, int]]         # per scale (Hc, Wc)
    max_windows: list[int]                  # per scale K
    label_size: tuple[int, int]             # (Hl, Wl)


def plan_groups(sizes: Sequence[tuple[int, int]], protocol: Protocol) -> list[Group]:
    """Host-side plan: per image and scale, the resized size and the window offsets; images
    grouped by orientation, each group with canvas sizes that fit all its images."""
    from iedp_jax.inference import eval_resize_hw, slide_grid  # noqa: PLC0415

    groups: dict[str, Group] = {}
    for i, (h, w) in enumerate(sizes):
        key = "landscape" if h <= w else "portrait"
        g = groups.setdefault(key, Group(key, [], {}, {}, {}, [], [], (0, 0)))
        g.indices.append(i)
        g.sizes[i] = (h, w)
        rs = [eval_resize_hw((h, w), protocol.img_scale, r) if protocol.task == SEG else (h, w)
              for r in protocol.scales]
        g.resized[i] = rs
        g.windows[i] = [slide_grid(r, protocol.crop, protocol.stride) for r in rs]
    ch, cw = protocol.crop
    out = []
    for key in ("landscape", "portrait"):
        if key not in groups:
            continue
        g = groups[key]
        g.indices.sort(key=lambda i: (-sum(len(o) for o in g.windows[i]), i))
        for s in range(len(protocol.scales)):
            g.canvases.append((max(max(g.resized[i][s][0] for i in g.indices), ch),
                               max(max(g.resized[i][s][1] for i in g.indices), cw)))
            g.max_windows.append(max(len(g.windows[i][s]) for i in g.indices))
        g.label_size = (max(g.sizes[i][0] for i in g.indices), max(g.sizes[i][1] for i in g.indices))
        out.append(g)
    return out


def _batches(group: Group, batch_size: int) -> Iterator[list[int]]:
    for start in range(0, len(group.indices), batch_size):
        chunk = group.indices[start:start + batch_size]
        yield chunk + [-1] * (batch_size - len(chunk))


def _pad_into(a: np.ndarray, size: tuple[int, int], value) -> np.ndarray:
    out = np.full(tuple(size) + a.shape[2:], value, a.dtype)
    out[: a.shape[0], : a.shape[1]] = a
    return out


def _row(valset: ValImages, group: Group, protocol: Protocol, index: int, ignore_index: int
         ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray] | None]:
    """One row of a batch (host arrays) and the example itself (None for a padding row)."""
    from iedp_jax.data import transforms as T  # noqa: PLC0415

    seg = protocol.task == SEG
    row: dict[str, np.ndarray] = {}
    ex = valset.load(index) if index >= 0 else None
    for s in range(len(protocol.scales)):
        canvas, k = group.canvases[s], group.max_windows[s]
        offsets = np.zeros((k, 2), np.int32)
        valid = np.zeros((k,), bool)
        if ex is None:
            image, hw = np.zeros(canvas + (3,), np.uint8), (1, 1)
        else:
            hw = group.resized[index][s]
            image = _pad_into(T.resize_image(ex["image"], hw), canvas, 0)
            win = group.windows[index][s]
            offsets[: len(win)], valid[: len(win)] = win, True
        row.update({f"image{s}": image, f"hw{s}": np.asarray(hw, np.int32), f"offsets{s}": offsets,
                    f"valid{s}": valid})
    hl = group.label_size
    row["label_hw"] = np.asarray(group.sizes[index] if ex is not None else (1, 1), np.int32)
    if seg:
        row["label"] = (_pad_into(ex["label"], hl, ignore_index) if ex is not None
                        else np.full(hl, ignore_index, np.uint8))
    else:
        row["depth"] = _pad_into(ex["depth"], hl, 0.0) if ex is not None else np.zeros(hl, np.float32)
        row["mask"] = _pad_into(ex["mask"], hl, False) if ex is not None else np.zeros(hl, bool)
    return row, ex


def _local_rows(x: jax.Array) -> np.ndarray:
    """This process's rows of a batch-sharded array, in order (no transfer of other rows)."""
    parts: dict[int, np.ndarray] = {}
    for shard in x.addressable_shards:
        start = shard.index[0].start or 0
        if start not in parts:
            parts[start] = np.asarray(shard.data)
    return np.concatenate([parts[k] for k in sorted(parts)])


def run_protocol(model: IEDP, params: PyTree, frozen: PyTree, dataset, mesh, cfg: ConfigDict,
                 out_dir: str | os.PathLike | None = None) -> dict:
    """Scores ``params`` with the protocol of ``cfg.eval`` over the full-resolution validation
    split (the first ``eval.num_images``), batched over all devices, metrics accumulated on
    device. Writes ``eval.num_visualizations`` PNGs under ``out_dir/images`` when given.
    Returns the metrics plus ``mode``, ``protocol`` and ``num_images``."""
    from tqdm.auto import tqdm  # noqa: PLC0415

    from iedp_jax.infra import visualize  # noqa: PLC0415
    from iedp_jax.inference import depth_windows, segmentation_pass  # noqa: PLC0415

    c = model.config
    seg = c.task == SEG
    protocol = protocol_from_config(cfg, c.task)
    valset = ValImages(dataset, int(cfg.eval.num_images))
    n = len(valset)
    if n == 0:
        raise ValueError("the validation split is empty: nothing to evaluate.")
    devices = mesh.devices.size
    batch_size = int(cfg.eval.batch_size) or devices
    if batch_size % devices:
        raise ValueError(f"eval.batch_size={batch_size} must be a multiple of the {devices} devices "
                         "(0 = one image per device).")
    rows = sharding.process_rows(batch_size)
    batch_sh, repl = sharding.batch_sharding(mesh), sharding.replicated(mesh)
    groups = plan_groups([valset.size(i) for i in range(n)], protocol)
    num_vis = int(cfg.eval.num_visualizations)
    image_dir = Path(out_dir) / "images" if out_dir is not None else None
    colours = visualize.palette(max(c.num_classes, 1))
    pred_dtype = jnp.uint8 if c.num_classes <= 256 else jnp.int32
    min_depth, max_depth = float(cfg.data.min_depth), float(c.max_depth)

    def predict(params, frozen, x):
        return model.predict(params, frozen, x)

    def seg_pass(probs, params, frozen, images, hw, offsets, valid, flip, label_hw):
        p = segmentation_pass(lambda x: predict(params, frozen, x), images, hw, offsets, valid, flip,
                              label_hw, probs.shape[1:3], protocol.crop)
        return probs + p

    def seg_finish(acc, probs, label):
        pred = jnp.argmax(probs, axis=-1)
        return acc + confusion_matrix(pred, label, c.num_classes, c.ignore_index), pred.astype(pred_dtype)

    def depth_step(acc, params, frozen, images, offsets, valid, depth, mask):
        pred = depth_windows(lambda x: predict(params, frozen, x), images, offsets, valid, protocol.crop,
                             protocol.flip)
        pred = pred[:, : depth.shape[1], : depth.shape[2]]
        sums = depth_metric_sums(pred, depth, min_depth, max_depth, mask)
        return jax.tree.map(jnp.add, acc, sums), pred

    seg_pass_j = Synchronized(jax.jit(seg_pass, donate_argnums=(0,), out_shardings=batch_sh), "seg pass")
    seg_finish_j = Synchronized(jax.jit(seg_finish, donate_argnums=(0,), out_shardings=(repl, batch_sh)), "seg finish")
    depth_step_j = Synchronized(jax.jit(depth_step, donate_argnums=(0,), out_shardings=(repl, batch_sh)), "depth step")
    zeros: dict[tuple[int, ...], Any] = {}

    def zeros_like_shape(shape: tuple[int, ...]) -> jax.Array:
        if shape not in zeros:
            zeros[shape] = jax.jit(lambda: jnp.zeros(shape, jnp.float32), out_shardings=batch_sh)
        return zeros[shape]()

    acc = jax.device_put(zero_metrics(c.num_classes if seg else None), repl)

    pool = ThreadPoolExecutor(max(1, config_threads(cfg.data.get("num_workers", -1))), thread_name_prefix="iedp-eval")
    total = sum(-(-len(g.indices) // batch_size) for g in groups)
    bar = tqdm(total=total, desc=f"eval ({protocol.mode})", unit="batch", dynamic_ncols=True,
               disable=jax.process_index() != 0)
    try:
        for group in groups:
            for chunk in _batches(group, batch_size):
                local = chunk[rows]
                made = list(pool.map(lambda i: _row(valset, group, protocol, i, c.ignore_index), local))
                host = {k: np.stack([r[k] for r, _ in made]) for k in made[0][0]}
                batch = sharding.global_batch(mesh, host)
                if seg:
                    probs = zeros_like_shape((batch_size, *group.label_size, c.num_classes))
                    for s, flip in protocol.passes:
                        probs = seg_pass_j(probs, params, frozen, batch[f"image{s}"], batch[f"hw{s}"],
                                           batch[f"offsets{s}"], batch[f"valid{s}"], jnp.bool_(flip),
                                           batch["label_hw"])
                    acc, pred = seg_finish_j(acc, probs, batch["label"])
                    del probs
                else:
                    acc, pred = depth_step_j(acc, params, frozen, batch["image0"], batch["offsets0"],
                                             batch["valid0"], batch["depth"], batch["mask"])
                wanted = [(r, i) for r, i in enumerate(local) if 0 <= i < num_vis]
                if wanted and image_dir is not None:
                    got = _local_rows(pred)
                    for r, i in wanted:
                        ex = made[r][1]
                        h, w = group.sizes[i]
                        path = image_dir / f"{i:05d}_{valset.name(i)}.png"
                        if seg:
                            visualize.write_segmentation_panel(path, ex["image"], got[r, :h, :w], ex["label"],
                                                               colours, ignore_index=c.ignore_index)
                        else:
                            gt = np.where(ex["mask"], ex["depth"], 0.0)
                            visualize.write_depth_panel(path, ex["image"], got[r, :h, :w], gt)
                bar.update(1)
    finally:
        bar.close()
        pool.shutdown(wait=True)
    acc = jax.device_get(acc)
    if seg:
        results = segmentation_metrics(np.asarray(acc, np.int64), dataset.class_names)
    else:
        results = depth_metrics(acc)
    results.update(mode=protocol.mode, protocol=protocol.describe(), num_images=n)
    return results


# ---------------------------------------------------------------------------------- checkpoints


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
            raise FileNotFoundError(
                f"the checkpoint folder {path} does not exist: pass a step folder such as {default / '2000'}, "
                f"or leave --checkpoint out to use the latest checkpoint in {default}.")
        if path.name.isdigit():
            return path.parent, int(path.name)
        steps = _step_folders(path)
        if not steps:
            raise FileNotFoundError(f"{path} is neither a checkpoint step folder (named by its step, e.g. "
                                    f"{path / '2000'}) nor a folder holding them.")
        return path, steps[-1]
    steps = _step_folders(default) if default.is_dir() else []
    if not steps:
        raise FileNotFoundError(f"there is no checkpoint in {default}: train into this workdir first "
                                "(python -m iedp_jax.train) or pass --checkpoint=PATH/TO/checkpoints/STEP.")
    return default, steps[-1]


def restore_params(directory: str | os.PathLike, step: int, abstract_params: PyTree) -> tuple[PyTree, int]:
    """The trained parameters of ``step`` (born with the shardings of ``abstract_params``) and
    the step counter, read through a read-only orbax manager.

    Only ``params`` and ``step`` are read (orbax partial restore): the AdamW moments, twice the
    parameters' size, never reach a device. Unlike :class:`~iedp_jax.infra.checkpoint.Checkpointer`
    the manager never cleans temporary folders, so it is safe next to a run still saving there.
    """
    import orbax.checkpoint as ocp  # noqa: PLC0415
    from absl import logging  # noqa: PLC0415

    options = ocp.CheckpointManagerOptions(read_only=True, create=False, save_interval_steps=0,
                                           max_to_keep=None)
    verbosity = logging.get_verbosity()
    logging.set_verbosity(logging.ERROR)  # orbax warns "Given directory is read only" on every read
    try:
        manager = ocp.CheckpointManager(os.path.abspath(directory), options=options, item_names=("state", "data", "meta"))
    finally:
        logging.set_verbosity(verbosity)
    mesh = jax.tree.leaves(abstract_params)[0].sharding.mesh
    target = {"step": jax.ShapeDtypeStruct((), jnp.int32, sharding=sharding.replicated(mesh)),
              "params": abstract_params}
    try:
        out = manager.restore(int(step), args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
            item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target), partial_restore=True)))
    finally:
        manager.close()
    return out["state"]["params"], int(jax.device_get(out["state"]["step"]))


def evaluate_checkpoint(config: ConfigDict, workdir: str | os.PathLike,
                        checkpoint: str | os.PathLike | None = None, mesh=None) -> dict:
    """Restores the parameters of a checkpoint of ``workdir`` and scores them with the protocol
    of ``config.eval``; writes ``workdir/eval/results.json`` (and ``results_<mode>.json``) and
    prediction PNGs under ``workdir/eval/images``.

    Args:
      config: the training config (``configs/*.py`` with overrides); ``config.eval`` picks the
        protocol (``mode`` single|multiscale, ``num_images``, ``num_visualizations``, ...).
      workdir: the training workdir (checkpoints in ``workdir/checkpoints``).
      checkpoint: a step folder (``workdir/checkpoints/2000``) or a folder of them; default the
        latest step of ``workdir/checkpoints``.
      mesh: a ``('data', 'fsdp')`` mesh; default ``config.mesh.shape`` over all devices.

    Returns:
      The metrics, with ``step``, ``checkpoint``, ``mode``, ``protocol`` and ``num_images``.
    """
    from iedp_jax.builder import build_model
    from iedp_jax.infra.logs import log_line  # noqa: PLC0415
    from iedp_jax.data.datasets import make_dataset  # noqa: PLC0415
    from iedp_jax.train import abstract_params  # noqa: PLC0415 - train imports this module

    workdir = Path(workdir)
    directory, step = resolve_checkpoint(workdir, checkpoint)
    # fail on a bad eval section before loading any weight (the dataset decides the task later)
    protocol_from_config(config, DEPTH if config.data.name in ("nyu", "synthetic_depth") else SEG)
    mesh = mesh or sharding.make_mesh(tuple(config.mesh.shape))
    dataset = make_dataset(config.data, seed=config.seed)
    model, unet_params, frozen = build_model(config, dataset, workdir)
    abstract = abstract_params(model, unet_params, frozen, tuple(config.data.crop_size), config.seed)
    del unet_params  # the checkpoint's UNet replaces the pretrained one
    abstract = jax.tree.map(lambda x, sh: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh), abstract,
                            sharding.tree_shardings(mesh, abstract))
    frozen = sharding.put(frozen, sharding.tree_shardings(mesh, frozen))
    log_line(f"restoring step {step} from {directory}")
    params, trained_steps = restore_params(directory, step, abstract)
    out_dir = workdir / "eval"
    results = run_protocol(model, params, frozen, dataset, mesh, config, out_dir=out_dir)
    results = {"step": trained_steps, "checkpoint": str(directory / str(step)), **results}
    if jax.process_index() == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
        text = json.dumps(results, indent=2)
        (out_dir / "results.json").write_text(text)
        (out_dir / f"results_{results['mode']}.json").write_text(text)
    headline = ("mIoU", "aAcc") if model.config.task == SEG else ("rmse", "abs_rel", "delta1")
    log_line(f"{results['mode']} ({results['num_images']} images, step {results['step']}): "
             + ", ".join(f"{k}={results[k]:.4f}" for k in headline) + f" -> {out_dir / 'results.json'}")
    return results


def main(config: ConfigDict, workdir: str, flag_values: dict) -> None:
    """The ``python -m iedp_jax.evaluate`` entry (errors are one line: :func:`iedp_jax.infra.cli.run`)."""
    evaluate_checkpoint(config, workdir, flag_values.get("checkpoint") or None)


def _define_flags() -> None:
    from absl import flags  # noqa: PLC0415

    flags.DEFINE_string("checkpoint", None, "A checkpoint step folder (WORKDIR/checkpoints/STEP) or a folder of "
                        "them; default: the latest step in WORKDIR/checkpoints.")


if __name__ == "__main__":
    from iedp_jax.infra.cli import run

    run(main, _define_flags)
