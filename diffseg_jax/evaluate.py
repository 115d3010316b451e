"""DiffSegmenter on a benchmark: ``python -m diffseg_jax.evaluate --config diffseg_voc --workdir DIR``.

Config: an ml_collections file (``diffseg_jax/configs/diffseg_{voc,context,coco}.py``, built on
:func:`diffseg_jax.config.default_config`), ``--config.a.b=value`` overrides. Writes
``DIR/results.json``, ``DIR/candidates.jsonl`` (each image's candidate classes, to inspect the
filtering, and any prompt that fell back to the plain template) and, with ``eval.save_images=N``,
``DIR/images/``: the first N images' overlays (``<id>_overlay.png``, the label map over the image
with a legend) and each candidate's refined attention map as a heat map (``<id>_heat_<class>.png``).

Per image (DESIGN.md 4): candidate classes (``filtering.mode``: ``'clip'`` the CLIP category
filter of :mod:`diffseg_jax.filtering`, with the caption-noun branch whenever the image has
captions; ``'all'`` every class of the dataset; ``'given'`` the lists of ``filtering.given_file``,
e.g. the original's ``predict_syn_txt_0.8_img_0.97.json``, or without a file the classes present
in the image's ground truth, an **oracle upper bound** labelled as such), one prompt per candidate
(``prompt_names``: the original's names or ours; with its per-class or per-image caption from
``captions``; a captioned prompt that cannot place its class token falls back to the plain
template, counted in ``prompt_fallbacks``), one noised latent shared by its classes, per-class
maps, background = a constant threshold.

How the batch is laid out:

- **Images** are batched (``eval.batch_size``, default one per device) and sharded over every
  device along the batch (``iedp_jax.infra.sharding``: each process loads only its rows). Every
  image is edge-padded on the host into one fixed canvas (the largest height and width of the
  evaluated images), so one compiled shape serves the whole dataset; inside ``jit`` it is resized
  to ``image_size`` (0 = the pipeline's native size; bilinear, half-pixel centres, no
  antialiasing: the original's ``F.interpolate``) from each image's own region
  (:func:`~diffseg_jax.attention.resize_regions`, reads clamped to the region as
  ``F.interpolate`` clamps them).
- **Rows.** A batch's (image, class) pairs are packed, image after image, into blocks of at most
  ``eval.rows_per_call`` UNet rows; each row gathers its image's latent
  (:meth:`~diffseg_jax.pipeline.DiffSegmenter.row_maps`), so the rows computed follow the
  candidates (1.3 / 2.1 / 1.6 per image with the original's candidate files), not ``batch x K``.
  With ``eval.bucket_rows`` a batch's last block is rounded up to a power of two (times the
  devices) instead of to ``rows_per_call``: a handful of compiled shapes, few padding rows.
  ``results.json`` reports ``rows_computed`` and ``rows_useful``. Classes are independent given
  the latent, so the packing changes nothing in the result.
- **Memory guard.** Before a row block runs its compiled program's memory (XLA's analysis, and a
  floor known before compiling) is compared with the device's free memory; a program that does
  not fit stops the run with one sentence naming ``diffseg.image_size`` and ``eval.rows_per_call``.
- **Label resolution**: each class map (at the refinement side, 64x64 for 512 px) is resized in
  ``jit`` to the image's own size inside the fixed canvas, min-max normalised over that region,
  and folded into a running per-pixel (best score, best class); the label map at any threshold t
  is ``best class where best score > t, else background``, which equals the argmax over
  ``[t, class maps]`` (ties to the background, then to the lower class). Canvas pixels outside the
  image carry the ignore label.
- **Metrics**: one confusion matrix per threshold (the fixed ``diffseg.threshold`` first, then
  ``eval.sweep_thresholds``, by default the paper's grid 0.30, 0.31, ..., 0.74) from the same
  maps, summed over batches on the host in int64. ``results.json`` holds mIoU, per-class IoU (all
  classes, background included), aAcc, mAcc, images/s, the threshold, the filtering mode and a
  one-line ``protocol``; the sweep is a separate ``threshold_sweep`` entry (a threshold picked on
  the evaluation split itself is optimistic). To fix the threshold on held-out data, evaluate a
  held-out split first (e.g. ``--config.data.split=train --config.data.format=folders``) and pass
  its ``results.json`` as ``eval.threshold_from``: its best swept threshold becomes
  ``diffseg.threshold`` (recorded as ``threshold_source``).
- **Unreadable images** (a corrupt or truncated file) are reported on stderr, skipped (they count
  for nothing) and listed in ``results.json`` as ``skipped_images``.

:func:`evaluate` reads top to bottom: :func:`setup` (config, dataset, models), :func:`run_batches`
(per batch: :func:`candidates`, the packed row blocks, then the jitted steps of :class:`EvalFns`),
:func:`results` and :func:`write`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from ml_collections import ConfigDict
from PIL import Image
from tqdm.auto import tqdm

from diffseg_jax.builders import make_prepared_dataset
from diffseg_jax.config import DATA_FORMATS, diffseg_config, filter_mode, jnp_dtype
from diffseg_jax.configs import FOLDER as CONFIGS
from diffseg_jax.datasets import IGNORE_INDEX, SegDataset, benchmark, make_dataset
from diffseg_jax.filtering import CLIPFilter, candidate_classes, image_key, load_clip_filter, read_given_file
from diffseg_jax.images import heat_map, overlay_with_legend, voc_palette
from diffseg_jax.pipeline import (
    DiffSegmenter,
    attention_floor_bytes,
    check_memory,
    compiled_bytes,
    load_diffsegmenter,
)
from diffseg_jax.prompts import CaptionKey, caption_for, caption_text, empty_prompt_ids, read_captions
from iedp_jax.infra import cli, sharding
from iedp_jax.infra.compile import Synchronized
from iedp_jax.infra.errors import ConfigError, DataValueError, InputError, UserError
from iedp_jax.infra.metrics import ABSENT_IOU, confusion_matrix, segmentation_metrics
from iedp_jax.infra.threads import config_threads
from iedp_jax.sd.weights import WeightsError

Params = dict[str, Any]
ORACLE_NOTE = ("oracle: the candidate classes of each image are read from its ground-truth label, an upper bound "
               "on category filtering, not an open-vocabulary result")
SWEEP_NOTE = ("mIoU at each background threshold from the same class maps; the best one is chosen on this split, "
              "so it is optimistic and reported apart from the fixed-threshold result")
MAX_LOGGED = 20  # fallbacks / skipped images listed in results.json (all are counted)

__all__ = ["EvalFns", "Run", "candidates", "evaluate", "labels_at", "open_dataset", "pack_rows", "results",
           "run_batches", "setup", "update_best", "write"]


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


def fold_rows(best: jax.Array, arg: jax.Array, maps: jax.Array, row_image: jax.Array, valid: jax.Array,
              class_ids: jax.Array) -> tuple[jax.Array, jax.Array]:
    """:func:`update_best` for a block of R rows of any images: row r's map [R, H, W] counts for
    image ``row_image[r]`` only (ties: the lower row, then the earlier block)."""
    b = best.shape[0]
    member = (row_image[None, :] == jnp.arange(b, dtype=row_image.dtype)[:, None]) & valid[None, :]  # [B, R]
    scores = jnp.where(member[:, :, None, None], maps[None].astype(jnp.float32), -jnp.inf)  # [B, R, H, W]
    return update_best(best, arg, scores, member, jnp.broadcast_to(class_ids[None, :], member.shape))


def labels_at(best: jax.Array, arg: jax.Array, threshold: float | jax.Array) -> jax.Array:
    """The label map at a background threshold: ``arg`` where ``best > threshold``, else 0."""
    return jnp.where(best > threshold, arg, 0).astype(jnp.int32)


def _guarded(jitted, name: str, what: Callable[[tuple], tuple[str, int]], advice: Callable[[], str]) -> Synchronized:
    """``jitted`` compiled once per input signature behind the memory guard
    (:func:`~diffseg_jax.pipeline.check_memory`): a floor known before compiling, then XLA's
    memory analysis of the compiled program, both before anything runs."""

    def before(args: tuple) -> None:
        desc, floor = what(args)
        check_memory(floor, desc, advice(), at_least=True)

    def after(args: tuple, compiled) -> None:
        check_memory(compiled_bytes(compiled), what(args)[0], advice())

    return Synchronized(jitted, name, before, after)


class EvalFns:
    """The jitted steps of one evaluation: latents per batch, row blocks, confusion matrices."""

    def __init__(self, seg: DiffSegmenter, mesh, canvas_hw: tuple[int, int], num_classes: int,
                 ignore_index: int = IGNORE_INDEX, advice: Callable[[], str] | None = None) -> None:
        canvas_hw = tuple(int(x) for x in canvas_hw)
        batch_sh, repl = sharding.batch_sharding(mesh), sharding.replicated(mesh)
        devices = int(mesh.devices.size)

        def latents(params, images, hw, index, seed):  # images [B, Hc, Wc, 3] edge-padded, hw [B, 2]
            return seg.noised_latents(params, images, seed, index, hw)

        def rows(params, lat, row_image, ids, tw, pos, valid, class_ids, hw, best, arg):
            maps = seg.row_maps(params, lat, row_image, ids, tw, pos, canvas_hw, hw)  # [R, Hc, Wc]
            best, arg = fold_rows(best, arg, maps, row_image, valid.astype(bool), class_ids)
            return best, arg, maps

        def finish(best, arg, label, thresholds):  # -> [T, C, C]
            def conf(t):
                return confusion_matrix(labels_at(best, arg, t), label, num_classes, ignore_index)
            return jax.vmap(conf)(thresholds)

        def init(b):
            return jnp.full((b,) + canvas_hw, -jnp.inf, jnp.float32), jnp.zeros((b,) + canvas_hw, jnp.int32)

        def what(args) -> tuple[str, int]:
            r = int(args[2].shape[0])
            per = max(1, r // devices)
            return (f"{r} UNet rows ({per} per device) at {seg.config.image_size} px (self-attention "
                    f"{seg.self_side}x{seg.self_side}) on a {canvas_hw[0]}x{canvas_hw[1]} canvas",
                    attention_floor_bytes(seg, per))

        self.latents = Synchronized(jax.jit(latents, out_shardings=batch_sh), "latents")
        self.rows = _guarded(jax.jit(rows, donate_argnums=(9, 10), out_shardings=(batch_sh, batch_sh, batch_sh)),
                             "rows", what, advice or (lambda: "lower diffseg.image_size or eval.rows_per_call"))
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
    captions: dict[CaptionKey, str]  # image (file name or id) [, class] -> caption
    mesh: Any
    batch_size: int                # images per step over all devices
    rows_per_call: int             # R: UNet rows per call at most (over all devices)
    canvas: tuple[int, int]        # (Hc, Wc): the largest height and width
    thresholds: list[float]        # the fixed threshold, then the sweep
    fns: EvalFns
    prompt_names: tuple[str, ...] = ()       # of labels 1..C-1 (config.prompt_names)
    bucket_rows: bool = True
    given: dict[str, list[int]] | None = None  # mode 'given' with a file: image id -> labels
    unreadable: dict[int, str] = dataclasses.field(default_factory=dict)  # found at setup: index -> reason
    threshold_source: dict | None = None
    image_captions: dict[str, list[tuple[str | None, str]]] = dataclasses.field(default_factory=dict)


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


def _read_captions(path: str) -> dict[CaptionKey, str]:
    if not path.strip():
        return {}
    p = Path(path).expanduser()
    if not p.is_file():
        raise InputError(f"the captions file {str(p)!r} does not exist (config.captions; write one with "
                         "python -m diffseg_jax.captions, or leave it empty).")
    return read_captions(p)


def _by_image(captions: dict[CaptionKey, str]) -> dict[str, list[tuple[str | None, str]]]:
    """``image -> [(class or None, caption)]`` (the caption-noun filter reads all of an image's)."""
    out: dict[str, list[tuple[str | None, str]]] = {}
    for key, text in captions.items():
        image, cls = (key, None) if isinstance(key, str) else key
        out.setdefault(image, []).append((cls, text))
    return out


def _split_name(config: ConfigDict, ds: SegDataset) -> str:
    return str(config.data.split).strip() or ds.benchmark.split


def _threshold_from(path: str, config: ConfigDict) -> tuple[float, dict] | None:
    """``eval.threshold_from``: the best swept threshold of a held-out run's results.json."""
    if not path.strip():
        return None
    p = Path(path).expanduser()
    if not p.is_file():
        raise InputError(f"eval.threshold_from {str(p)!r} does not exist: point it at the results.json of an "
                         "evaluation of a held-out split.")
    try:
        held = json.loads(p.read_text())
        best = float(held["threshold_sweep"]["best_threshold"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError):
        raise InputError(f"eval.threshold_from {str(p)!r} is not a diffseg_jax results.json with a threshold_sweep "
                         "(run the held-out evaluation with eval.sweep_thresholds set).") from None
    split = str(config.data.split).strip() or benchmark(str(config.data.name)).split
    if held.get("dataset") == str(config.data.name) and held.get("split") == split:
        raise ConfigError(f"eval.threshold_from {str(p)!r} picked its threshold on {held.get('dataset')} "
                          f"{held.get('split')}, the split evaluated now: pick it on a held-out split.")
    return best, {"results": str(p), "dataset": held.get("dataset"), "split": held.get("split"),
                  "num_images": held.get("num_images"), "best_threshold": best,
                  "best_mIoU": held["threshold_sweep"].get("best_mIoU")}


def setup(config: ConfigDict, mesh=None) -> Run:
    """Checks ``config``, opens the dataset and loads the models (nothing is compiled yet).

    Raises:
      ConfigError, DatasetError, InputError, WeightsError: one sentence each.
    """
    mode = filter_mode(str(config.filtering.mode))
    absent_class_iou(config)  # a bad value fails before any model loads
    if mode == "clip" and not str(config.filtering.clip_path).strip():
        raise ConfigError("filtering.mode='clip' needs filtering.clip_path, a local CLIP model folder (e.g. "
                          "openai/clip-vit-large-patch14 saved with save_pretrained); or use filtering.mode='all'.")
    given_file = str(config.filtering.given_file).strip()
    if given_file and mode != "given":
        raise ConfigError(f"filtering.given_file is set but filtering.mode={mode!r}: set filtering.mode=given to "
                          "replay it.")
    if given_file and not Path(given_file).expanduser().is_file():
        raise InputError(f"the candidate file {given_file!r} does not exist (filtering.given_file).")
    if not str(config.pretrained).strip():
        raise ConfigError("config.pretrained is empty: set it to a local Stable Diffusion 1.5 folder "
                          "(diffusers layout).")
    sweep = [float(t) for t in config.eval.sweep_thresholds]
    if not all(0.0 <= t <= 1.0 for t in sweep):
        raise ConfigError(f"eval.sweep_thresholds holds {[t for t in sweep if not 0.0 <= t <= 1.0]}, outside [0, 1] "
                          "(the class maps are normalised to [0, 1]).")
    dtype = jnp_dtype(config.dtype)
    dcfg = diffseg_config(config)
    picked = _threshold_from(str(config.eval.threshold_from), config)
    if picked is not None:
        dcfg = dataclasses.replace(dcfg, threshold=picked[0])
    ds = open_dataset(config.data)
    names = ds.benchmark.prompt_names_for(str(config.prompt_names))
    given = read_given_file(Path(given_file).expanduser(), ds.benchmark, tuple(config.filtering.given_keys)) \
        if given_file else None
    mesh = sharding.make_mesh(tuple(config.mesh.shape)) if mesh is None else mesh
    batch_size = sharding.batch_per_step(config.eval.batch_size, mesh, "eval.batch_size")
    rows = int(config.eval.rows_per_call)
    devices = int(mesh.devices.size)
    if rows <= 0 or rows % devices:
        raise ConfigError(f"eval.rows_per_call={rows} must be a positive multiple of the {devices} devices.")
    captions = _read_captions(str(config.captions))

    seg, params = load_diffsegmenter(config.pretrained, dcfg, dtype=dtype)
    params = jax.device_put(params, sharding.replicated(mesh))
    clip = None
    if mode == "clip":
        f = config.filtering
        clip = load_clip_filter(f.clip_path, template=str(f.template), ratio=float(f.ratio),
                                noun_threshold=float(f.noun_threshold))
    sizes, unreadable = [], {}
    for i in range(ds.num_images):
        try:
            sizes.append(ds.size(i))
        except Exception as e:
            unreadable[i] = f"cannot be read ({type(e).__name__}: {e})"
    if len(sizes) == 0:
        raise InputError(f"none of the {ds.num_images} images of {ds.benchmark.title} can be read.")
    canvas = (max(h for h, _ in sizes), max(w for _, w in sizes))
    native = seg.native_image_size

    def advice() -> str:
        return (f"lower diffseg.image_size (now {seg.config.image_size}; the pipeline's native size is "
                f"{'unknown' if native is None else native}) or eval.rows_per_call (now {rows})")

    return Run(config=config, mode=mode, ds=ds, seg=seg, params=params, clip=clip, captions=captions, mesh=mesh,
               batch_size=batch_size, rows_per_call=rows, canvas=canvas,
               thresholds=[dcfg.threshold] + [float(t) for t in config.eval.sweep_thresholds],
               fns=EvalFns(seg, mesh, canvas, ds.num_classes, ds.ignore_index, advice),
               prompt_names=names, bucket_rows=bool(config.eval.bucket_rows), given=given, unreadable=unreadable,
               threshold_source=None if picked is None else picked[1], image_captions=_by_image(captions))


# ----------------------------------------------------------------------------------------------
# Per batch.


def _keys(run: Run, i: int) -> list[str]:
    """The names image ``i`` may have in a caption or candidate file: its file name and its id."""
    return [run.ds.file_name(i), run.ds.name(i)]


def _noun_text(run: Run, i: int) -> str | None:
    """All that image ``i``'s captions say beyond their prompts (for the caption-noun filter)."""
    template = run.seg.config.template()
    texts = []
    for key in _keys(run, i):
        for cls, cap in run.image_captions.get(key, ()):
            texts.append(caption_text(template, cls, cap))
    return " ".join(t for t in texts if t) or None


def candidates(run: Run, examples: list[tuple[np.ndarray, np.ndarray, str]], captions: list[str | None],
               indices: list[int] | None = None) -> list[list[int]]:
    """The candidate dataset labels (1..C-1) of each example ``(image, label, name)`` by
    ``filtering.mode`` ('given': the given file's lists, found by the image's id, or without a
    file the labels present in its ground truth); ``captions``: each image's caption text for
    the caption-noun filter; ``indices``: the examples' dataset indices (for the given file)."""
    if not examples:
        return []
    given = None
    if run.mode == "given":  # indices into prompt_names = label - 1
        if run.given is not None:
            idx = indices if indices is not None else [None] * len(examples)
            given = [[c - 1 for c in run.given.get(image_key(run.ds.file_name(i) if i is not None else ex[2]), [])]
                     for ex, i in zip(examples, idx)]
        else:
            given = [[int(v) - 1 for v in np.unique(label) if 1 <= v < run.ds.num_classes]
                     for _, label, _ in examples]
    clip_filter, clip_params = run.clip or (None, None)
    names = run.prompt_names or run.ds.prompt_names
    picked = candidate_classes(run.mode, names, len(examples), images=[ex[0] for ex in examples],
                               given=given, clip_filter=clip_filter, params=clip_params, captions=captions)
    return [[c + 1 for c in p] for p in picked]


class _PromptRows:
    """Encoded prompt rows per (label, caption), with the fallback reason of each."""

    def __init__(self, run: Run, limit: int = 50_000) -> None:
        self.seg, self.limit = run.seg, limit
        self.names = run.prompt_names or run.ds.prompt_names
        self.cache: dict[tuple[int, str | None], tuple] = {}

    def __call__(self, label: int, caption: str | None) -> tuple:
        """``(ids [L], token_weights [L], class_positions [L], fallback reason or None)``."""
        key = (label, caption)
        hit = self.cache.get(key)
        if hit is None:
            if len(self.cache) > self.limit:
                self.cache.clear()
            enc, reasons = self.seg.encode_prompts_with_fallback([self.names[label - 1]], [caption])
            hit = self.cache[key] = (enc.ids[0], enc.token_weights[0], enc.class_positions[0], reasons[0])
        return hit


def _pad(a: np.ndarray, canvas_hw: tuple[int, int], mode: str, value: int = 0) -> np.ndarray:
    widths = ((0, canvas_hw[0] - a.shape[0]), (0, canvas_hw[1] - a.shape[1])) + ((0, 0),) * (a.ndim - 2)
    if mode == "edge":
        return np.pad(a, widths, mode="edge")
    return np.pad(a, widths, mode="constant", constant_values=value)


def _agree(value: int, op=np.max) -> int:
    """``op`` (max or sum) of ``value`` over all processes (every process must make the same calls)."""
    if jax.process_count() == 1:
        return int(value)
    return int(op(multihost_utils.process_allgather(np.asarray(value, np.int64))))


def _bucket(n: int, unit: int, cap: int) -> int:
    """The smallest ``unit * 2**k`` >= n, at most ``cap`` (``n`` > 0)."""
    size = unit
    while size < n:
        size *= 2
    return min(size, cap)


def pack_rows(pairs: int, rows_per_call: int, unit: int = 1, bucket: bool = True) -> list[int]:
    """Block sizes for ``pairs`` (image, class) rows: full blocks of ``rows_per_call``, the last
    one rounded up to ``rows_per_call`` or (``bucket``) to the smallest ``unit * 2**k`` that
    holds the rest. ``unit`` (the devices) divides every size."""
    full, rest = divmod(int(pairs), int(rows_per_call))
    sizes = [rows_per_call] * full
    if rest:
        sizes.append(_bucket(rest, unit, rows_per_call) if bucket else rows_per_call)
    return sizes


@dataclasses.dataclass
class _Counts:
    rows_computed: int = 0
    rows_useful: int = 0
    fallbacks: int = 0
    fallback_log: list = dataclasses.field(default_factory=list)
    skipped: list = dataclasses.field(default_factory=list)   # {"image", "reason"}
    no_candidates: int = 0


def _safe_name(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in text)


def _save_images(out_dir: Path, run: Run, example, maps: np.ndarray, labels: list[int], threshold: float) -> None:
    """``<id>_overlay.png`` and one ``<id>_heat_<class>.png`` per candidate of one image."""
    image, _, name = example
    h, w = image.shape[:2]
    out_dir.mkdir(parents=True, exist_ok=True)
    cls = [run.ds.class_names[c] for c in labels]
    colours = voc_palette(run.ds.num_classes)[[0] + list(labels)]
    if maps.shape[0]:
        scores = np.concatenate([np.full((1, h, w), threshold, np.float32), maps[:, :h, :w]])
        pred = np.argmax(scores, axis=0)
    else:
        pred = np.zeros((h, w), np.int64)
    Image.fromarray(overlay_with_legend(image, pred, cls, colours=colours)).save(out_dir / f"{name}_overlay.png")
    for k, c in enumerate(cls):
        Image.fromarray(heat_map(image, maps[k, :h, :w], c)).save(out_dir / f"{name}_heat_{_safe_name(c)}.png")


def _batch(run: Run, local: list[int], examples: list, prompt_rows: _PromptRows, thresholds: jax.Array,
           empty_ids: np.ndarray, counts: _Counts, save_below: int = 0, out_dir: Path | None = None
           ) -> tuple[jax.Array, list[dict]]:
    """One batch: this process's rows ``local`` (dataset indices, -1 = padding) and their decoded
    ``examples`` (None: padding or skipped) -> (the batch's confusion matrices [T, C, C] on
    device, candidate log entries)."""
    ds, canvas = run.ds, run.canvas
    real = [r for r, ex in enumerate(examples) if ex is not None]
    caps = [_noun_text(run, i) if i >= 0 else None for i in local]
    classes: list[list[int]] = [[] for _ in local]
    picked = candidates(run, [examples[r] for r in real], [caps[r] for r in real], [local[r] for r in real])
    for r, cls in zip(real, picked):
        classes[r] = cls
    log = []
    for r in real:
        entry = {"image": ds.name(local[r]), "classes": [ds.class_names[c] for c in classes[r]]}
        if run.mode == "given" and run.given is not None and not classes[r]:
            counts.no_candidates += 1
        log.append(entry)

    # The batch's (image, class) pairs, image after image, with their prompt rows.
    pairs = []
    for r in real:
        keys = _keys(run, local[r])
        for c in classes[r]:
            names = [prompt_rows.names[c - 1], ds.class_names[c]]
            ids, tw, pos, reason = prompt_rows(c, caption_for(run.captions, keys, names))
            if reason is not None:
                counts.fallbacks += 1
                entry = log[real.index(r)]
                entry.setdefault("fallbacks", []).append(ds.class_names[c])
                if len(counts.fallback_log) < MAX_LOGGED:
                    counts.fallback_log.append({"image": ds.name(local[r]), "class": ds.class_names[c],
                                                "reason": reason})
            pairs.append((r, c, ids, tw, pos))

    # Each image edge-padded onto the canvas, its label padded with the ignore label; a padding
    # (or skipped) row is a 1x1 black image with an ignored label (it counts for nothing).
    blank = (np.zeros((1, 1, 3), np.uint8), np.full((1, 1), ds.ignore_index, np.uint8))
    pairs_hw = [blank if ex is None else ex[:2] for ex in examples]
    host = {"images": np.stack([_pad(image, canvas, "edge") for image, _ in pairs_hw]),
            "hw": np.asarray([image.shape[:2] for image, _ in pairs_hw], np.int32),
            "index": np.asarray([max(i, 0) for i in local], np.int32),
            "labels": np.stack([_pad(label, canvas, "constant", ds.ignore_index) for _, label in pairs_hw])}
    batch = sharding.global_batch(run.mesh, host)
    fns = run.fns
    lat = fns.latents(run.params, batch["images"], batch["hw"], batch["index"], run.seg.config.noise_seed)
    best, arg = fns.init(run.batch_size)

    # Row blocks: every process makes the same calls with the same shapes.
    n_proc = jax.process_count()
    r_local, unit = run.rows_per_call // n_proc, max(1, jax.local_device_count())
    offset = jax.process_index() * len(local)  # this process's first row of the global batch
    n_blocks = _agree(math.ceil(len(pairs) / r_local))
    saving = out_dir is not None and any(0 <= i < save_below for i in local)
    kept: dict[int, list[tuple[int, np.ndarray]]] = {}
    length = empty_ids.shape[0]
    for blk in range(n_blocks):
        part = pairs[blk * r_local:(blk + 1) * r_local]
        size = _agree(_bucket(len(part), unit, r_local) if run.bucket_rows and part else
                      (r_local if part else (unit if run.bucket_rows else r_local)))
        a = {"row_image": np.full(size, offset, np.int32), "ids": np.broadcast_to(empty_ids, (size, length)).copy(),
             "tw": np.zeros((size, length), np.float32), "pos": np.zeros((size, length), bool),
             "valid": np.zeros(size, bool), "class_ids": np.zeros(size, np.int32)}
        for j, (r, c, ids, tw, pos) in enumerate(part):
            a["row_image"][j], a["ids"][j], a["tw"][j], a["pos"][j] = offset + r, ids, tw, pos
            a["valid"][j], a["class_ids"][j] = True, c
        g = sharding.global_batch(run.mesh, a)
        best, arg, maps = fns.rows(run.params, lat, g["row_image"], g["ids"], g["tw"], g["pos"], g["valid"],
                                   g["class_ids"], batch["hw"], best, arg)
        counts.rows_computed += size * n_proc
        if saving:
            local_maps = sharding.local_rows(maps)
            for j, (r, c, *_) in enumerate(part):
                if 0 <= local[r] < save_below:
                    kept.setdefault(r, []).append((c, local_maps[j]))
    counts.rows_useful += _agree(len(pairs), np.sum)
    if saving:
        for r in real:
            if 0 <= local[r] < save_below:
                got = kept.get(r, [])
                maps_r = np.stack([m for _, m in got]) if got else np.zeros((0,) + canvas, np.float32)
                _save_images(out_dir, run, examples[r], maps_r, [c for c, _ in got], run.thresholds[0])
    return fns.finish(best, arg, batch["labels"], thresholds), log


@dataclasses.dataclass
class Tally:
    """What :func:`run_batches` counted."""

    conf: np.ndarray            # [T, C, C] int64, one confusion matrix per threshold
    candidates: list[dict]      # {"image", "classes"[, "fallbacks"]} of this process's images
    seconds: float
    first_batch_s: float        # includes the compilation
    counts: _Counts = dataclasses.field(default_factory=_Counts)


def _load(ds: SegDataset, i: int):
    """``ds.load(i)``, or the reason the image cannot be read (a string)."""
    try:
        return ds.load(i)
    except DataValueError:  # a file that decodes to values the dataset cannot have: a wrong copy, not skipped
        raise
    except (OSError, SyntaxError, ValueError, UserError) as e:  # PIL: OSError / SyntaxError; size mismatch: UserError
        return f"cannot be read ({type(e).__name__}: {e})"


def run_batches(run: Run, out_dir: Path | None = None) -> Tally:
    """Every batch in order, decoding the next one in a thread pool while this one runs; with
    ``out_dir`` the first ``eval.save_images`` images' overlays and heat maps go there."""
    ds, bs = run.ds, run.batch_size
    n = ds.num_images
    rows = sharding.process_rows(bs)
    num_batches = -(-n // bs)
    thresholds = jnp.asarray(run.thresholds, jnp.float32)
    prompt_rows, empty_ids = _PromptRows(run), empty_prompt_ids(run.seg.tokenizer)
    conf = np.zeros((len(run.thresholds), ds.num_classes, ds.num_classes), np.int64)
    log: list[dict] = []
    counts = _Counts()
    save_below = int(run.config.eval.save_images) if out_dir is not None else 0
    pool = ThreadPoolExecutor(max(1, config_threads(run.config.data.num_workers)), thread_name_prefix="diffseg-eval")

    def submit(bi: int) -> tuple[list[int], list[Future | None]]:
        """Starts decoding this process's rows of batch ``bi`` (-1: a padding row)."""
        idx = list(range(bi * bs, min((bi + 1) * bs, n)))
        local = (idx + [-1] * (bs - len(idx)))[rows]
        return local, [pool.submit(_load, ds, i) if i >= 0 and i not in run.unreadable else None for i in local]

    def skip(i: int, reason: str) -> None:
        counts.skipped.append({"image": ds.file_name(i), "reason": reason})
        print(f"[diffseg] skipped the image {ds.file_name(i)}: it {reason}", file=sys.stderr)

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
            examples = []
            for i, f in zip(local, futures):
                ex = None if f is None else f.result()
                if i in run.unreadable:
                    skip(i, run.unreadable[i])
                elif isinstance(ex, str):
                    skip(i, ex)
                    ex = None
                examples.append(ex)
            batch_conf, entries = _batch(run, local, examples, prompt_rows, thresholds, empty_ids, counts,
                                         save_below, out_dir)
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
    return Tally(conf, log, time.perf_counter() - start, first_batch_s, counts)


# ----------------------------------------------------------------------------------------------
# Results.


def _protocol(run: Run) -> str:
    """One line saying what the numbers are."""
    b, ds = run.ds.benchmark, run.ds
    if run.mode == "given" and run.given is not None:
        given = f"the candidate file {Path(str(run.config.filtering.given_file)).name}"
    else:
        given = "each image's ground-truth classes (an oracle upper bound)"
    how = {"clip": "the CLIP category filter" + (" and caption nouns" if run.captions else ""),
           "all": "every class of the dataset", "given": given}[run.mode]
    source = "" if run.threshold_source is None else (
        f" picked on {run.threshold_source['dataset']} {run.threshold_source['split']}")
    return (f"{b.title} {_split_name(run.config, ds)} ({ds.num_images} images), mIoU over "
            f"{ds.num_classes} classes with the background, label {ds.ignore_index} ignored, at each image's full "
            f"resolution; background = the constant threshold {run.thresholds[0]:g}{source}; candidate classes: {how}.")


def absent_class_iou(config: ConfigDict) -> str:
    """``eval.absent_class_iou``: ``zero`` (the official code: a class absent from both prediction
    and ground truth has IoU 0 and counts in the mean) or ``nan`` (left out, as mmseg)."""
    value = str(config.eval.get("absent_class_iou", "nan"))
    if value not in ABSENT_IOU:
        raise ConfigError(f"eval.absent_class_iou must be 'zero' (the official evaluation: IoU 0, counted) or 'nan' "
                          f"(left out of the mean), got {value!r}.")
    return value


def results(run: Run, tally: Tally) -> dict:
    """The results dict (see the module docstring) from the summed confusion matrices."""
    ds, dcfg, config = run.ds, run.seg.config, run.config
    n = ds.num_images
    absent = absent_class_iou(config)
    metrics = segmentation_metrics(tally.conf[0], ds.class_names, absent)
    steady = None
    if n > run.batch_size:
        steady = (n - run.batch_size) / max(tally.seconds - tally.first_batch_s, 1e-9)
    counts = [len(c["classes"]) for c in tally.candidates]
    c = tally.counts
    out: dict[str, Any] = {
        "dataset": ds.key,
        "split": _split_name(config, ds),
        "protocol": _protocol(run),
        "num_images": n,
        "num_classes": ds.num_classes,
        "filtering": run.mode,
        **({"filtering_note": ORACLE_NOTE} if run.mode == "given" and run.given is None else {}),
        **({"given_file": str(config.filtering.given_file), "images_without_candidates": c.no_candidates}
           if run.given is not None else {}),
        "threshold": float(dcfg.threshold),
        **({"threshold_source": run.threshold_source} if run.threshold_source is not None else {}),
        "mIoU": metrics["mIoU"],
        "absent_class_iou": absent,
        "aAcc": metrics["aAcc"],
        "mAcc": metrics["mAcc"],
        "IoU": metrics["IoU"],
        "Acc": metrics["Acc"],
        "images_per_s": n / tally.seconds,
        "images_per_s_after_first_batch": steady,
        "seconds": tally.seconds,
        "mean_candidates": float(np.mean(counts)) if counts else 0.0,
        "rows_computed": c.rows_computed,
        "rows_useful": c.rows_useful,
        "prompt_fallbacks": c.fallbacks,
        **({"prompt_fallback_examples": c.fallback_log} if c.fallback_log else {}),
        "skipped_images": c.skipped[:MAX_LOGGED],
        "num_skipped_images": len(c.skipped),
        "published_mIoU": float(config.published_miou) / 100.0,
        "setup": {"pretrained": str(config.pretrained), "image_size": dcfg.image_size, "timestep": dcfg.timestep,
                  "token_weight": dcfg.token_weight, "upweight": dcfg.upweight, "posterior": dcfg.posterior,
                  "template": dcfg.template(), "prompt_names": str(config.prompt_names),
                  "noise_seed": dcfg.noise_seed, "batch_size": run.batch_size, "rows_per_call": run.rows_per_call,
                  "bucket_rows": run.bucket_rows, "canvas": list(run.canvas), "devices": int(run.mesh.devices.size),
                  "dtype": str(config.dtype), "captions": str(config.captions)},
    }
    sweep = run.thresholds[1:]
    if sweep:
        per = [segmentation_metrics(tally.conf[j + 1], ds.class_names, absent) for j in range(len(sweep))]
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
    """Evaluates DiffSegmenter as ``config`` says; writes ``workdir/results.json`` when given
    (and ``workdir/images/`` with ``eval.save_images``).

    Returns:
      The results dict (see the module docstring).

    Raises:
      UserError (ConfigError, DatasetError, InputError, MissingDependency) / WeightsError: one
      sentence each, for a wrong config value, folder or file.
    """
    run = setup(config, mesh)
    out_dir = Path(workdir) / "images" if workdir is not None and int(config.eval.save_images) > 0 else None
    tally = run_batches(run, out_dir)
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
        rows = f"; {r['rows_useful']}/{r['rows_computed']} UNet rows useful"
        skipped = f"; {r['num_skipped_images']} unreadable images skipped" if r["num_skipped_images"] else ""
        print(f"[diffseg] {r['dataset']} ({r['num_images']} images, filtering {r['filtering']}): "
              f"mIoU {100 * r['mIoU']:.1f} at t={r['threshold']:g} (published {100 * r['published_mIoU']:.1f}), "
              f"aAcc {100 * r['aAcc']:.1f}, {r['images_per_s']:.2f} images/s{extra}{rows}{skipped} -> "
              f"{Path(workdir) / 'results.json'}")


def entry() -> None:
    """The console script (the same as ``python -m diffseg_jax.evaluate``)."""
    cli.run(main, prefix="diffseg", user_errors=(WeightsError,), configs=CONFIGS)


if __name__ == "__main__":
    entry()
