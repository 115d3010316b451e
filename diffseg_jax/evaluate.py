"""DiffSegmenter on a benchmark: ``python -m diffseg_jax.evaluate --config configs/diffseg_voc.py --workdir DIR``.

Config: an ml_collections file (``configs/diffseg_{voc,context,coco}.py``, built on
:func:`diffseg_jax.config.default_config`), ``--config.a.b=value`` overrides. Writes
``DIR/results.json`` and ``DIR/candidates.jsonl`` (each image's candidate classes, to inspect the
filtering).

Per image (DESIGN.md 4): candidate classes (``filtering.mode``: ``'clip'`` the CLIP category
filter of :mod:`diffseg_jax.filtering`, plus caption nouns when ``captions`` is given; ``'all'``
every class of the dataset; ``'given'`` the classes present in the image's ground truth, an
**oracle upper bound**, labelled as such in the results), one prompt per candidate, one noised
latent shared by its classes, per-class maps, background = a constant threshold.

How the batch is laid out:

- **Images** are batched (``eval.batch_size``, default one per device) and sharded over every
  device along the batch (``iedp_jax.infra.sharding``: each process loads only its rows). Every
  image is edge-padded on the host into one fixed canvas (the largest height and width of the
  evaluated images), so one compiled shape serves the whole dataset; inside ``jit`` it is resized
  to ``image_size`` (bilinear, half-pixel centres, no antialiasing: the original's
  ``F.interpolate``) from each image's own region (:func:`~diffseg_jax.attention.resize_regions`,
  reads clamped to the region as ``F.interpolate`` clamps them).
- **Classes** go through the UNet ``eval.classes_per_call`` at a time (a fixed K; padding
  classes are masked by ``valid``): all candidates of a batch take ``ceil(max K_b / K)`` calls on
  the image latents computed once per batch. Memory grows with ``batch x K`` UNet rows (about
  3 GiB per row for SD 1.5 at 512 px, see :mod:`diffseg_jax.pipeline`). Classes are independent
  given the latent, so the split changes nothing in the result.
- **Label resolution**: each class map (at the refinement side, 64x64 for 512 px) is resized in
  ``jit`` to the image's own size inside the fixed canvas
  (:meth:`~diffseg_jax.pipeline.DiffSegmenter.class_maps` with ``image_hw``), min-max normalised
  over that region, and folded into a running per-pixel (best score, best class); the label map
  at any threshold t is ``best class where best score > t, else background``, which equals the
  argmax over ``[t, class maps]`` (ties to the background, then to the lower class). Canvas pixels
  outside the image carry the ignore label.
- **Metrics**: one confusion matrix per threshold (the fixed ``diffseg.threshold`` first, then
  ``eval.sweep_thresholds``) from the same maps, summed over batches on the host in int64.
  ``results.json`` holds mIoU, per-class IoU (all classes, background included), aAcc, mAcc,
  images/s, the threshold, the filtering mode and a one-line ``protocol``; a non-empty sweep is a
  separate ``threshold_sweep`` entry (a threshold picked on the evaluation split itself is
  optimistic).

:func:`evaluate` reads top to bottom: :func:`setup` (config, dataset, models), :func:`run_batches`
(per batch: :func:`candidates`, then the jitted steps of :class:`EvalFns`), :func:`results` and
:func:`write`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from ml_collections import ConfigDict
from tqdm.auto import tqdm

from diffseg_jax.builders import make_prepared_dataset
from diffseg_jax.config import DATA_FORMATS, diffseg_config, filter_mode, jnp_dtype
from diffseg_jax.datasets import IGNORE_INDEX, SegDataset, benchmark, make_dataset
from diffseg_jax.filtering import CLIPFilter, candidate_classes, load_clip_filter
from diffseg_jax.pipeline import DiffSegmenter, load_diffsegmenter
from diffseg_jax.prompts import ClassPrompts, empty_prompt_ids, read_captions
from iedp_jax.infra import cli, sharding
from iedp_jax.infra.compile import Synchronized
from iedp_jax.infra.errors import ConfigError, InputError
from iedp_jax.infra.metrics import confusion_matrix, segmentation_metrics
from iedp_jax.infra.threads import config_threads
from iedp_jax.sd.weights import WeightsError

Params = dict[str, Any]
ORACLE_NOTE = ("oracle: the candidate classes of each image are read from its ground-truth label, an upper bound "
               "on category filtering, not an open-vocabulary result")
SWEEP_NOTE = ("mIoU at each background threshold from the same class maps; the best one is chosen on this split, "
              "so it is optimistic and reported apart from the fixed-threshold result")

__all__ = ["EvalFns", "Run", "candidates", "evaluate", "labels_at", "open_dataset", "results", "run_batches", "setup",
           "update_best", "write"]


# ----------------------------------------------------------------------------------------------
# Jittable pieces.


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
        canvas_hw = tuple(int(x) for x in canvas_hw)
        batch_sh, repl = sharding.batch_sharding(mesh), sharding.replicated(mesh)

        def latents(params, images, hw, index, seed):  # images [B, Hc, Wc, 3] edge-padded, hw [B, 2]
            return seg.noised_latents(params, images, seed, index, hw)

        def chunk(params, lat, ids, tw, pos, valid, class_ids, hw, best, arg):
            maps = seg.class_maps(params, lat, ids, tw, pos, canvas_hw, hw)  # [B, K, Hc, Wc]
            return update_best(best, arg, maps, valid.astype(bool), class_ids)

        def finish(best, arg, label, thresholds):  # -> [T, C, C]
            def conf(t):
                return confusion_matrix(labels_at(best, arg, t), label, num_classes, ignore_index)
            return jax.vmap(conf)(thresholds)

        def init(b):
            return jnp.full((b,) + canvas_hw, -jnp.inf, jnp.float32), jnp.zeros((b,) + canvas_hw, jnp.int32)

        self.latents = Synchronized(jax.jit(latents, out_shardings=batch_sh), "latents")
        self.chunk = Synchronized(jax.jit(chunk, donate_argnums=(8, 9), out_shardings=(batch_sh, batch_sh)), "chunk")
        self.finish = Synchronized(jax.jit(finish, out_shardings=repl), "finish")
        self.init = jax.jit(init, static_argnums=0, out_shardings=(batch_sh, batch_sh))


# ----------------------------------------------------------------------------------------------
# Setup.


@dataclasses.dataclass
class Run:
    """Everything one evaluation needs, from :func:`setup`."""

    config: ConfigDict
    mode: str                      # filtering.mode
    ds: SegDataset
    seg: DiffSegmenter
    params: Params
    clip: tuple[CLIPFilter, Params] | None  # mode 'clip' only
    captions: dict[str, str]       # image file name or id -> caption
    mesh: Any
    batch_size: int                # images per step over all devices
    classes_per_call: int          # K
    canvas: tuple[int, int]        # (Hc, Wc): the largest height and width
    thresholds: list[float]        # the fixed threshold, then the sweep
    fns: EvalFns


def open_dataset(data: ConfigDict) -> SegDataset:
    """The validation reader of ``data.name``: the prepared tfds copy or the folder itself."""
    fmt = str(data.format)
    if fmt not in DATA_FORMATS:
        raise ConfigError(f"data.format={fmt!r} is not known: use one of {', '.join(DATA_FORMATS)}.")
    split = str(data.split).strip() or None
    if fmt == "folders":
        return make_dataset(str(data.name), data.data_dir, split, int(data.num_images))
    b = benchmark(str(data.name))
    if split not in (None, b.split):
        raise ConfigError(f"data.split={data.split!r}: the tfds format prepares the validation split {b.split!r} "
                          "only; use data.format='folders' for other splits.")
    return make_prepared_dataset(b.key, data.data_dir, str(data.tfds_dir) or None, int(data.num_images))


def _read_captions(path: str) -> dict[str, str]:
    if not path.strip():
        return {}
    p = Path(path).expanduser()
    if not p.is_file():
        raise InputError(f"the captions file {str(p)!r} does not exist (config.captions; write one with "
                         "python -m diffseg_jax.captions, or leave it empty).")
    return read_captions(p)


def setup(config: ConfigDict, mesh=None) -> Run:
    """Checks ``config``, opens the dataset and loads the models (nothing is compiled yet).

    Raises:
      ConfigError, DatasetError, InputError, WeightsError: one sentence each.
    """
    mode = filter_mode(str(config.filtering.mode))
    if mode == "clip" and not str(config.filtering.clip_path).strip():
        raise ConfigError("filtering.mode='clip' needs filtering.clip_path, a local CLIP model folder (e.g. "
                          "openai/clip-vit-large-patch14 saved with save_pretrained); or use filtering.mode='all'.")
    if not str(config.pretrained).strip():
        raise ConfigError("config.pretrained is empty: set it to a local Stable Diffusion 1.5 folder "
                          "(diffusers layout).")
    dtype = jnp_dtype(config.dtype)
    dcfg = diffseg_config(config)
    ds = open_dataset(config.data)
    mesh = sharding.make_mesh(tuple(config.mesh.shape)) if mesh is None else mesh
    batch_size = sharding.batch_per_step(config.eval.batch_size, mesh, "eval.batch_size")
    k_call = int(config.eval.classes_per_call) or (ds.num_classes - 1)
    if k_call < 1:
        raise ConfigError(f"eval.classes_per_call must be positive (0 = all classes), got {k_call}.")
    captions = _read_captions(str(config.captions))

    seg, params = load_diffsegmenter(config.pretrained, dcfg, dtype=dtype)
    params = jax.device_put(params, sharding.replicated(mesh))
    clip = None
    if mode == "clip":
        f = config.filtering
        clip = load_clip_filter(f.clip_path, template=str(f.template), ratio=float(f.ratio),
                                noun_threshold=float(f.noun_threshold))
    sizes = [ds.size(i) for i in range(ds.num_images)]
    canvas = (max(h for h, _ in sizes), max(w for _, w in sizes))
    return Run(config=config, mode=mode, ds=ds, seg=seg, params=params, clip=clip, captions=captions, mesh=mesh,
               batch_size=batch_size, classes_per_call=k_call, canvas=canvas,
               thresholds=[dcfg.threshold] + [float(t) for t in config.eval.sweep_thresholds],
               fns=EvalFns(seg, mesh, canvas, ds.num_classes, ds.ignore_index))


# ----------------------------------------------------------------------------------------------
# Per batch.


def candidates(run: Run, examples: list[tuple[np.ndarray, np.ndarray, str]], captions: list[str | None]
               ) -> list[list[int]]:
    """The candidate dataset labels (1..C-1) of each example ``(image, label, name)`` by
    ``filtering.mode`` ('given': the labels present in its ground truth)."""
    if not examples:
        return []
    given = None
    if run.mode == "given":  # indices into prompt_names = label - 1
        given = [[int(v) - 1 for v in np.unique(label) if 1 <= v < run.ds.num_classes] for _, label, _ in examples]
    clip_filter, clip_params = run.clip or (None, None)
    picked = candidate_classes(run.mode, run.ds.prompt_names, len(examples), images=[ex[0] for ex in examples],
                               given=given, clip_filter=clip_filter, params=clip_params, captions=captions)
    return [[c + 1 for c in p] for p in picked]


class _PromptRows:
    """Encoded prompt rows per (class, caption): without captions a dataset is encoded once."""

    def __init__(self, run: Run, limit: int = 50_000) -> None:
        self.seg, self.names, self.limit = run.seg, run.ds.prompt_names, limit
        self.cache: dict[tuple[int, str | None], tuple[np.ndarray, ...]] = {}

    def __call__(self, classes: list[int], caption: str | None) -> ClassPrompts:
        if len(self.cache) > self.limit:
            self.cache.clear()
        missing = [c for c in classes if (c, caption) not in self.cache]
        if missing:
            enc = self.seg.encode_prompts([self.names[c - 1] for c in missing], caption)
            for j, c in enumerate(missing):
                self.cache[(c, caption)] = (enc.ids[j], enc.token_weights[j], enc.class_positions[j])
        return ClassPrompts(*(np.stack(x) for x in zip(*(self.cache[(c, caption)] for c in classes))))


def _pad(a: np.ndarray, canvas_hw: tuple[int, int], mode: str, value: int = 0) -> np.ndarray:
    widths = ((0, canvas_hw[0] - a.shape[0]), (0, canvas_hw[1] - a.shape[1])) + ((0, 0),) * (a.ndim - 2)
    if mode == "edge":
        return np.pad(a, widths, mode="edge")
    return np.pad(a, widths, mode="constant", constant_values=value)


def _caption(run: Run, i: int) -> str | None:
    """The caption of example ``i``, keyed by its image file name or its id."""
    for key in (run.ds.file_name(i), run.ds.name(i)):
        if key in run.captions:
            return run.captions[key]
    return None


def _agree_max(value: int) -> int:
    """The maximum of ``value`` over all processes (every process must make the same calls)."""
    if jax.process_count() == 1:
        return int(value)
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


def _batch(run: Run, local: list[int], examples: list, prompt_rows: _PromptRows, thresholds: jax.Array,
           empty_ids: np.ndarray) -> tuple[jax.Array, list[dict]]:
    """One batch: this process's rows ``local`` (dataset indices, -1 = padding) and their decoded
    ``examples`` -> (the batch's confusion matrices [T, C, C] on device, candidate log entries)."""
    ds, canvas = run.ds, run.canvas
    real = [r for r, ex in enumerate(examples) if ex is not None]
    caps = [_caption(run, i) if i >= 0 else None for i in local]
    classes: list[list[int]] = [[] for _ in local]
    for r, cls in zip(real, candidates(run, [examples[r] for r in real], [caps[r] for r in real])):
        classes[r] = cls
    prompts = [prompt_rows(cls, caps[r]) if cls else None for r, cls in enumerate(classes)]
    log = [{"image": ds.name(local[r]), "classes": [ds.class_names[c] for c in classes[r]]} for r in real]

    # Each image edge-padded onto the canvas, its label padded with the ignore label; a padding
    # row is a 1x1 black image with an ignored label (it counts for nothing).
    blank = (np.zeros((1, 1, 3), np.uint8), np.full((1, 1), ds.ignore_index, np.uint8))
    pairs = [blank if ex is None else ex[:2] for ex in examples]
    host = {"images": np.stack([_pad(image, canvas, "edge") for image, _ in pairs]),
            "hw": np.asarray([image.shape[:2] for image, _ in pairs], np.int32),
            "index": np.asarray([max(i, 0) for i in local], np.int32),
            "labels": np.stack([_pad(label, canvas, "constant", ds.ignore_index) for _, label in pairs])}
    batch = sharding.global_batch(run.mesh, host)
    fns, k = run.fns, run.classes_per_call
    lat = fns.latents(run.params, batch["images"], batch["hw"], batch["index"], run.seg.config.noise_seed)
    best, arg = fns.init(run.batch_size)
    for c in range(math.ceil(_agree_max(max(map(len, classes), default=0)) / k)):
        a = sharding.global_batch(run.mesh, _chunk_arrays(prompts, classes, c * k, k, empty_ids))
        best, arg = fns.chunk(run.params, lat, a["ids"], a["tw"], a["pos"], a["valid"], a["class_ids"], batch["hw"],
                              best, arg)
    return fns.finish(best, arg, batch["labels"], thresholds), log


@dataclasses.dataclass
class Tally:
    """What :func:`run_batches` counted."""

    conf: np.ndarray            # [T, C, C] int64, one confusion matrix per threshold
    candidates: list[dict]      # {"image", "classes"} of this process's images
    seconds: float
    first_batch_s: float        # includes the compilation


def run_batches(run: Run) -> Tally:
    """Every batch in order, decoding the next one in a thread pool while this one runs."""
    ds, bs = run.ds, run.batch_size
    n = ds.num_images
    rows = sharding.process_rows(bs)
    num_batches = -(-n // bs)
    thresholds = jnp.asarray(run.thresholds, jnp.float32)
    prompt_rows, empty_ids = _PromptRows(run), empty_prompt_ids(run.seg.tokenizer)
    conf = np.zeros((len(run.thresholds), ds.num_classes, ds.num_classes), np.int64)
    log: list[dict] = []
    pool = ThreadPoolExecutor(max(1, config_threads(run.config.data.num_workers)), thread_name_prefix="diffseg-eval")

    def submit(bi: int) -> tuple[list[int], list[Future | None]]:
        """Starts decoding this process's rows of batch ``bi`` (-1: a padding row)."""
        idx = list(range(bi * bs, min((bi + 1) * bs, n)))
        local = (idx + [-1] * (bs - len(idx)))[rows]
        return local, [pool.submit(ds.load, i) if i >= 0 else None for i in local]

    bar = tqdm(total=n, desc=f"diffseg {ds.key} ({run.mode})", unit="img", dynamic_ncols=True,
               disable=jax.process_index() != 0)
    start = time.perf_counter()
    first_batch_s = 0.0
    pending = None  # the previous batch's confusion matrices, fetched after the next batch is queued
    try:
        upcoming = submit(0)
        for bi in range(num_batches):
            local, futures = upcoming
            if bi + 1 < num_batches:
                upcoming = submit(bi + 1)
            examples = [None if f is None else f.result() for f in futures]
            batch_conf, entries = _batch(run, local, examples, prompt_rows, thresholds, empty_ids)
            log += entries
            if pending is not None:
                conf += np.asarray(jax.device_get(pending), np.int64)
            pending = batch_conf
            if bi == 0:  # the first batch includes the compilation: time it apart
                conf += np.asarray(jax.device_get(pending), np.int64)
                pending, first_batch_s = None, time.perf_counter() - start
            bar.update(min(bs, n - bi * bs))
        if pending is not None:
            conf += np.asarray(jax.device_get(pending), np.int64)
    finally:
        bar.close()
        pool.shutdown(wait=True, cancel_futures=True)
    return Tally(conf, log, time.perf_counter() - start, first_batch_s)


# ----------------------------------------------------------------------------------------------
# Results.


def _protocol(run: Run) -> str:
    """One line saying what the numbers are."""
    b, ds = run.ds.benchmark, run.ds
    how = {"clip": "the CLIP category filter" + (" and caption nouns" if run.captions else ""),
           "all": "every class of the dataset",
           "given": "each image's ground-truth classes (an oracle upper bound)"}[run.mode]
    return (f"{b.title} {str(run.config.data.split) or b.split} ({ds.num_images} images), mIoU over "
            f"{ds.num_classes} classes with the background, label {ds.ignore_index} ignored, at each image's full "
            f"resolution; background = the constant threshold {run.thresholds[0]:g}; candidate classes: {how}.")


def results(run: Run, tally: Tally) -> dict:
    """The results dict (see the module docstring) from the summed confusion matrices."""
    ds, dcfg, config = run.ds, run.seg.config, run.config
    n = ds.num_images
    metrics = segmentation_metrics(tally.conf[0], ds.class_names)
    steady = None
    if n > run.batch_size:
        steady = (n - run.batch_size) / max(tally.seconds - tally.first_batch_s, 1e-9)
    counts = [len(c["classes"]) for c in tally.candidates]
    out: dict[str, Any] = {
        "dataset": ds.key,
        "protocol": _protocol(run),
        "num_images": n,
        "num_classes": ds.num_classes,
        "filtering": run.mode,
        **({"filtering_note": ORACLE_NOTE} if run.mode == "given" else {}),
        "threshold": float(dcfg.threshold),
        "mIoU": metrics["mIoU"],
        "aAcc": metrics["aAcc"],
        "mAcc": metrics["mAcc"],
        "IoU": metrics["IoU"],
        "Acc": metrics["Acc"],
        "images_per_s": n / tally.seconds,
        "images_per_s_after_first_batch": steady,
        "seconds": tally.seconds,
        "mean_candidates": float(np.mean(counts)) if counts else 0.0,
        "published_mIoU": float(config.published_miou) / 100.0,
        "setup": {"pretrained": str(config.pretrained), "image_size": dcfg.image_size, "timestep": dcfg.timestep,
                  "token_weight": dcfg.token_weight, "template": dcfg.template(), "noise_seed": dcfg.noise_seed,
                  "batch_size": run.batch_size, "classes_per_call": run.classes_per_call, "canvas": list(run.canvas),
                  "devices": int(run.mesh.devices.size), "dtype": str(config.dtype), "captions": str(config.captions)},
    }
    sweep = run.thresholds[1:]
    if sweep:
        per = [segmentation_metrics(tally.conf[j + 1], ds.class_names) for j in range(len(sweep))]
        best = int(np.argmax([m["mIoU"] for m in per]))
        out["threshold_sweep"] = {"note": SWEEP_NOTE, "thresholds": sweep, "mIoU": [m["mIoU"] for m in per],
                                  "aAcc": [m["aAcc"] for m in per], "best_threshold": sweep[best],
                                  "best_mIoU": per[best]["mIoU"]}
    return out


def write(workdir: str | os.PathLike, results: dict, candidate_log: list[dict]) -> None:
    """``workdir/results.json`` (process 0) and each process's candidate classes
    (``candidates.jsonl``, ``candidates_p<i>.jsonl`` with several processes)."""
    out = Path(workdir)
    out.mkdir(parents=True, exist_ok=True)
    if jax.process_index() == 0:
        (out / "results.json").write_text(json.dumps(results, indent=2))
    name = "candidates.jsonl" if jax.process_count() == 1 else f"candidates_p{jax.process_index()}.jsonl"
    (out / name).write_text("".join(json.dumps(c) + "\n" for c in candidate_log))


def evaluate(config: ConfigDict, workdir: str | os.PathLike | None = None, mesh=None) -> dict:
    """Evaluates DiffSegmenter as ``config`` says; writes ``workdir/results.json`` when given.

    Returns:
      The results dict (see the module docstring).

    Raises:
      UserError (ConfigError, DatasetError, InputError, MissingDependency) / WeightsError: one
      sentence each, for a wrong config value, folder or file.
    """
    run = setup(config, mesh)
    tally = run_batches(run)
    out = results(run, tally)
    if workdir is not None:
        write(workdir, out, tally.candidates)
    return out


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
    cli.run(main, prefix="diffseg", user_errors=(WeightsError,))
