"""Decoding the files datasets ship (JPEG / PNG), from a path or a file object, on the host.

The folder readers and the prepared-tfds readers of every dataset decode through these
functions, so both formats give identical arrays. A user's image (``predict``, DiffSegmenter) is
turned upright by its EXIF orientation (:func:`oriented`, ``load_rgb(..., orient=True)``); a
dataset's image keeps its stored orientation, the one its label map was drawn on.
"""

from __future__ import annotations

import os
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps

from iedp_jax.infra.errors import DataValueError, InputError

File = str | os.PathLike | BinaryIO


def _name(file: File) -> str:
    return str(file) if isinstance(file, (str, os.PathLike)) else getattr(file, "name", "<bytes>")


_WIDE_GREY = ("I;16", "I;16B", "I;16L", "I;16N")  # 16-bit grey (older PIL: mode I for a PNG)


def oriented(im: Image.Image) -> Image.Image:
    """``im`` turned as its EXIF orientation says (a phone photo stored sideways comes upright);
    ``im`` itself when it has no orientation tag."""
    try:
        orientation = im.getexif().get(0x0112, 1)
    except Exception:  # an unreadable EXIF block: keep the stored pixels
        return im
    return ImageOps.exif_transpose(im) if orientation not in (None, 1) else im


def load_rgb(file: File, orient: bool = False) -> np.ndarray:
    """A JPEG/PNG as uint8 RGB ``[H, W, 3]``: grey, palette and CMYK images are converted, alpha
    is dropped, and 16-bit grey is scaled to 8 bits (``round(v / 257)``; PIL's own conversion
    clips every value above 255 to white). ``orient``: apply the EXIF orientation (a user's
    image; a dataset's keeps the orientation its labels were drawn on)."""
    with Image.open(file) as opened:
        im = oriented(opened) if orient else opened
        if im.mode in _WIDE_GREY or (im.mode == "I" and im.format == "PNG"):
            wide = np.asarray(im).astype(np.float64)
            grey = np.clip(np.rint(wide / 257.0), 0, 255).astype(np.uint8)
            return np.repeat(grey[..., None], 3, axis=-1)
        return np.asarray(im.convert("RGB"))


def load_label(file: File) -> np.ndarray:
    """A single-channel label PNG (mode L or P: the stored indices) as uint8 ``[H, W]``."""
    with Image.open(file) as im:
        if im.mode not in ("L", "P", "I", "I;16"):
            raise InputError(f"{_name(file)} is a {im.mode} image, not a single-channel label map (mode L or P).")
        arr = np.asarray(im)
    if arr.dtype != np.uint8:
        if arr.size and (arr.min() < 0 or arr.max() > 255):
            raise InputError(f"{_name(file)} holds label values outside 0..255.")
        arr = arr.astype(np.uint8)
    return arr


def check_label_values(label: np.ndarray, num_values: int, ignore: int | None, file: File) -> np.ndarray:
    """``label`` itself, or a :class:`DataValueError` naming ``file`` and the first value that is
    neither below ``num_values`` nor ``ignore`` (a label map of another dataset or class count:
    scored or trained on, it would be a class the model does not have)."""
    bad = label[(label >= num_values) & (label != (-1 if ignore is None else ignore))]
    if bad.size:
        keep = f" and the ignore value {ignore}" if ignore is not None else ""
        raise DataValueError(f"{_name(file)} holds the label value "
                             f"{int(bad.max())}, outside 0..{num_values - 1}{keep}: the label maps are not this "
                             "dataset's (or not its class ids); fix or replace them.")
    return label


def load_depth_png(file: File, scale: float = 1000.0) -> np.ndarray:
    """A uint16 depth PNG in millimetres as float32 metres ``[H, W]`` (0 stays 0 = invalid)."""
    with Image.open(file) as im:
        arr = np.asarray(im)
    if arr.ndim != 2:
        raise InputError(f"{_name(file)} is not a single-channel depth map (shape {arr.shape}).")
    if arr.dtype == np.uint8:  # 8 bits cannot hold millimetres: scored, it gives abs_rel near 50
        raise DataValueError(f"{_name(file)} is an 8-bit depth map: depth must be a 16-bit PNG in millimetres "
                             f"(/ {scale:g} = metres); rewrite the depth maps as 16-bit PNGs (e.g. np.uint16).")
    return (arr.astype(np.float32) / np.float32(scale)).astype(np.float32)


def image_size(file: File) -> tuple[int, int]:
    """``(H, W)`` of an image from its header (nothing is decoded)."""
    with Image.open(file) as im:
        w, h = im.size
    return h, w
