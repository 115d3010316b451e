"""What DiffSegmenter reads and draws: image files as RGB arrays, label overlays with a legend,
and heat maps of the per-class refined attention maps (NumPy + PIL, no matplotlib).

- :func:`read_image`: any image file PIL opens as uint8 RGB ``[H, W, 3]``: grey, palette, RGBA
  (alpha dropped), CMYK, and 16-bit PNGs (scaled to 8 bits, not clipped); an unreadable file is
  one :class:`~iedp_jax.infra.errors.InputError` sentence.
- :func:`overlay_with_legend`: the image with each class's colour blended over its pixels (the
  background left as it is) above a legend strip (:func:`iedp_jax.infra.visualize.legend`).
- :func:`heat_map`: one class map in [0, 1] as a viridis colour map blended over the image, with
  the class name in a strip below.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from iedp_jax.infra.errors import InputError
from iedp_jax.infra.images import oriented
from iedp_jax.infra.visualize import above, apply_colormap, legend, overlay_labels

__all__ = ["class_colours", "heat_map", "legend_strip", "overlay_with_legend", "read_image", "voc_palette"]

_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N")


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


def _rgb(im: Image.Image) -> np.ndarray:
    if im.mode in _SIXTEEN_BIT or im.mode == "I":
        a = np.asarray(im).astype(np.int64)
        if im.mode in _SIXTEEN_BIT or a.max(initial=0) > 255:  # 16-bit grey: scale, do not clip
            a = (np.clip(a, 0, 65535) * 255 + 32767) // 65535
        a = np.clip(a, 0, 255).astype(np.uint8)
        return np.repeat(a[..., None], 3, axis=-1)
    if im.mode == "F":
        a = np.asarray(im, np.float32)
        scale = 255.0 if a.size and np.nanmax(a) <= 1.0 else 1.0
        a = np.clip(np.rint(np.nan_to_num(a) * scale), 0, 255).astype(np.uint8)
        return np.repeat(a[..., None], 3, axis=-1)
    return np.asarray(im.convert("RGB"))


def read_image(path: str | os.PathLike) -> np.ndarray:
    """An image file as uint8 RGB ``[H, W, 3]``.

    Raises:
      InputError: the file is missing, or PIL cannot decode it (corrupt or truncated data, not an
        image), in one sentence.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise InputError(f"the image {str(p)!r} does not exist.")
    try:
        with Image.open(p) as im:
            im.load()
            out = _rgb(oriented(im))  # a phone photo stored sideways comes upright
    except Exception as e:
        raise InputError(f"the image {str(p)!r} cannot be read ({type(e).__name__}: {e}).") from None
    if out.ndim != 3 or min(out.shape[:2]) < 1:
        raise InputError(f"the image {str(p)!r} is empty ({out.shape[1]}x{out.shape[0]}).")
    return out


def class_colours(num_classes: int) -> np.ndarray:
    """``[num_classes + 1, 3]`` uint8: index 0 (background) black, k >= 1 the VOC palette's colour k."""
    return voc_palette(num_classes + 1)


def legend_strip(names: Sequence[str], colours: np.ndarray, width: int) -> np.ndarray:
    """The legend under the overlay (:func:`iedp_jax.infra.visualize.legend`): "background" with
    an empty swatch, then ``names[k - 1]`` with ``colours[k]`` for every class."""
    return legend([("background", None)] + [(n, colours[k + 1]) for k, n in enumerate(names)], width)


def overlay_with_legend(image: np.ndarray, labels: np.ndarray, names: Sequence[str], alpha: float = 0.5,
                        colours: np.ndarray | None = None) -> np.ndarray:
    """The image with class colours blended at ``alpha`` (background pixels unchanged) stacked
    above :func:`legend_strip`; white fills the right side when the legend is wider.

    ``labels`` [H, W]: 0 = background, k = ``names[k - 1]``; ``colours`` [K + 1, 3] (default
    :func:`class_colours`)."""
    colours = class_colours(len(names)) if colours is None else np.asarray(colours, np.uint8)
    labels = np.asarray(labels)
    shown = np.where(labels == 0, 255, labels)  # 255 = left as the image
    top = overlay_labels(image, shown, colours, alpha=alpha, ignore_index=255)
    return above(top, legend_strip(names, colours, image.shape[1]))


def heat_map(image: np.ndarray, values: np.ndarray, name: str | None = None, alpha: float = 0.6) -> np.ndarray:
    """``values`` [H, W] in [0, 1] as a viridis colour map blended at ``alpha`` over ``image``
    [H, W, 3] uint8, with ``name`` in a strip below (when given)."""
    image = np.asarray(image)
    values = np.asarray(values, np.float32)
    if image.shape[:2] != values.shape:
        raise ValueError(f"image {image.shape[:2]} and map {values.shape} differ in size.")
    blended = (1.0 - alpha) * image.astype(np.float32) + alpha * apply_colormap(values).astype(np.float32)
    top = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
    return top if name is None else above(top, legend([(name, None)], image.shape[1]))
