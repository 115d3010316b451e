"""Segment one image with DiffSegmenter from the command line.

    python -m diffseg_jax.segment --image photo.jpg --classes "cat,sofa,plant" \\
        --pretrained /path/to/stable-diffusion-v1-5 --out out.png [--threshold 0.5] [--caption "..."]

Writes two PNGs:

- ``out.png``: the label map, 8-bit grey (mode L), same size as the image: 0 = background, k = the
  k-th class of ``--classes`` (1-based, in the order given);
- ``out_overlay.png``: the image with each class's colour blended over its pixels (the background
  is left as it is), above a legend strip: one colour swatch and name per class (PIL's default
  font), "background" with an empty swatch first. The strip is at least as wide as the image and
  wraps onto as many rows as needed.

Errors that a user can fix (no class, a missing or unreadable image, a missing weights folder, a
class name that is empty or does not tokenize) print one sentence starting with ``error:`` and
exit with status 1.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from diffseg_jax.config import DTYPES, TEMPLATES, DiffSegConfig
from diffseg_jax.pipeline import load_diffsegmenter
from diffseg_jax.prompts import pad_class_prompts
from iedp_jax.infra.errors import ConfigError, InputError, UserError
from iedp_jax.infra.visualize import above, legend, overlay_labels
from iedp_jax.sd.weights import WeightsError

__all__ = ["class_colours", "legend_strip", "main", "overlay_path", "overlay_with_legend", "parse_classes",
           "read_image", "voc_palette"]

MAX_CLASSES = 254  # label values 1..254 fit an 8-bit PNG next to background 0 (255 stays free)


def voc_palette(n: int = 256) -> np.ndarray:
    """The PASCAL VOC colour map ``[n, 3]`` uint8 (label k's bits spread over R, G, B)."""
    out = np.zeros((n, 3), np.uint8)
    for k in range(n):
        c, r, g, b = k, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        out[k] = (r, g, b)
    return out


def parse_classes(text: str) -> list[str]:
    """``"cat, sofa,potted plant"`` -> ``['cat', 'sofa', 'potted plant']``.

    Raises:
      ConfigError: no class at all, an empty entry (``"cat,,sofa"``), a repeated class, or more
        than 254 classes.
    """
    parts = [" ".join(p.split()) for p in (text or "").split(",")]
    if not any(parts):
        raise ConfigError('--classes is empty: give comma-separated class names, e.g. --classes "cat,sofa,plant".')
    for i, p in enumerate(parts):
        if not p:
            raise ConfigError(f"class {i + 1} of --classes {text!r} is empty: remove the extra comma.")
    seen: set[str] = set()
    for p in parts:
        if p.lower() in seen:
            raise ConfigError(f"class {p!r} is listed twice in --classes.")
        seen.add(p.lower())
    if len(parts) > MAX_CLASSES:
        raise ConfigError(f"--classes lists {len(parts)} classes: at most {MAX_CLASSES} fit an 8-bit label map.")
    return parts


def read_image(path: str | os.PathLike) -> np.ndarray:
    """An image file as uint8 RGB [H, W, 3]; a missing or unreadable file is an InputError."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise InputError(f"the image {str(p)!r} does not exist.")
    try:
        with Image.open(p) as im:
            return np.asarray(im.convert("RGB"))
    except Exception as e:
        raise InputError(f"the image {str(p)!r} cannot be read ({type(e).__name__}: {e}).") from None


def class_colours(num_classes: int) -> np.ndarray:
    """``[num_classes + 1, 3]`` uint8: index 0 (background) black, k >= 1 the VOC palette's colour k."""
    return voc_palette(num_classes + 1)


def overlay_path(out: str | os.PathLike) -> Path:
    """``dir/out.png`` -> ``dir/out_overlay.png``."""
    out = Path(out)
    return out.with_name(f"{out.stem}_overlay.png")


def legend_strip(names: Sequence[str], colours: np.ndarray, width: int) -> np.ndarray:
    """The legend under the overlay (:func:`iedp_jax.infra.visualize.legend`): "background" with
    an empty swatch, then ``names[k - 1]`` with ``colours[k]`` for every class."""
    return legend([("background", None)] + [(n, colours[k + 1]) for k, n in enumerate(names)], width)


def overlay_with_legend(image: np.ndarray, labels: np.ndarray, names: Sequence[str], alpha: float = 0.5
                        ) -> np.ndarray:
    """The image with class colours blended at ``alpha`` (background pixels unchanged) stacked
    above :func:`legend_strip`; white fills the right side when the legend is wider."""
    colours = class_colours(len(names))
    labels = np.asarray(labels)
    shown = np.where(labels == 0, 255, labels)  # 255 = left as the image
    top = overlay_labels(image, shown, colours, alpha=alpha, ignore_index=255)
    return above(top, legend_strip(names, colours, image.shape[1]))


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m diffseg_jax.segment",
        description="Training-free open-vocabulary segmentation of one image with DiffSegmenter (Stable Diffusion "
                    "attention). Writes the label map (0 = background, k = k-th class) and a colour overlay with a "
                    "legend.")
    p.add_argument("--image", required=True, help="the image file (JPEG, PNG, ...)")
    p.add_argument("--classes", required=True, help='comma-separated class names, e.g. "cat,sofa,plant"')
    p.add_argument("--pretrained", required=True,
                   help="a local Stable Diffusion 1.x folder in the diffusers layout (unet/, vae/, text_encoder/, "
                        "tokenizer/, scheduler/)")
    p.add_argument("--out", required=True, help="the label-map PNG to write; the overlay goes to <out>_overlay.png")
    p.add_argument("--threshold", type=float, default=None,
                   help="background score in [0, 1]: a pixel is background unless some class map exceeds it "
                        "(default 0.5)")
    p.add_argument("--caption", default=None, help="an image caption appended to every class prompt")
    p.add_argument("--image-size", type=int, default=512, help="side the image is resized to for the UNet (512)")
    p.add_argument("--template", default="voc", choices=tuple(dict(TEMPLATES)),
                   help='prompt template: voc = "a photograph of {}", context/coco = "a photography of {}"')
    p.add_argument("--seed", type=int, default=0, help="seed of the one noise draw (0)")
    p.add_argument("--alpha", type=float, default=0.5, help="opacity of the class colours in the overlay (0.5)")
    p.add_argument("--dtype", default="float32", choices=tuple(DTYPES), help="compute dtype (float32)")
    return p


def run(args: argparse.Namespace) -> tuple[Path, Path]:
    """Segments ``args.image`` and writes the two PNGs; returns their paths."""
    names = parse_classes(args.classes)
    if args.threshold is not None and not 0.0 <= args.threshold <= 1.0:
        raise ConfigError(f"--threshold {args.threshold} is outside [0, 1] (the class maps are normalised to [0, 1]).")
    image = read_image(args.image)
    out = Path(args.out).expanduser()
    if out.suffix.lower() != ".png":
        raise ConfigError(f"--out {str(out)!r} must name a .png file.")
    config = DiffSegConfig(image_size=args.image_size, dataset=args.template, noise_seed=args.seed,
                           **({} if args.threshold is None else {"threshold": args.threshold}))
    seg, params = load_diffsegmenter(args.pretrained, config, dtype=DTYPES[args.dtype])
    hf_logger = logging.getLogger("transformers")
    level = hf_logger.level
    hf_logger.setLevel(logging.ERROR)  # the tokenizer's "sequence too long" warning: we say it below
    try:
        prompts = seg.encode_prompts(names, caption=args.caption)
    finally:
        hf_logger.setLevel(level)
    ids, weights, pos, valid = pad_class_prompts([prompts], seg.tokenizer)
    labels, _ = seg.segment(params, image[None], ids, weights, pos, valid, config.noise_seed)
    labels = np.asarray(labels[0]).astype(np.uint8)
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(labels).save(out)
    over = overlay_path(out)
    Image.fromarray(overlay_with_legend(image, labels, names, args.alpha)).save(over)
    return out, over


def main(argv: Sequence[str] | None = None) -> int:
    """The command line: returns the exit status (0, or 1 with one ``error:`` sentence on stderr)."""
    args = _parser().parse_args(argv)
    try:
        out, over = run(args)
    except (UserError, WeightsError) as e:  # anything else is a bug: keep its traceback
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {out} (labels: 0 = background, 1..{len(parse_classes(args.classes))} = classes) and {over}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
