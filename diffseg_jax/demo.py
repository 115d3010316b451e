"""DiffSegmenter in the browser:
``python -m diffseg_jax.demo [--pretrained SD_FOLDER] [--port P] [--host 127.0.0.1] [--share]``.

Drop a photo (upload, paste or webcam), type comma-separated class names, and get the overlay
with a legend, the label map, one heat map per class and the timing. Without ``--pretrained`` the
demo runs on the embedded default: the tiny random Stable Diffusion that the README's first
command trains on, written once into ``CACHE/tiny_sd`` (:func:`iedp_jax.infra.webapp.default_cache_dir`);
its segmentations are noise, and the page says so. With ``--pretrained`` it serves the real
pipeline (``--dtype bfloat16`` halves the weights' memory).

Compilations. The photo is resized to the UNet input size (the pipeline resizes every image to
``image_size x image_size`` anyway), and the class count is padded to a bucket
(:func:`class_buckets`: 4, 8, 16, ... up to ``--max-classes``), so the program is compiled once per
(image size, dtype, bucket): a new photo or a new class list of the same bucket runs at once. The
class maps come back at the input size and are upsampled (bilinear) to the photo's size, where
the label map is their argmax against the background threshold (the pipeline's rule). The
template, caption, threshold and seed change no program.

Bad input (no image, an undecodable upload, no class, an empty or repeated class, more than
``--max-classes`` classes, a threshold outside [0, 1], an image size the UNet cannot take) is one
sentence in the status box; the next request runs as usual. A photo with a side above
``--max-side`` is downscaled first, with a note. The launch, queue, uploads and error display are
:mod:`iedp_jax.infra.webapp`'s (shared with ``python -m iedp_jax.demo``).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from diffseg_jax.config import DTYPES, TEMPLATES, DiffSegConfig
from diffseg_jax.images import class_colours, heat_map, overlay_with_legend
from diffseg_jax.pipeline import PretrainedDiffSegmenter, load_diffsegmenter
from diffseg_jax.prompts import pad_class_prompts
from iedp_jax.infra import webapp
from iedp_jax.infra.errors import ConfigError, InputError, UserError
from iedp_jax.sd.tiny import write_tiny_backbone
from iedp_jax.sd.weights import WeightsError

__all__ = ["DiffSegDemo", "Result", "build_blocks", "class_buckets", "main", "parse_class_list"]

MAX_CLASSES = 32
SMALLEST_BUCKET = 4
TITLE = "DiffSegmenter: training-free open-vocabulary segmentation"
ADVICE = ("choose a smaller image size (now {size}; the pipeline's native size is {native}) or fewer classes "
          "(--max-classes)")


def class_buckets(max_classes: int, smallest: int = SMALLEST_BUCKET) -> tuple[int, ...]:
    """The padded class counts: ``smallest``, twice that, ... and ``max_classes`` itself last."""
    out, k = [], max(1, smallest)
    while k < max_classes:
        out.append(k)
        k *= 2
    return (*out, max_classes)


def bucket_of(count: int, buckets: Sequence[int]) -> int:
    """The smallest bucket holding ``count`` classes."""
    return next(b for b in buckets if b >= count)


def parse_class_list(text: str | None, max_classes: int = MAX_CLASSES) -> list[str]:
    """``"cat, sofa,potted  plant"`` -> ``['cat', 'sofa', 'potted plant']``.

    Raises:
      ConfigError: no class, an empty entry, a class listed twice (case-insensitive), more than
        ``max_classes``.
    """
    parts = [" ".join(p.split()) for p in (text or "").split(",")]
    if not any(parts):
        raise ConfigError('no class to segment: type comma-separated class names, e.g. "cat, sofa, plant".')
    for i, p in enumerate(parts):
        if not p:
            raise ConfigError(f"class {i + 1} of {text.strip()!r} is empty: remove the extra comma.")
    seen: dict[str, str] = {}
    for p in parts:
        if p.lower() in seen:
            raise ConfigError(f"class {p!r} is listed twice: give each class once (its label is its position).")
        seen[p.lower()] = p
    if len(parts) > max_classes:
        raise ConfigError(f"{len(parts)} classes is more than this demo's {max_classes} per request "
                          "(--max-classes): remove some.")
    return parts


@dataclasses.dataclass(frozen=True)
class Result:
    """What one request shows: the overlay with its legend, the coloured label map, the heat
    maps ``[(image, class name)]``, the raw labels and maps, and the status lines."""

    overlay: np.ndarray
    label_map: np.ndarray
    heat_maps: list[tuple[np.ndarray, str]]
    labels: np.ndarray
    maps: np.ndarray
    status: list[str]
    compiled: bool


class DiffSegDemo:
    """The demo's state: the pipeline (one dtype loaded at a time), its compiled programs, and
    the request handler :meth:`segment` (a plain function: the tests call it without a browser).

    Args:
      pretrained: a Stable Diffusion folder (diffusers layout).
      embedded: ``pretrained`` is the embedded tiny random default (the page says so).
      dtype: the dtype loaded first.
      max_classes: classes per request (the largest bucket).
      max_side: uploads are downscaled to this longer side.
      image_sizes: the input sizes offered (default: the native size and its half).
    """

    def __init__(self, pretrained: str | Path, embedded: bool = False, dtype: str = "float32",
                 max_classes: int = MAX_CLASSES, max_side: int = webapp.MAX_SIDE,
                 image_sizes: Sequence[int] | None = None) -> None:
        if dtype not in DTYPES:
            raise ConfigError(f"--dtype {dtype!r} is not one of {', '.join(DTYPES)}.")
        if max_classes < 1:
            raise ConfigError(f"--max-classes {max_classes} must be positive.")
        self.pretrained, self.embedded = Path(pretrained), embedded
        self.max_classes, self.max_side = int(max_classes), int(max_side)
        self.buckets = class_buckets(self.max_classes)
        self._lock = threading.Lock()
        self._loaded: dict[str, PretrainedDiffSegmenter] = {}   # dtype -> the native-size pipeline
        self._models: dict[tuple[str, int], PretrainedDiffSegmenter] = {}
        self.programs: set[tuple[str, int, int]] = set()        # (dtype, size, bucket) compiled
        base = self._load(dtype)
        self.default_dtype = dtype
        self.native = base.config.image_size
        factor = base.segmenter.vae_factor
        sizes = list(image_sizes) if image_sizes else [self.native, max(factor, self.native // 2 // factor * factor)]
        for s in sizes:
            base.segmenter.resized(int(s), knob="--image-sizes")  # checks each: a multiple of the VAE factor
        self.image_sizes = tuple(dict.fromkeys(int(s) for s in sizes))

    # ---------------------------------------------------------------------- models

    def _load(self, dtype: str) -> PretrainedDiffSegmenter:
        if dtype not in self._loaded:
            self._loaded.clear()  # one copy of the weights at a time
            self._models.clear()
            self.programs = {p for p in getattr(self, "programs", set()) if p[0] == dtype}
            seg, params = load_diffsegmenter(self.pretrained, DiffSegConfig(), dtype=DTYPES[dtype])
            self._loaded[dtype] = PretrainedDiffSegmenter(seg, params, advice=ADVICE)
        return self._loaded[dtype]

    def model(self, dtype: str, size: int) -> PretrainedDiffSegmenter:
        """The pipeline at ``dtype`` and input ``size`` (its compiled programs kept)."""
        if dtype not in DTYPES:
            raise ConfigError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}.")
        if int(size) not in self.image_sizes:
            raise ConfigError(f"image size {size} is not one of this demo's {list(self.image_sizes)} "
                              "(--image-sizes).")
        key = (dtype, int(size))
        if key not in self._models:
            base = self._load(dtype)
            self._models[key] = PretrainedDiffSegmenter(base.segmenter.resized(int(size)), base.params, ADVICE)
        return self._models[key]

    # ---------------------------------------------------------------------- the request

    def segment(self, image: Any, classes: str | None, caption: str | None = None, threshold: float | None = 0.5,
                image_size: int | None = None, template: str = "voc", dtype: str | None = None,
                seed: int = 0) -> Result:
        """Segments one upload into the comma-separated ``classes``.

        Raises:
          UserError: one sentence (see the module docstring); the demo stays usable.
        """
        started = time.perf_counter()
        names = parse_class_list(classes, self.max_classes)
        threshold = 0.5 if threshold is None else _number(threshold, "threshold")
        if not 0.0 <= threshold <= 1.0:  # NaN fails too
            raise ConfigError(f"threshold {threshold:g} is outside [0, 1] (the class maps are normalised to [0, 1]).")
        if template not in dict(TEMPLATES):
            raise ConfigError(f"template {template!r} is not one of {', '.join(dict(TEMPLATES))}.")
        size = self.native if image_size in (None, "", 0) else int(_number(image_size, "image size"))
        dtype = dtype or self.default_dtype
        upload = webapp.decode_upload(image, self.max_side)
        photo = upload.image
        caption = (caption or "").strip() or None
        bucket = bucket_of(len(names), self.buckets)
        with self._lock:  # one request on the models at a time, whatever the queue's concurrency
            model = self.model(dtype, size)
            seg = model.segmenter
            with webapp.quiet_logger("transformers", logging.ERROR):  # "sequence too long": said below
                prompts, reasons = seg.encode_prompts_with_fallback(names, caption, dataset=template)
            ids, tw, pos, valid = pad_class_prompts([prompts], seg.require_tokenizer(), bucket)
            fresh = (dtype, size, bucket) not in self.programs
            t0 = time.perf_counter()
            run = model.compiled((size, size), bucket)
            compile_s = time.perf_counter() - t0
            self.programs.add((dtype, size, bucket))
            square = np.asarray(Image.fromarray(photo).resize((size, size), Image.BILINEAR))
            t1 = time.perf_counter()
            _, maps = run(model.params, square[None], ids, tw, pos, valid, np.int32(seed), None,
                          np.float32(threshold))
            maps = np.asarray(maps, np.float32)[0, :len(names)]  # on the host: a device slice would compile
            run_s = time.perf_counter() - t1
        maps = _upsample(maps, photo.shape[:2])
        scores = np.concatenate([np.full((1, *maps.shape[1:]), threshold, np.float32), maps])
        labels = np.argmax(scores, axis=0).astype(np.int32)  # ties: the background, then the lower class
        colours = class_colours(len(names))
        status = [f"{len(names)} class{'es' * (len(names) != 1)} at {size} px ({dtype}, class bucket {bucket}): "
                  f"{run_s:.2f} s on the device, {time.perf_counter() - started:.2f} s in all"
                  + (f"; compiled first in {compile_s:.1f} s (once per size and bucket)" if fresh else ".")]
        status += [f"Note: {n}" for n in upload.notes]
        status += [f"Note: class {n!r} uses the plain template: {why}" for n, why in zip(names, reasons) if why]
        if self.embedded:
            status.append("Note: the embedded default is a tiny random model: the maps are noise.")
        return Result(overlay_with_legend(photo, labels, names), colours[labels],
                      [(heat_map(photo, maps[k], name), name) for k, name in enumerate(names)],
                      labels, maps, status, fresh)

    def handle(self, image: Any, classes: str | None, caption: str | None, threshold: float | None,
               image_size: int | None, template: str, dtype: str | None, seed: Any = 0
               ) -> tuple[Any, Any, Any, str]:
        """The gradio event: (overlay, label map, gallery, status); a user error is the status."""
        def run() -> tuple[Any, Any, Any, str]:
            r = self.segment(image, classes, caption, threshold, image_size, template, dtype,
                             int(_number(seed or 0, "seed")))
            return r.overlay, r.label_map, r.heat_maps, webapp.status_text(r.status)

        return webapp.on_page(run, 3, (WeightsError,))()

    # ---------------------------------------------------------------------- the page

    def header(self) -> str:
        """The Markdown above the form: what runs, and on which weights."""
        if self.embedded:
            weights = (f"Running on the **embedded default**: a tiny random Stable Diffusion written into "
                       f"`{self.pretrained}`. It shows the pipeline end to end in seconds; its segmentations are "
                       "noise. Start the demo with `--pretrained /path/to/stable-diffusion-v1-5` for real ones.")
        else:
            weights = f"Weights: `{self.pretrained}` (native size {self.native} px)."
        return (f"# {TITLE}\n\nUpload a photo, type comma-separated class names, and segment. {weights} "
                f"Up to {self.max_classes} classes per request; uploads above {self.max_side} px are downscaled.")


def _number(value: Any, what: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{what} {value!r} is not a number.") from None


def _upsample(maps: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """[K, s, s] -> [K, H, W] float32, bilinear (values stay in [0, 1])."""
    h, w = int(hw[0]), int(hw[1])
    if maps.shape[1:] == (h, w):
        return maps
    return np.stack([np.asarray(Image.fromarray(m, mode="F").resize((w, h), Image.BILINEAR)) for m in maps]
                    ).astype(np.float32)


def build_blocks(demo: DiffSegDemo) -> Any:
    """The gradio page of ``demo`` (an ``api_name='segment'`` endpoint: image, classes, caption,
    threshold, image size, template, dtype, seed -> overlay, label map, heat maps, status)."""
    gr = webapp.require_gradio()
    with gr.Blocks(title="DiffSegmenter demo", analytics_enabled=False) as blocks:
        gr.Markdown(demo.header())
        with gr.Row():
            with gr.Column():
                image = webapp.safe_image(gr, label="Photo")
                classes = gr.Textbox(label="Classes (comma-separated)", value="cat, sofa", max_lines=2)
                caption = gr.Textbox(label="Caption (optional, appended to every class prompt)", max_lines=2)
                with gr.Row():
                    threshold = gr.Slider(0.0, 1.0, value=DiffSegConfig.threshold, step=0.01,
                                          label="Background threshold")
                    seed = gr.Number(value=0, precision=0, label="Noise seed")
                with gr.Row():
                    size = gr.Dropdown([(f"{s} px" + (" (native)" if s == demo.native else ""), s)
                                        for s in demo.image_sizes], value=demo.native, label="Image size")
                    template = gr.Dropdown(list(dict(TEMPLATES)), value="voc", label="Prompt template")
                    dtype = gr.Dropdown(list(DTYPES), value=demo.default_dtype, label="dtype")
                button = gr.Button("Segment", variant="primary")
            with gr.Column():
                status = gr.Markdown()
                overlay = gr.Image(label="Overlay", type="numpy", format="png")
                label_map = gr.Image(label="Label map", type="numpy", format="png")
        heat = gr.Gallery(label="Heat maps", columns=4, format="png")
        button.click(demo.handle, [image, classes, caption, threshold, size, template, dtype, seed],
                     [overlay, label_map, heat, status], api_name="segment")
    return blocks


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m diffseg_jax.demo",
                                description="DiffSegmenter in the browser (gradio): upload a photo, type class "
                                            "names, see the segmentation.")
    p.add_argument("--pretrained", default=None,
                   help="a local Stable Diffusion folder (diffusers layout); default: the embedded tiny random "
                        "pipeline, written into --cache-dir")
    p.add_argument("--cache-dir", default=None, help="where the embedded default is written (default: "
                   "$IEDP_CACHE or ~/.cache/iedp_jax)")
    p.add_argument("--dtype", default="float32", choices=tuple(DTYPES), help="compute dtype loaded first (float32)")
    p.add_argument("--max-classes", type=int, default=MAX_CLASSES,
                   help=f"classes per request ({MAX_CLASSES}); counts are padded to buckets of 4, 8, 16, ...")
    p.add_argument("--image-sizes", type=int, nargs="+", default=None,
                   help="input sizes offered (default: the native size and its half)")
    webapp.add_server_args(p)
    return p


def make_demo(args: argparse.Namespace) -> DiffSegDemo:
    """The demo of the command-line arguments (the embedded default written when needed)."""
    webapp.check_server_args(args)
    embedded = args.pretrained is None
    if embedded:
        cache = Path(args.cache_dir).expanduser() if args.cache_dir else webapp.default_cache_dir()
        pretrained = write_tiny_backbone(cache / "tiny_sd")
    else:
        pretrained = Path(args.pretrained).expanduser()
        if not pretrained.is_dir():
            raise InputError(f"--pretrained {str(pretrained)!r} is not a folder: pass a Stable Diffusion folder "
                             "(diffusers layout), or leave it out for the embedded default.")
    return DiffSegDemo(pretrained, embedded, args.dtype, args.max_classes, args.max_side, args.image_sizes)


def main(argv: Sequence[str] | None = None) -> int:
    """The command line: serves until interrupted; 1 with one ``error:`` sentence on a user error."""
    args = _parser().parse_args(argv)
    try:
        webapp.require_gradio()  # before the backbone is written or loaded
        demo = make_demo(args)
        blocks = build_blocks(demo)
    except (UserError, WeightsError) as e:  # anything else is a bug: keep its traceback
        print(f"error: {e}", file=sys.stderr)
        return 1
    webapp.launch(blocks, args.host, args.port, args.share, args.concurrency, args.max_queue)
    return 0


if __name__ == "__main__":
    sys.exit(main())
