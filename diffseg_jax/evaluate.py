"""DiffSegmenter on a benchmark: ``python -m diffseg_jax.evaluate --config configs/diffseg_voc.py --workdir DIR``.

Config: an ml_collections file (``configs/diffseg_{voc,context,coco}.py``, built on
:func:`default_config`), ``--config.a.b=value`` overrides. Writes ``DIR/results.json`` and
``DIR/candidates.jsonl`` (each image's candidate classes, to inspect the filtering).

Per image (DESIGN.md 4): candidate classes (``filtering.mode``: ``'clip'`` the CLIP category
filter of :mod:`diffseg_jax.filtering`, plus caption nouns when ``captions`` is given; ``'all'``
every class of the dataset; ``'gt'`` the classes present in the ground truth, an **oracle upper
bound**, labelled as such in the results), one prompt per candidate, one noised latent shared by
its classes, per-class maps, background = a constant threshold.

How the batch is laid out:

- **Images** are batched (``eval.batch_size``, default one per device) and sharded over every
  device along the batch (``iedp_jax.infra.sharding``: each process loads only its rows). Every image is
  edge-padded on the host into one fixed canvas (the largest height and width of the evaluated
  images), so one compiled shape serves the whole dataset; inside ``jit`` it is resized to
  ``image_size`` (bilinear, half-pixel centres, no antialiasing: the original's
  ``F.interpolate``) with a per-image scale (``jax.image.scale_and_translate``; the edge padding
  makes reads past the image's last row/column repeat it, exactly as ``F.interpolate``'s clamp).
- **Classes** go through the UNet ``eval.classes_per_call`` at a time (a fixed K; padding
  classes are masked by ``valid``): all candidates of a batch take ``ceil(max K_b / K)`` calls on
  the image latents computed once per batch. Memory grows with ``batch x K`` UNet rows (about
  3 GiB per row for SD 1.5 at 512 px, see :mod:`diffseg_jax.pipeline`). Classes are independent
  given the latent, so the split changes nothing in the result.
- **Label resolution**: each class map (at the refinement side, 64x64 for 512 px) is resized in
  ``jit`` to the image's own size inside the fixed canvas (``scale_and_translate`` with scale
  ``H_i / 64``: the same samples as resizing to ``(H_i, W_i)``), min-max normalised over that
  region, and folded into a running per-pixel (best score, best class); the label map at any
  threshold t is ``best class where best score > t, else background``, which equals the argmax
  over ``[t, class maps]`` (ties to the background, then to the lower class). Canvas pixels outside
  the image carry the ignore label.
- **Metrics**: one confusion matrix per threshold (the fixed ``diffseg.threshold`` first, then
  ``eval.sweep_thresholds``) from the same maps, summed over batches on the host in int64.
  ``results.json`` holds mIoU, per-class IoU (all classes, background included), aAcc, mAcc,
  images/s, the threshold and the filtering mode; a non-empty sweep is a separate
  ``threshold_sweep`` entry (a threshold picked on the evaluation split itself is optimistic).
"""

from __future__ import annotations

import json
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import ConfigDict

from diffseg_jax.attention import class_maps_from_attention
from diffseg_jax.config import DiffSegConfig
from diffseg_jax.datasets import IGNORE_INDEX, PUBLISHED_MIOU, SegFolder, make_dataset
from diffseg_jax.pipeline import DiffSegmenter
from diffseg_jax.prompts import ClassPrompts
from iedp_jax.infra import sharding
from iedp_jax.infra.compile import Synchronized
from iedp_jax.infra.metrics import confusion_matrix, segmentation_metrics

Params = dict[str, Any]
FILTER_MODES = ("clip", "all", "gt")
GT_NOTE = ("oracle: the candidate classes of each image are read from its ground-truth label, an upper bound "
           "on category filtering, not an open-vocabulary result")

__all__ = ["FILTER_MODES", "EvalFns", "default_config", "evaluate", "labels_at", "maps_to_canvas", "resize_images",
           "update_best"]


# ----------------------------------------------------------------------------------------------
# The config.


def open_dataset(data: ConfigDict) -> SegFolder:
    """The validation reader of ``data.name``: the prepared tfds copy or the folder itself."""
    fmt = str(data.get("format", "folders"))
    if fmt == "tfds":
        if str(data.split).strip() not in ("", "val", "val2017"):
            raise ValueError(f"data.split={data.split!r}: the tfds format prepares the validation split only; "
                             "use data.format='folders' for other splits.")
        from diffseg_jax.builders import make_prepared_dataset  # noqa: PLC0415 - optional deps

        return make_prepared_dataset(str(data.name), data.data_dir, str(data.tfds_dir) or None, int(data.num_images))
    if fmt != "folders":
        raise ValueError(f"data.format={fmt!r} is not known: use 'tfds' or 'folders'.")
    return make_dataset(str(data.name), data.data_dir, str(data.split) or None, int(data.num_images))


def default_config(dataset: str = "voc") -> ConfigDict:
    """Every key ``python -m diffseg_jax.evaluate`` reads, with the paper's settings for ``dataset``."""
    c = ConfigDict()
    c.pretrained = ""            # Stable Diffusion 1.5 folder (diffusers layout)
    c.dtype = "float32"          # compute dtype of the UNet / VAE / text encoder: float32 | bfloat16
    c.data = ConfigDict(dict(
        name=dataset,            # voc | context | coco
        data_dir="",             # the folder holding the dataset (see diffseg_jax.datasets)
        split="",                # '' = val (val2017 for coco)
        num_images=0,            # evaluate the first N images only; 0 = all
        format="tfds",           # tfds (prepared array_record copy, built on first use) | folders
        tfds_dir="",             # where tfds prepares and reads it; "" = $TFDS_DATA_DIR or ~/tensorflow_datasets
    ))
    d = DiffSegConfig()
    c.diffseg = ConfigDict(dict(
        image_size=d.image_size,
        timestep=d.timestep,
        noise_seed=d.noise_seed,
        token_weight=d.token_weight,
        threshold=d.threshold,   # the fixed background threshold of the reported result
        cross_resolutions=d.cross_resolutions,
        self_attn_stride=d.self_attn_stride,
        strict_resolutions=d.strict_resolutions,
        ing_rule=d.ing_rule,
        self_attn_dtype=d.self_attn_dtype,
    ))
    c.filtering = ConfigDict(dict(
        mode="clip",             # clip | all | gt (gt = oracle upper bound)
        clip_path="",            # full CLIP folder (openai/clip-vit-large-patch14 saved locally), mode clip
        ratio=0.97,
        noun_threshold=0.8,
        template="A photo of a {}",
    ))
    c.captions = ""              # JSON lines {"image": "<file name>", "caption": ...}: prompts + noun filter
    c.eval = ConfigDict(dict(
        batch_size=0,            # images per step over all devices; 0 = one per device
        classes_per_call=8,      # K: candidate classes per UNet call (batch_size x K UNet rows)
        sweep_thresholds=(),     # e.g. (0.3, 0.35, ..., 0.7): reported apart, as threshold_sweep
        num_workers=8,           # image decoding threads per process
    ))
    c.mesh = ConfigDict(dict(shape=(-1, 1)))
    c.published_miou = PUBLISHED_MIOU.get(dataset, 0.0)  # %, for the log line and results.json
    return c


def _diffseg_config(config: ConfigDict) -> DiffSegConfig:
    d = config.diffseg
    return DiffSegConfig(image_size=int(d.image_size), timestep=int(d.timestep), noise_seed=int(d.noise_seed),
                         token_weight=float(d.token_weight), threshold=float(d.threshold),
                         cross_resolutions=tuple(tuple(x) for x in d.cross_resolutions),
                         self_attn_stride=int(d.self_attn_stride), strict_resolutions=bool(d.strict_resolutions),
                         ing_rule=bool(d.ing_rule), self_attn_dtype=str(d.self_attn_dtype),
                         dataset=str(config.data.name))


# ----------------------------------------------------------------------------------------------
# Jittable pieces.


def resize_images(images: jax.Array, hw: jax.Array, size: int) -> jax.Array:
    """Resizes the top-left ``hw[b]`` region of each edge-padded canvas to ``size x size``.

    Bilinear, half-pixel centres, no antialiasing (``F.interpolate(..., align_corners=False)``).
    Args: images [B, Hc, Wc, C] (any dtype), hw [B, 2] int. Returns float32 [B, size, size, C] in
    the input's value range.
    """

    def one(img, s):
        s = s.astype(jnp.float32)
        scale = jnp.stack([size / s[0], size / s[1]])
        return jax.image.scale_and_translate(img.astype(jnp.float32), (size, size, img.shape[-1]), (0, 1), scale,
                                             jnp.zeros(2, jnp.float32), method="linear", antialias=False)

    return jax.vmap(one)(images, hw)


def _region(hw: jax.Array, canvas_hw: tuple[int, int]) -> jax.Array:
    """[N, Hc, Wc] bool: True inside each image's top-left ``hw`` region."""
    ys = jnp.arange(canvas_hw[0])[None, :, None]
    xs = jnp.arange(canvas_hw[1])[None, None, :]
    return (ys < hw[:, 0, None, None]) & (xs < hw[:, 1, None, None])


def maps_to_canvas(maps: jax.Array, hw: jax.Array, canvas_hw: tuple[int, int], eps: float = 1e-12) -> jax.Array:
    """Class maps at their own side -> each image's size inside a fixed canvas, min-max normalised.

    Args:
      maps: [N, s, s] (any values).
      hw: [N, 2] int, each map's image size (H_i, W_i) <= canvas.
      canvas_hw: static (Hc, Wc).

    Returns:
      [N, Hc, Wc] float32: inside ``[:H_i, :W_i]`` exactly ``minmax(resize(maps, (H_i, W_i)))``
      (bilinear, no antialiasing), 0 outside.
    """
    side_h, side_w = maps.shape[-2:]

    def one(m, s):
        s = s.astype(jnp.float32)
        scale = jnp.stack([s[0] / side_h, s[1] / side_w])
        return jax.image.scale_and_translate(m.astype(jnp.float32), canvas_hw, (0, 1), scale,
                                             jnp.zeros(2, jnp.float32), method="linear", antialias=False)

    out = jax.vmap(one)(maps, hw)
    inside = _region(hw, canvas_hw)
    lo = jnp.where(inside, out, jnp.inf).min(axis=(1, 2), keepdims=True)
    hi = jnp.where(inside, out, -jnp.inf).max(axis=(1, 2), keepdims=True)
    return jnp.where(inside, (out - lo) / jnp.maximum(hi - lo, eps), 0.0)


def update_best(best: jax.Array, arg: jax.Array, maps: jax.Array, valid: jax.Array, class_ids: jax.Array
                ) -> tuple[jax.Array, jax.Array]:
    """Folds a chunk of class maps into the running per-pixel maximum.

    Args:
      best, arg: [B, H, W] the best score so far (-inf at first) and its class id.
      maps: [B, K, H, W]; valid: [B, K] bool; class_ids: [B, K] int, the dataset label of each
        map. Within a chunk ties go to the lower k; across chunks to the earlier chunk.
    """
    scores = jnp.where(valid[:, :, None, None], maps.astype(jnp.float32), -jnp.inf)
    cmax = scores.max(axis=1)
    carg = jnp.argmax(scores, axis=1)  # first maximum
    cid = jnp.take_along_axis(class_ids.astype(jnp.int32), carg.reshape(carg.shape[0], -1), axis=1)
    cid = cid.reshape(carg.shape)
    better = cmax > best
    return jnp.where(better, cmax, best), jnp.where(better, cid, arg)


def labels_at(best: jax.Array, arg: jax.Array, threshold: float | jax.Array) -> jax.Array:
    """The label map at a background threshold: ``arg`` where ``best > threshold``, else 0."""
    return jnp.where(best > threshold, arg, 0).astype(jnp.int32)


class EvalFns:
    """The jitted steps of one evaluation: latents per batch, class chunks, confusion matrices."""

    def __init__(self, seg: DiffSegmenter, mesh, canvas_hw: tuple[int, int], num_classes: int,
                 ignore_index: int = IGNORE_INDEX) -> None:
        self.seg = seg
        self.canvas_hw = tuple(int(x) for x in canvas_hw)
        self.num_classes = int(num_classes)
        batch_sh, repl = sharding.batch_sharding(mesh), sharding.replicated(mesh)
        self.batch_sharding, self.replicated = batch_sh, repl
        size = seg.config.image_size

        def latents(params, images, hw, index, seed):
            x = resize_images(images, hw, size)  # float [B, S, S, 3] in 0..255
            return seg.noised_latents(params, x, seed, index)

        def chunk(params, lat, ids, tw, pos, valid, class_ids, hw, best, arg):
            maps = self.class_maps(params, lat, ids, tw, pos, hw)
            return update_best(best, arg, maps, valid.astype(bool), class_ids)

        def finish(best, arg, label, thresholds):
            def conf(t):
                return confusion_matrix(labels_at(best, arg, t), label, self.num_classes, ignore_index)
            return jax.vmap(conf)(thresholds)

        def init(b):
            return (jnp.full((b,) + self.canvas_hw, -jnp.inf, jnp.float32),
                    jnp.zeros((b,) + self.canvas_hw, jnp.int32))

        self.latents = Synchronized(jax.jit(latents, out_shardings=batch_sh), "latents")
        self.chunk = Synchronized(jax.jit(chunk, donate_argnums=(8, 9), out_shardings=(batch_sh, batch_sh)), "chunk")
        self.finish = Synchronized(jax.jit(finish, out_shardings=repl), "finish")
        self.init = jax.jit(init, static_argnums=0, out_shardings=(batch_sh, batch_sh))

    def class_maps(self, params: Params, lat: jax.Array, ids: jax.Array, tw: jax.Array, pos: jax.Array,
                   hw: jax.Array) -> jax.Array:
        """[B, K, Hc, Wc] class maps on the canvas (unjitted; what ``chunk`` folds in).

        ``lat`` [B, h, w, 4] noised latents; ``ids``, ``tw``, ``pos`` [B, K, L]; ``hw`` [B, 2].
        Steps 2-4 of the method as :meth:`DiffSegmenter.apply` runs them, with the final resize
        going to each image's own size inside the canvas.
        """
        seg = self.seg
        b, k, length = ids.shape
        lat = jnp.repeat(lat, k, axis=0)  # the K classes share their image's latent
        context = seg.text_context(params, ids.reshape(b * k, length), pos.reshape(b * k, length).astype(bool))
        cross, self_sum, count = seg.attention(params, lat, context)
        self_mean = self_sum if count == 1 else (self_sum.astype(jnp.float32) / count).astype(self_sum.dtype)
        side = seg.self_side
        maps = class_maps_from_attention(cross, self_mean, tw.reshape(b * k, length), seg.cross_resolutions,
                                         (side, side), seg.config.eps)
        maps = maps_to_canvas(maps, jnp.repeat(hw, k, axis=0), self.canvas_hw, seg.config.eps)
        return maps.reshape((b, k) + self.canvas_hw)


# ----------------------------------------------------------------------------------------------
# Host side.


def _pad(a: np.ndarray, canvas_hw: tuple[int, int], mode: str, value: int = 0) -> np.ndarray:
    ph, pw = canvas_hw[0] - a.shape[0], canvas_hw[1] - a.shape[1]
    widths = ((0, ph), (0, pw)) + ((0, 0),) * (a.ndim - 2)
    if mode == "edge":
        return np.pad(a, widths, mode="edge")
    return np.pad(a, widths, mode="constant", constant_values=value)


def _caption(captions: dict[str, str], ds: SegFolder, i: int) -> str | None:
    if not captions:
        return None
    path = ds.image_path(i)
    for key in (path.name, ds.name(i), path.stem, str(path)):
        if key in captions:
            return captions[key]
    return None


def _agree_max(value: int) -> int:
    """The maximum of ``value`` over all processes (every process must make the same calls)."""
    if jax.process_count() == 1:
        return int(value)
    from jax.experimental import multihost_utils  # noqa: PLC0415

    return int(np.max(multihost_utils.process_allgather(np.asarray(value, np.int32))))


def _chunk_arrays(prompts: list, classes: list[list[int]], start: int, k: int, empty_ids: np.ndarray
                  ) -> dict[str, np.ndarray]:
    """Rows' classes ``[start, start + k)`` as fixed [B, k, L] arrays (padding: empty prompt, invalid)."""
    b, length = len(classes), empty_ids.shape[0]
    ids = np.broadcast_to(empty_ids, (b, k, length)).copy()
    tw = np.zeros((b, k, length), np.float32)
    pos = np.zeros((b, k, length), bool)
    valid = np.zeros((b, k), bool)
    cid = np.zeros((b, k), np.int32)
    for r, (p, cls) in enumerate(zip(prompts, classes)):
        sl = slice(start, min(start + k, len(cls)))
        n = sl.stop - sl.start
        if n <= 0:
            continue
        ids[r, :n], tw[r, :n], pos[r, :n] = p.ids[sl], p.token_weights[sl], p.class_positions[sl]
        valid[r, :n], cid[r, :n] = True, cls[sl]
    return {"ids": ids, "tw": tw, "pos": pos, "valid": valid, "class_ids": cid}


def evaluate(config: ConfigDict, workdir: str | os.PathLike | None = None, mesh=None) -> dict:
    """Evaluates DiffSegmenter as ``config`` says; writes ``workdir/results.json`` when given.

    Returns:
      The results dict (see the module docstring).

    Raises:
      DatasetError / WeightsError (both one sentence) for wrong folders; ValueError for a wrong
      config value.
    """
    from tqdm.auto import tqdm  # noqa: PLC0415

    from diffseg_jax.pipeline import load_diffsegmenter  # noqa: PLC0415
    from diffseg_jax.prompts import empty_prompt_ids, read_captions  # noqa: PLC0415

    mode = str(config.filtering.mode)
    if mode not in FILTER_MODES:
        raise ValueError(f"filtering.mode {mode!r} is not one of {', '.join(FILTER_MODES)}.")
    if mode == "clip" and not str(config.filtering.clip_path).strip():
        raise ValueError("filtering.mode='clip' needs filtering.clip_path, a local CLIP model folder (e.g. "
                         "openai/clip-vit-large-patch14 saved with save_pretrained); or use filtering.mode='all'.")
    if not str(config.pretrained).strip():
        raise ValueError("config.pretrained is empty: set it to a local Stable Diffusion 1.5 folder "
                         "(diffusers layout).")
    sweep = [float(t) for t in config.eval.sweep_thresholds]
    dcfg = _diffseg_config(config)
    ds = open_dataset(config.data)
    n = ds.num_images
    num_classes = ds.num_classes
    dtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}.get(str(config.dtype))
    if dtype is None:
        raise ValueError(f"dtype {config.dtype!r} is not float32 or bfloat16.")

    mesh = sharding.make_mesh(tuple(config.mesh.shape)) if mesh is None else mesh
    devices = mesh.devices.size
    batch_size = int(config.eval.batch_size) or devices
    if batch_size % devices:
        raise ValueError(f"eval.batch_size={batch_size} must be a multiple of the {devices} devices "
                         "(0 = one image per device).")
    k_call = int(config.eval.classes_per_call) or (num_classes - 1)
    if k_call < 1:
        raise ValueError(f"eval.classes_per_call must be positive (0 = all classes), got {k_call}.")
    rows = sharding.process_rows(batch_size)

    seg, params = load_diffsegmenter(config.pretrained, dcfg, dtype=dtype)
    params = jax.device_put(params, sharding.replicated(mesh))
    clip = clip_params = None
    if mode == "clip":
        from diffseg_jax.filtering import load_clip_filter  # noqa: PLC0415

        clip, clip_params = load_clip_filter(config.filtering.clip_path, template=str(config.filtering.template),
                                             ratio=float(config.filtering.ratio),
                                             noun_threshold=float(config.filtering.noun_threshold))
    captions: dict[str, str] = {}
    if str(config.captions).strip():
        cap_path = Path(str(config.captions)).expanduser()
        if not cap_path.is_file():
            raise FileNotFoundError(f"the captions file {str(cap_path)!r} does not exist (config.captions; write one "
                                    "with python -m diffseg_jax.captions, or leave it empty).")
        captions = read_captions(cap_path)
    empty_ids = empty_prompt_ids(seg.tokenizer)

    sizes = [ds.size(i) for i in range(n)]
    canvas = (max(h for h, _ in sizes), max(w for _, w in sizes))
    fns = EvalFns(seg, mesh, canvas, num_classes, ds.ignore_index)
    thresholds = jnp.asarray([dcfg.threshold] + sweep, jnp.float32)
    conf = np.zeros((len(thresholds), num_classes, num_classes), np.int64)
    num_candidates: list[int] = []
    candidate_log: list[dict] = []

    def load(i: int):
        if i < 0:
            return None
        return ds.load(i)

    pool = ThreadPoolExecutor(max(1, int(config.eval.num_workers)), thread_name_prefix="diffseg-eval")
    num_batches = -(-n // batch_size)
    prompt_cache: dict[tuple[int, str | None], tuple[np.ndarray, ...]] = {}

    def class_prompts(cls: list[int], caption: str | None):
        """The rows of ``cls`` (cached per class and caption: 'all' without captions encodes once)."""
        if len(prompt_cache) > 50_000:
            prompt_cache.clear()
        missing = [c for c in cls if (c, caption) not in prompt_cache]
        if missing:
            enc = seg.encode_prompts([ds.prompt_names[c - 1] for c in missing], caption)
            for j, c in enumerate(missing):
                prompt_cache[(c, caption)] = (enc.ids[j], enc.token_weights[j], enc.class_positions[j])
        rows = [prompt_cache[(c, caption)] for c in cls]
        return ClassPrompts(*(np.stack(x) for x in zip(*rows)))

    def submit(bi: int):
        """Starts decoding batch ``bi`` (this process's rows) in the thread pool."""
        idx = list(range(bi * batch_size, min((bi + 1) * batch_size, n)))
        idx += [-1] * (batch_size - len(idx))
        local = idx[rows]
        return idx, local, [pool.submit(load, i) for i in local]

    bar = tqdm(total=n, desc=f"diffseg {ds.key} ({mode})", unit="img", dynamic_ncols=True,
               disable=jax.process_index() != 0)
    start = time.perf_counter()
    first_batch_s = None
    pending = None  # the previous batch's confusion matrices, fetched after the next batch is queued
    try:
        upcoming = submit(0)
        for bi in range(num_batches):
            chunk_idx, local, futures = upcoming
            if bi + 1 < num_batches:
                upcoming = submit(bi + 1)  # decode the next batch while this one runs
            examples = [f.result() for f in futures]
            images, hws, labels, classes, prompts, caps = [], [], [], [], [], []
            for i, ex in zip(local, examples):
                if ex is None:  # padding row: counts for nothing
                    images.append(np.zeros(canvas + (3,), np.uint8))
                    hws.append((1, 1))
                    labels.append(np.full(canvas, ds.ignore_index, np.uint8))
                    caps.append(None)
                    continue
                image, label, _ = ex
                images.append(_pad(image, canvas, "edge"))
                hws.append(image.shape[:2])
                labels.append(_pad(label, canvas, "constant", ds.ignore_index))
                caps.append(_caption(captions, ds, i))
            real = [(r, ex) for r, ex in enumerate(examples) if ex is not None]
            if mode == "all":
                cand = {r: list(range(1, num_classes)) for r, _ in real}
            elif mode == "gt":
                cand = {r: [int(v) for v in np.unique(ex[1]) if 1 <= v < num_classes] for r, ex in real}
            else:
                picked = clip.select(clip_params, [ex[0] for _, ex in real], list(ds.prompt_names),
                                     [caps[r] for r, _ in real]) if real else []
                cand = {r: [c + 1 for c in p] for (r, _), p in zip(real, picked)}
            for r in range(len(local)):
                cls = cand.get(r, [])
                classes.append(cls)
                prompts.append(class_prompts(cls, caps[r]) if cls else None)
                if r in cand:
                    num_candidates.append(len(cls))
                    candidate_log.append({"image": ds.name(local[r]), "classes": [ds.class_names[c] for c in cls]})
            host = {"images": np.stack(images), "hw": np.asarray(hws, np.int32),
                    "index": np.asarray([max(i, 0) for i in local], np.int32), "labels": np.stack(labels)}
            batch = sharding.global_batch(mesh, host)
            lat = fns.latents(params, batch["images"], batch["hw"], batch["index"], dcfg.noise_seed)
            best, arg = fns.init(batch_size)
            calls = math.ceil(_agree_max(max((len(c) for c in classes), default=0)) / k_call)
            for c in range(calls):
                arrays = sharding.global_batch(mesh, _chunk_arrays(prompts, classes, c * k_call, k_call, empty_ids))
                best, arg = fns.chunk(params, lat, arrays["ids"], arrays["tw"], arrays["pos"], arrays["valid"],
                                      arrays["class_ids"], batch["hw"], best, arg)
            batch_conf = fns.finish(best, arg, batch["labels"], thresholds)
            if pending is not None:
                conf += np.asarray(jax.device_get(pending), np.int64)
            pending = batch_conf
            if first_batch_s is None:  # the first batch includes the compilation: time it apart
                conf += np.asarray(jax.device_get(pending), np.int64)
                pending = None
                first_batch_s = time.perf_counter() - start
            bar.update(sum(1 for i in chunk_idx if i >= 0))
        if pending is not None:
            conf += np.asarray(jax.device_get(pending), np.int64)
    finally:
        bar.close()
        pool.shutdown(wait=True, cancel_futures=True)
    seconds = time.perf_counter() - start

    metrics = segmentation_metrics(conf[0], ds.class_names)
    steady = None
    if num_batches > 1:
        steady = (n - min(batch_size, n)) / max(seconds - first_batch_s, 1e-9)
    results: dict[str, Any] = {
        "dataset": ds.key,
        "num_images": n,
        "num_classes": num_classes,
        "filtering": mode,
        **({"filtering_note": GT_NOTE} if mode == "gt" else {}),
        "threshold": float(dcfg.threshold),
        "mIoU": metrics["mIoU"],
        "aAcc": metrics["aAcc"],
        "mAcc": metrics["mAcc"],
        "IoU": metrics["IoU"],
        "Acc": metrics["Acc"],
        "images_per_s": n / seconds,
        "images_per_s_after_first_batch": steady,
        "seconds": seconds,
        "mean_candidates": float(np.mean(num_candidates)) if num_candidates else 0.0,
        "published_mIoU": float(config.published_miou) / 100.0,
        "setup": {"pretrained": str(config.pretrained), "image_size": dcfg.image_size, "timestep": dcfg.timestep,
                  "token_weight": dcfg.token_weight, "template": dcfg.template(), "noise_seed": dcfg.noise_seed,
                  "batch_size": batch_size, "classes_per_call": k_call, "canvas": list(canvas),
                  "devices": devices, "dtype": str(config.dtype), "captions": str(config.captions)},
    }
    if sweep:
        per = [segmentation_metrics(conf[j + 1], ds.class_names) for j in range(len(sweep))]
        best_j = int(np.argmax([m["mIoU"] for m in per]))
        results["threshold_sweep"] = {
            "note": ("mIoU at each background threshold from the same class maps; the best one is chosen on this "
                     "split, so it is optimistic and reported apart from the fixed-threshold result"),
            "thresholds": sweep,
            "mIoU": [m["mIoU"] for m in per],
            "aAcc": [m["aAcc"] for m in per],
            "best_threshold": sweep[best_j],
            "best_mIoU": per[best_j]["mIoU"],
        }
    if workdir is not None:
        out = Path(workdir)
        out.mkdir(parents=True, exist_ok=True)
        if jax.process_index() == 0:
            (out / "results.json").write_text(json.dumps(results, indent=2))
        # The candidate classes of this process's images (one file per process when several).
        name = "candidates.jsonl" if jax.process_count() == 1 else f"candidates_p{jax.process_index()}.jsonl"
        (out / name).write_text("".join(json.dumps(c) + "\n" for c in candidate_log))
    return results


def main(config: ConfigDict, workdir: str, flag_values: dict) -> None:
    """The ``python -m diffseg_jax.evaluate`` entry: a wrong folder or config value is one line
    (:func:`iedp_jax.infra.cli.run`)."""
    r = evaluate(config, workdir)
    if jax.process_index() == 0:
        extra = ""
        if "threshold_sweep" in r:
            s = r["threshold_sweep"]
            extra = f"; sweep best {100 * s['best_mIoU']:.1f} at t={s['best_threshold']:g} (optimistic)"
        print(f"[diffseg] {r['dataset']} ({r['num_images']} images, filtering {r['filtering']}): "
              f"mIoU {100 * r['mIoU']:.1f} at t={r['threshold']:g} (published {100 * r['published_mIoU']:.1f}), "
              f"aAcc {100 * r['aAcc']:.1f}, {r['images_per_s']:.2f} images/s{extra} -> "
              f"{Path(workdir) / 'results.json'}")


if __name__ == "__main__":
    from iedp_jax.infra.cli import run

    run(main, prefix="diffseg")
