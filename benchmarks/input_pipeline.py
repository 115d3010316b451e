"""Training-input throughput for ADE20K: examples/s of the grain pipeline, folders vs tfds, by thread
count, with a per-example time breakdown and PyTorch's DataLoader as a reference.

Writes ``--images`` synthetic ADE-sized JPEGs (long side 512..2048, aspect 0.5..2, smooth content:
upsampled low-resolution noise plus blurred blobs and a little grain, quality 90) with blocky label
PNGs (values 0..150) into a temporary ADEChallengeData2016 layout (``--dir`` keeps it and reuses
it), then streams VPD's training pipeline (resize to (2048, 512) x 0.5-2, crop with
cat_max_ratio 0.75, flip, photometric distortion, pad) through
:func:`iedp_jax.data.pipeline.train_iterator` at ``--crop`` / ``--batch``:

- ``folders``: :class:`~iedp_jax.data.ade20k.ADE20KSource` decoding the files;
- ``tfds``: :meth:`~iedp_jax.data.ade20k.ADE20KSource.from_prepared` over the array_record copy
  (prepared first; the preparation time is reported on its own);
- ``torch``: the same ``ADE20KSource.train_example`` in a ``torch.utils.data.DataLoader`` with
  ``num_workers`` = threads worker processes (skipped without torch or with ``--no-torch``).

Each runs one warm-up batch (the DataLoader one per worker process), then ``--steps`` timed
batches. The breakdown times decoding (JPEG,
PNG) and each transform on one thread without grain, calling :mod:`iedp_jax.data.transforms`
directly.

  python -m benchmarks.input_pipeline                          # 64 images, crop 512, batch 16
  python -m benchmarks.input_pipeline --threads 1 2 4 8 16 --dir /tmp/ade_synth

Host cores per GPU: with ``E`` = the 1-thread examples/s (``per_core_examples_per_s`` in the JSON,
which holds while threads <= physical cores and scaling stays near linear; check the 2+ thread
rows) and a train step of ``X`` images/s per GPU, feeding one GPU takes about ``X / E`` cores,
e.g. 40 img/s / 10 examples/s per core = 4 cores per GPU (plus headroom for the host side of the
step). The last line printed is one JSON object with every number and the machine's
``os.cpu_count()`` and platform.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from iedp_jax.data import transforms as T
from iedp_jax.data.ade20k import ADE20KSource, IedpAde20k
from iedp_jax.infra import tfds
from iedp_jax.infra.images import load_label, load_rgb

NUM_LABELS = 151  # ADE20K annotation values 0..150 (0 = other / ignored)
N_VAL = 2  # validation images (the source insists on a non-empty split)


# --------------------------------------------------------------------------------------------
# Synthetic ADE20K
# --------------------------------------------------------------------------------------------

def image_size(rng: np.random.Generator, long_side: Sequence[int]) -> tuple[int, int]:
    """``(h, w)`` with the long side uniform in ``long_side`` and a log-uniform aspect in 0.5..2."""
    long = int(rng.integers(long_side[0], long_side[1] + 1))
    aspect = float(np.exp(rng.uniform(np.log(0.5), np.log(2.0))))  # w / h
    if aspect >= 1:
        return max(1, round(long / aspect)), long
    return long, max(1, round(long * aspect))


def synthetic_image(rng: np.random.Generator, h: int, w: int) -> Image.Image:
    """Smooth, natural-looking RGB content: bicubic-upsampled low-resolution noise, a few blurred
    ellipses and a little per-pixel grain (so the JPEG is not trivially compressible)."""
    low = rng.integers(0, 256, (max(2, h // 96), max(2, w // 96), 3), dtype=np.uint8)
    im = Image.fromarray(low).resize((w, h), Image.BICUBIC)
    draw = ImageDraw.Draw(im)
    for _ in range(int(rng.integers(3, 9))):
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        ry, rx = rng.uniform(0.05, 0.3) * h, rng.uniform(0.05, 0.3) * w
        draw.ellipse((cx - rx, cy - ry, cx + rx, cy + ry), fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    im = im.filter(ImageFilter.GaussianBlur(radius=max(1.0, min(h, w) / 200)))
    arr = np.asarray(im, np.int16) + rng.integers(-6, 7, (h, w, 1), dtype=np.int16)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def synthetic_label(rng: np.random.Generator, h: int, w: int) -> Image.Image:
    """Blocky regions of values 0..150 (nearest-upsampled random cells of about 64-128 px)."""
    cell = int(rng.integers(64, 129))
    low = rng.integers(0, NUM_LABELS, (max(1, -(-h // cell)), max(1, -(-w // cell))), dtype=np.uint8)
    return Image.fromarray(low).resize((w, h), Image.NEAREST)


def write_ade(root: str | os.PathLike, n: int, seed: int = 0,
              long_side: Sequence[int] = (512, 2048)) -> Path:
    """Writes ``n`` training (+ ``N_VAL`` validation) image/label pairs into
    ``root/ADEChallengeData2016``; reuses them when ``root`` already holds the same set (a marker
    file records ``n``, ``seed`` and ``long_side``). Returns ``root``."""
    root = Path(root)
    ade = root / "ADEChallengeData2016"
    marker = root / "synthetic_ade.json"
    spec = {"images": int(n), "seed": int(seed), "long_side": [int(s) for s in long_side]}
    if marker.is_file() and json.loads(marker.read_text()) == spec:
        return root
    for owned in (ade, root / "tfds", marker):  # only what this script writes
        if owned.is_dir():
            shutil.rmtree(owned)
        elif owned.exists():
            owned.unlink()
    rng = np.random.default_rng(seed)
    for split, count, stem in (("training", n, "ADE_train"), ("validation", N_VAL, "ADE_val")):
        (ade / "images" / split).mkdir(parents=True)
        (ade / "annotations" / split).mkdir(parents=True)
        for i in range(count):
            h, w = image_size(rng, long_side)
            synthetic_image(rng, h, w).save(ade / "images" / split / f"{stem}_{i:08d}.jpg", quality=90)
            synthetic_label(rng, h, w).save(ade / "annotations" / split / f"{stem}_{i:08d}.png")
    marker.write_text(json.dumps(spec))
    return root


# --------------------------------------------------------------------------------------------
# Measurements
# --------------------------------------------------------------------------------------------

def grain_rate(source: Any, batch: int, steps: int, threads: int) -> float:
    """Examples/s of :func:`train_iterator` over ``steps`` batches after one warm-up batch."""
    from iedp_jax.data.pipeline import train_iterator

    it = train_iterator(source, batch, slice(0, batch), steps + 1, num_threads=threads)
    next(it)
    start = time.perf_counter()
    for _ in range(steps):
        b = next(it)
        assert b["image"].shape[0] == batch
    sec = time.perf_counter() - start
    del it
    return steps * batch / sec


class TorchExamples:
    """``torch.utils.data.Dataset``-style view of the grain element order: item ``j`` is row
    ``j % batch`` of step ``j // batch`` through ``source.train_example`` (the same function)."""

    def __init__(self, source: ADE20KSource, batch: int, steps: int) -> None:
        self.source, self.batch, self.n = source, batch, steps * batch

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, j: int) -> dict[str, np.ndarray]:
        step, row = divmod(int(j), self.batch)
        return self.source.train_example(step, row, self.batch)


def stack_collate(examples: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """NumPy stacking, as grain's ``.batch`` does (no tensor conversion)."""
    return {k: np.stack([e[k] for e in examples]) for k in examples[0]}


def torch_rate(source: ADE20KSource, batch: int, steps: int, workers: int, start_method: str) -> float:
    """Examples/s of a DataLoader with ``workers`` processes over the same examples, after one
    warm-up batch per worker (batch ``i`` comes from worker ``i % workers``, so this waits until
    every worker has started)."""
    import torch.utils.data

    warm = max(1, workers)
    loader = torch.utils.data.DataLoader(
        TorchExamples(source, batch, steps + warm), batch_size=batch, shuffle=False, num_workers=workers,
        collate_fn=stack_collate, multiprocessing_context=start_method if workers else None)
    it = iter(loader)
    for _ in range(warm):
        next(it)
    start = time.perf_counter()
    for _ in range(steps):
        next(it)
    sec = time.perf_counter() - start
    del it
    return steps * batch / sec


def breakdown(source: ADE20KSource, count: int) -> dict[str, float]:
    """Mean milliseconds per training example of each stage, on this thread, without grain, in
    the order of :func:`~iedp_jax.data.transforms.ade20k_train_transform`."""
    crop = source.crop_size
    s = min(crop)
    img_scale = source.img_scale or (4 * s, s)
    stages = ("decode_jpeg", "decode_png", "resize", "crop", "flip", "photometric", "pad")
    total = dict.fromkeys(stages, 0.0)
    for k in range(count):
        jpg, png = source.train_files.open(k % source.num_train)
        rng = np.random.default_rng((source.seed, 0, k))
        t = [time.perf_counter()]
        image = load_rgb(jpg)
        t.append(time.perf_counter())
        label = T.reduce_zero_label(load_label(png))
        t.append(time.perf_counter())
        image, label = T.random_rescale(image, label, rng, img_scale, source.ratio_range)
        t.append(time.perf_counter())
        image, label = T.random_crop(image, label, crop, rng, source.cat_max_ratio)
        t.append(time.perf_counter())
        if rng.random() < 0.5:
            image, label = T.hflip(image), T.hflip(label)
        t.append(time.perf_counter())
        image = T.photometric_distortion(image, rng)
        t.append(time.perf_counter())
        image = np.ascontiguousarray(T.pad_to(image, crop, 0))
        label = np.ascontiguousarray(T.pad_to(label, crop, T.IGNORE_INDEX))
        t.append(time.perf_counter())
        for name, a, b in zip(stages, t, t[1:]):
            total[name] += b - a
    ms = {name: 1e3 * v / count for name, v in total.items()}
    ms["decode"] = ms["decode_jpeg"] + ms["decode_png"]
    ms["transforms"] = sum(ms[n] for n in stages[2:])
    ms["total"] = ms["decode"] + ms["transforms"]
    return ms


def device_info() -> dict[str, Any]:
    return {"cpu_count": os.cpu_count(), "platform": platform.platform(), "machine": platform.machine(),
            "processor": platform.processor(), "python": platform.python_version()}


# --------------------------------------------------------------------------------------------

def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=64, help="synthetic training images")
    ap.add_argument("--long-side", type=int, nargs=2, default=[512, 2048], metavar=("MIN", "MAX"))
    ap.add_argument("--dir", default="", help="keep (and reuse) the synthetic dataset here")
    ap.add_argument("--write-only", action="store_true", help="write the dataset (into --dir) and exit")
    ap.add_argument("--crop", type=int, default=512)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=8, help="timed batches after one warm-up batch")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--formats", nargs="+", choices=["folders", "tfds"], default=["folders", "tfds"])
    ap.add_argument("--breakdown", type=int, default=16, help="examples timed in the breakdown (0: none)")
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--torch-start", choices=["fork", "spawn", "forkserver"], default="fork",
                    help="DataLoader worker start method (fork is PyTorch's Linux default)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.write_only and not args.dir:
        ap.error("--write-only needs --dir")

    tmp = None if args.dir else tempfile.mkdtemp(prefix="iedp_input_bench_")
    root = Path(args.dir or tmp)
    root.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    write_ade(root, args.images, args.seed, args.long_side)
    write_s = time.perf_counter() - start
    if args.write_only:
        print(f"synthetic ADE20K ({args.images} training images) in {root} ({write_s:.1f} s)")
        return {}
    crop = (args.crop, args.crop)
    result: dict[str, Any] = {
        "benchmark": "input_pipeline", "device": device_info(),
        "config": {"images": args.images, "long_side": list(args.long_side), "crop": args.crop,
                   "batch": args.batch, "steps": args.steps, "threads": list(args.threads),
                   "torch_start": args.torch_start},
        "write_s": round(write_s, 3), "prepare_s": None, "tfds_error": None, "torch_error": None,
        "examples_per_s": {}, "breakdown_ms": None}
    rates: dict[str, dict[str, float]] = result["examples_per_s"]
    try:
        folders = ADE20KSource(root, crop, args.seed, num_workers=0)
        if args.breakdown:
            result["breakdown_ms"] = {k: round(v, 3) for k, v in breakdown(folders, args.breakdown).items()}
        # PyTorch first: forked workers must not inherit grain's / TensorFlow's threads.
        if not args.no_torch:
            try:
                import torch  # noqa: F401
            except ImportError as e:
                result["torch_error"] = f"torch not importable: {e}"
            else:
                rates["torch"] = {str(t): torch_rate(folders, args.batch, args.steps, t, args.torch_start)
                                  for t in args.threads}
        if "folders" in args.formats:
            rates["folders"] = {str(t): grain_rate(folders, args.batch, args.steps, t) for t in args.threads}
        if "tfds" in args.formats:
            try:
                start = time.perf_counter()
                import tensorflow  # noqa: F401 - timed apart from the preparation

                result["tensorflow_import_s"] = round(time.perf_counter() - start, 3)
                shutil.rmtree(root / "tfds", ignore_errors=True)  # time a fresh preparation
                start = time.perf_counter()
                tfds.tfds.disable_progress_bar()  # plain output
                builder = tfds.prepare(IedpAde20k, root, root / "tfds")
                result["prepare_s"] = round(time.perf_counter() - start, 3)
            except ImportError as e:
                result["tfds_error"] = str(e)
            else:
                prepared = ADE20KSource.from_prepared(builder, crop, args.seed, num_workers=0)
                rates["tfds"] = {str(t): grain_rate(prepared, args.batch, args.steps, t) for t in args.threads}
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    one = min(args.threads)
    base = rates.get("folders", rates.get("tfds", {})).get(str(one))
    result["per_core_examples_per_s"] = base / one if base else None
    result["peak_rss_gib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)

    print(f"device: {os.cpu_count()} CPU cores, {platform.platform()}")
    print(f"{args.images} synthetic ADE20K images (long side {args.long_side[0]}..{args.long_side[1]}), "
          f"crop {args.crop}, batch {args.batch}, {args.steps} timed batches after 1 warm-up")
    if result["prepare_s"] is not None:
        print(f"tfds preparation: {result['prepare_s']:.2f} s "
              f"(+ {result['tensorflow_import_s']:.2f} s importing tensorflow)")
    for key in ("tfds_error", "torch_error"):
        if result[key]:
            print(f"{key.split('_')[0]} skipped: {result[key]}")
    labels = {"folders": "grain, folders", "tfds": "grain, tfds", "torch": "torch DataLoader, folders"}
    print(f"\n{'loader':28s}" + "".join(f"{f'{t} thr':>12s}" for t in args.threads) + "   (examples/s)")
    for key in ("folders", "tfds", "torch"):
        if key in rates:
            print(f"{labels[key]:28s}" + "".join(f"{rates[key][str(t)]:12.2f}" for t in args.threads))
    if result["breakdown_ms"]:
        bd = result["breakdown_ms"]
        print(f"\nper example on one thread, no grain ({args.breakdown} examples): "
              f"{bd['total']:.1f} ms = {1e3 / bd['total']:.2f} examples/s")
        for name in ("decode", "decode_jpeg", "decode_png", "transforms", "resize", "crop", "flip",
                     "photometric", "pad"):
            indent = "  " if name in ("decode", "transforms") else "    "
            print(f"{indent}{name:14s}{bd[name]:9.2f} ms  {100 * bd[name] / bd['total']:5.1f} %")
    if result["per_core_examples_per_s"]:
        print(f"\nhost cores per GPU ~ (GPU images/s) / {result['per_core_examples_per_s']:.2f}")
    print(f"peak host RSS {result['peak_rss_gib']:.2f} GiB")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
