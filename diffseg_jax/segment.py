"""Segment one image with DiffSegmenter from the command line.

    python -m diffseg_jax.segment --image photo.jpg --classes "cat,sofa,plant" \\
        --pretrained /path/to/stable-diffusion-v1-5 --out out.png [--threshold 0.5] [--caption "..."]

The image goes through the UNet at the pipeline's native size (UNet ``sample_size`` x the VAE
factor: 512 for SD 1.5, 768 for SD 2.x-768) unless ``--image-size`` says otherwise. Writes:

- ``out.png``: the label map, 8-bit grey (mode L), same size as the image: 0 = background, k = the
  k-th class of ``--classes`` (1-based, in the order given);
- ``out_overlay.png``: the image with each class's colour blended over its pixels (the background
  is left as it is), above a legend strip: one colour swatch and name per class (PIL's default
  font), "background" with an empty swatch first. The strip is at least as wide as the image and
  wraps onto as many rows as needed;
- with ``--heat-maps``: ``out_heat_<k>.png``, class k's refined attention map over the image.

Errors that a user can fix (no class, a missing, unreadable or empty image, a missing or broken
weights folder, an image size that is not a positive multiple of the VAE factor, a program
larger than the device's free memory, a class name that is empty or does not tokenize) print one
sentence starting with ``error:`` and exit with status 1. Grey, palette, RGBA and 16-bit images
are read as RGB.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from diffseg_jax.config import DTYPES, TEMPLATES, DiffSegConfig
from diffseg_jax.images import class_colours, heat_map, legend_strip, overlay_with_legend, read_image, voc_palette
from diffseg_jax.pipeline import PretrainedDiffSegmenter, load_diffsegmenter
from iedp_jax.infra.cli import prog_name
from iedp_jax.infra.errors import ConfigError, UserError, check_writable, output_error
from iedp_jax.sd.weights import WeightsError

__all__ = ["class_colours", "legend_strip", "main", "overlay_path", "overlay_with_legend", "parse_classes",
           "read_image", "voc_palette"]

MAX_CLASSES = 254  # label values 1..254 fit an 8-bit PNG next to background 0 (255 stays free)
ADVICE = ("lower --image-size (now {size}; the pipeline's native size is {native}) or --classes-per-call "
          "(the UNet rows of one call)")


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


def overlay_path(out: str | Path) -> Path:
    """``dir/out.png`` -> ``dir/out_overlay.png``."""
    out = Path(out)
    return out.with_name(f"{out.stem}_overlay.png")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog_name("diffseg_jax.segment"),
        description="Training-free open-vocabulary segmentation of one image with DiffSegmenter (Stable Diffusion "
                    "attention). Writes the label map (0 = background, k = k-th class) and a colour overlay with a "
                    "legend.")
    p.add_argument("--image", required=True, help="the image file (JPEG, PNG, ...)")
    p.add_argument("--classes", required=True, help='comma-separated class names, e.g. "cat,sofa,plant"')
    p.add_argument("--pretrained", required=True,
                   help="a local Stable Diffusion 1.x/2.x folder in the diffusers layout (unet/, vae/, text_encoder/, "
                        "tokenizer/, scheduler/)")
    p.add_argument("--out", required=True, help="the label-map PNG to write; the overlay goes to <out>_overlay.png")
    p.add_argument("--threshold", type=float, default=None,
                   help="background score in [0, 1]: a pixel is background unless some class map exceeds it "
                        "(default 0.5)")
    p.add_argument("--caption", default=None, help="an image caption appended to every class prompt")
    p.add_argument("--image-size", "--image_size", type=int, default=None,
                   help="side the image is resized to for the UNet (default: the pipeline's native size, UNet "
                        "sample_size x the VAE factor: 512 for SD 1.5)")
    p.add_argument("--classes-per-call", "--classes_per_call", type=int, default=None,
                   help="UNet rows (classes) per call (default: all classes in one call); lower it when memory is "
                        "short")
    p.add_argument("--template", default="voc", choices=tuple(dict(TEMPLATES)),
                   help='prompt template: voc = "a photograph of {}", context/coco = "a photography of {}"')
    p.add_argument("--seed", type=int, default=0, help="seed of the one noise draw (0)")
    p.add_argument("--alpha", type=float, default=0.5, help="opacity of the class colours in the overlay (0.5)")
    p.add_argument("--dtype", default="float32", choices=tuple(DTYPES), help="compute dtype (float32)")
    p.add_argument("--heat-maps", "--heat_maps", action="store_true",
                   help="also write each class's map as <out>_heat_<k>.png")
    return p


def run(args: argparse.Namespace) -> tuple[Path, Path]:
    """Segments ``args.image`` and writes the PNGs; returns the label map's and the overlay's paths."""
    names = parse_classes(args.classes)
    if args.threshold is not None and not 0.0 <= args.threshold <= 1.0:
        raise ConfigError(f"--threshold {args.threshold} is outside [0, 1] (the class maps are normalised to [0, 1]).")
    if args.image_size is not None and args.image_size <= 0:
        raise ConfigError(f"--image-size {args.image_size} must be positive (default: the pipeline's native size).")
    if args.classes_per_call is not None and args.classes_per_call <= 0:
        raise ConfigError(f"--classes-per-call {args.classes_per_call} must be positive (default: all classes).")
    out = Path(args.out).expanduser()
    if out.suffix.lower() != ".png":
        raise ConfigError(f"--out {str(out)!r} must name a .png file.")
    image = read_image(args.image)
    check_writable(out.parent, "the label map", f"--out {out}")  # before the model loads
    config = DiffSegConfig(dataset=args.template, noise_seed=args.seed,
                           **({} if args.threshold is None else {"threshold": args.threshold}))
    seg, params = load_diffsegmenter(args.pretrained, config, dtype=DTYPES[args.dtype])
    if args.image_size is not None:
        seg = seg.resized(args.image_size, knob="--image-size")
    model = PretrainedDiffSegmenter(seg, params, advice=ADVICE)
    hf_logger = logging.getLogger("transformers")
    level = hf_logger.level
    hf_logger.setLevel(logging.ERROR)  # the tokenizer's "sequence too long" warning: we say it below
    try:
        result = model.segment(image, names, caption=args.caption, classes_per_call=args.classes_per_call)
    finally:
        hf_logger.setLevel(level)
    for name, why in zip(names, result.fallbacks):
        if why:
            print(f"warning: class {name!r} uses the plain template: {why}", file=sys.stderr)
    labels = result.labels.astype(np.uint8)
    over = overlay_path(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(labels).save(out)
        Image.fromarray(overlay_with_legend(image, labels, names, args.alpha)).save(over)
        if args.heat_maps:
            for k, name in enumerate(names):
                Image.fromarray(heat_map(image, result.maps[k], name)).save(
                    out.with_name(f"{out.stem}_heat_{k + 1}.png"))
    except OSError as e:  # the disk filled meanwhile: one sentence; anything else a bug
        if (err := output_error(e, f"--out {out}", "the label map")) is None:
            raise
        raise err from e
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
