"""The official evaluation protocols as pure, jittable, static-shaped window functions.

Segmentation (mmseg 0.x ``slide_inference`` / ``aug_test``, as VPD's ``VPDSeg`` runs them):

- the image is resized keeping its ratio (short side 512, long side <= 2048: mmseg's test
  ``Resize(img_scale=(2048, 512))``; multi-scale multiplies ``img_scale`` by each ratio);
- crop-sized windows on the grid ``h_grids = max(H - crop + stride - 1, 0) // stride + 1`` (same
  for the width), the last window of a row/column clamped to the image end; each window's logits
  are resized bilinearly to the window, summed into a canvas and divided by the per-pixel window
  count;
- the canvas is resized bilinearly to the original label size, then softmax; with flip the
  pass runs on the mirrored image and its probabilities are mirrored back; the probabilities of
  all (scale, flip) passes are averaged and the argmax is the prediction.

Depth (VPD's NYUv2 ``test.py`` with ``--shift_window_test --shift_size 2 --flip_test``): two
480-wide windows (left and right) over the 480x640 image, each predicted on itself and on its
mirror (averaged), stitched with the overlap averaged. The same window grid function gives these
windows (crop 480, stride 160).

Static shapes: one compiled function serves many images. Images are padded (bottom/right, zeros)
into a fixed canvas; each image's window offsets are computed on the host
(:func:`slide_grid`) and passed as an ``[B, K, 2]`` array padded to a fixed ``K`` with a validity
mask (:func:`pad_windows`); the sizes of the real image and label regions travel as ``[B, 2]``
arrays. Windows are visited by a ``lax.scan`` whose step is skipped (``lax.cond``) when no image
of the batch has a valid window there, so a batch costs its largest window count, not ``K``.

One departure from mmseg: a window always has the crop size. When the resized image is smaller
than the crop along an axis (a panorama whose long side hits the 2048 cap, or a scale ratio
below 1), mmseg runs the model on the smaller image region; here the window extends into the
zero padding (as training crops are padded with zeros) and only the image region is scored.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from iedp_jax.data.transforms import rescale_size
from iedp_jax.sd.layers import resize_bilinear, resize_region

__all__ = [
    "slide_grid",
    "pad_windows",
    "eval_resize_hw",
    "slide_inference",
    "flip_width",
    "segmentation_pass",
    "depth_windows",
]

Predict = Callable[[jax.Array], jax.Array]


# ----------------------------------------------------------------------------- host side


def _pair(x: Sequence[int] | int, name: str) -> tuple[int, int]:
    t = (int(x), int(x)) if np.isscalar(x) else tuple(int(v) for v in x)
    if len(t) != 2 or min(t) < 1:
        raise ValueError(f"{name} must be two positive integers (height, width), got {x!r}.")
    return t  # type: ignore[return-value]


def slide_grid(hw: Sequence[int], crop: Sequence[int], stride: Sequence[int]) -> np.ndarray:
    """Window offsets ``[K, 2]`` int32 ``(y1, x1)`` of mmseg's ``slide_inference`` on an image of
    size ``hw``, row-major (``h_idx`` outer, ``w_idx`` inner) as mmseg visits them.

    ``y1 = h_idx * stride``, ``y2 = min(y1 + crop, H)``, ``y1 = max(y2 - crop, 0)`` (the last
    window is clamped to the image end); same for ``x``.
    """
    h, w = _pair(hw, "hw")
    ch, cw = _pair(crop, "crop")
    sh, sw = _pair(stride, "stride")
    h_grids = max(h - ch + sh - 1, 0) // sh + 1
    w_grids = max(w - cw + sw - 1, 0) // sw + 1
    out = []
    for h_idx in range(h_grids):
        for w_idx in range(w_grids):
            y1, x1 = h_idx * sh, w_idx * sw
            y2, x2 = min(y1 + ch, h), min(x1 + cw, w)
            out.append((max(y2 - ch, 0), max(x2 - cw, 0)))
    return np.asarray(out, np.int32).reshape(-1, 2)


def pad_windows(offsets: Sequence[np.ndarray], max_windows: int | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
    """Stacks per-image offsets (from :func:`slide_grid`) into ``[B, K, 2]`` int32 plus a ``[B, K]``
    validity mask; ``K`` defaults to the largest count. Padding windows sit at ``(0, 0)``."""
    counts = [len(o) for o in offsets]
    k = max(counts, default=0) if max_windows is None else int(max_windows)
    if counts and max(counts) > k:
        raise ValueError(f"an image has {max(counts)} windows but max_windows is {k}.")
    out = np.zeros((len(offsets), max(k, 1), 2), np.int32)
    valid = np.zeros((len(offsets), max(k, 1)), bool)
    for i, o in enumerate(offsets):
        out[i, : len(o)] = o
        valid[i, : len(o)] = True
    return out, valid


def eval_resize_hw(hw: Sequence[int], img_scale: Sequence[int], ratio: float = 1.0) -> tuple[int, int]:
    """The size mmseg's test pipeline resizes an image to: ``MultiScaleFlipAug`` scales
    ``img_scale = (long, short)`` to ``(int(long * ratio), int(short * ratio))``, then
    ``Resize(keep_ratio=True)`` picks the largest keep-ratio size whose long side <= the first and
    short side <= the second (mmcv ``rescale_size``)."""
    scale = (int(img_scale[0] * ratio), int(img_scale[1] * ratio))
    return rescale_size(hw, scale)


# ----------------------------------------------------------------------------- device side


def slide_inference(window_fn: Callable[[jax.Array], jax.Array], images: jax.Array, offsets: jax.Array,
                    valid: jax.Array, crop: Sequence[int]) -> jax.Array:
    """Sliding-window average over a padded canvas.

    Args:
      window_fn: ``[B, ch, cw, 3] -> [B, ch, cw, D]`` (e.g. logits already resized to the window).
      images: ``[B, Hc, Wc, 3]`` canvases (image at the top-left, padding beyond); ``Hc >= ch``,
        ``Wc >= cw``.
      offsets: ``[B, K, 2]`` int32 window corners ``(y1, x1)``; each window must fit the canvas.
      valid: ``[B, K]`` bool, which windows are real.
      crop: ``(ch, cw)``, static.

    Returns:
      ``[B, Hc, Wc, D]`` float32: the sum of the windows covering each pixel divided by their
      count (mmseg's ``preds / count_mat``), 0 where no window lies.
    """
    ch, cw = _pair(crop, "crop")
    b, hc, wc, c_in = images.shape
    if hc < ch or wc < cw:
        raise ValueError(f"the canvas {hc}x{wc} is smaller than the {ch}x{cw} window.")
    if offsets.shape[:1] != (b,) or offsets.shape[2:] != (2,) or valid.shape != offsets.shape[:2]:
        raise ValueError(f"offsets must be [B, K, 2] and valid [B, K] with B={b}, got {offsets.shape} "
                         f"and {valid.shape}.")
    out_shape = jax.eval_shape(window_fn, jax.ShapeDtypeStruct((b, ch, cw, c_in), images.dtype)).shape
    if tuple(out_shape[:3]) != (b, ch, cw) or len(out_shape) != 4:
        raise ValueError(f"window_fn must map [B, {ch}, {cw}, 3] to [B, {ch}, {cw}, D], got {out_shape}.")
    d = out_shape[3]

    def take(img, yx):  # [Hc, Wc, c], [2] -> [ch, cw, c]
        return jax.lax.dynamic_slice(img, (yx[0], yx[1], 0), (ch, cw, img.shape[-1]))

    def add(canvas, win, yx):  # canvas[y:y+ch, x:x+cw] += win
        start = (yx[0], yx[1], 0)
        return jax.lax.dynamic_update_slice(canvas, jax.lax.dynamic_slice(canvas, start, win.shape) + win, start)

    def step(carry, k_in):
        yx, ok = k_in  # [B, 2], [B]

        def run(carry):
            acc, cnt = carry
            out = window_fn(jax.vmap(take)(images, yx)).astype(jnp.float32)  # [B, ch, cw, D]
            okb = ok[:, None, None, None]
            acc = jax.vmap(add)(acc, jnp.where(okb, out, 0.0), yx)
            cnt = jax.vmap(add)(cnt, jnp.broadcast_to(okb, (b, ch, cw, 1)).astype(jnp.float32), yx)
            return acc, cnt

        return jax.lax.cond(jnp.any(ok), run, lambda c: c, carry), None

    init = (jnp.zeros((b, hc, wc, d), jnp.float32), jnp.zeros((b, hc, wc, 1), jnp.float32))
    (acc, cnt), _ = jax.lax.scan(step, init, (jnp.swapaxes(offsets, 0, 1), jnp.swapaxes(valid, 0, 1)))
    return jnp.where(cnt > 0, acc / jnp.maximum(cnt, 1.0), 0.0)


def flip_width(x: jax.Array, widths: jax.Array, flip: jax.Array | bool = True) -> jax.Array:
    """Mirrors columns ``[0, width)`` of each ``x[b]`` (``[B, H, W, ...]``); columns past the width
    (padding) stay. ``flip``: a scalar or ``[B]`` bool, rows where it is False are unchanged."""
    w = x.shape[2]
    j = jnp.arange(w)[None, :]  # [1, W]
    widths = jnp.asarray(widths).astype(jnp.int32)[:, None]  # [B, 1]
    flip = jnp.broadcast_to(jnp.asarray(flip, bool), widths.shape[:1])[:, None]  # [B, 1]
    idx = jnp.where(flip & (j < widths), widths - 1 - j, j)  # [B, W]
    return jax.vmap(lambda xb, ib: jnp.take(xb, ib, axis=1))(x, idx)


def segmentation_pass(predict: Predict, images: jax.Array, image_hw: jax.Array, offsets: jax.Array,
                      valid: jax.Array, flip: jax.Array | bool, label_hw: jax.Array,
                      label_size: Sequence[int], crop: Sequence[int]) -> jax.Array:
    """One (scale, flip) pass of mmseg's ``inference`` in ``slide`` mode, batched.

    Args:
      predict: ``[b, ch, cw, 3] -> [b, h, w, C]`` logits at any resolution (e.g. ``IEDP.predict``
        at 1/8); they are resized bilinearly to the window.
      images: ``[B, Hc, Wc, 3]`` resized images padded into a canvas.
      image_hw: ``[B, 2]`` the resized image sizes inside the canvas.
      offsets, valid: windows of each image (:func:`slide_grid` on ``image_hw``, :func:`pad_windows`).
      flip: scalar or ``[B]`` bool: run on the mirrored image and mirror the output back.
      label_hw: ``[B, 2]`` original label sizes; ``label_size`` the static output canvas.
      crop: ``(ch, cw)`` window size.

    Returns:
      Softmax probabilities ``[B, *label_size, C]`` float32 at the original label resolution
      (valid in the top-left ``label_hw`` region).
    """
    crop = _pair(crop, "crop")
    images = flip_width(images, image_hw[:, 1], flip)

    def window_fn(win: jax.Array) -> jax.Array:
        return resize_bilinear(predict(win).astype(jnp.float32), crop)

    canvas = slide_inference(window_fn, images, offsets, valid, crop)  # [B, Hc, Wc, C]
    logits = resize_region(canvas, image_hw, label_hw, label_size)  # [B, Hl, Wl, C]
    probs = jax.nn.softmax(logits, axis=-1)
    return flip_width(probs, label_hw[:, 1], flip)


def depth_windows(predict: Predict, images: jax.Array, offsets: jax.Array, valid: jax.Array,
                  crop: Sequence[int], flip: bool = True) -> jax.Array:
    """VPD's NYUv2 test: each window predicted (``predict: [b, ch, cw, 3] -> [b, ch, cw]``), with
    ``flip`` averaged with the mirror-image prediction mirrored back, then the windows stitched
    with overlaps averaged. Returns ``[B, Hc, Wc]`` float32 (0 outside every window)."""
    crop = _pair(crop, "crop")

    def window_fn(win: jax.Array) -> jax.Array:
        if flip:
            b = win.shape[0]
            both = predict(jnp.concatenate([win, win[:, :, ::-1]], axis=0)).astype(jnp.float32)
            d = (both[:b] + both[b:, :, ::-1]) / 2.0
        else:
            d = predict(win).astype(jnp.float32)
        return d[..., None]

    return slide_inference(window_fn, images, offsets, valid, crop)[..., 0]
