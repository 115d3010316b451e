"""DiffSegmenter's attention arithmetic and resizes as pure, jittable functions (steps 3-5 of DESIGN.md 4).

Maps come from :func:`iedp_jax.sd.attention_maps`: ``{diffusers module path: [N, Q, K]}``
head-averaged probabilities, Q = side*side in row-major order, K = the context length (77) for
cross-attention (``...attn2``) and Q for self-attention (``...attn1``). N is the batch axis of the
UNet call (images x candidate classes).

Resizing is bilinear with half-pixel centres and no antialiasing, which is what the original's
``F.interpolate(mode='bilinear', align_corners=False)`` computes: to a static size with
:func:`iedp_jax.sd.layers.resize_bilinear` (:func:`resize`), and with a per-image scale inside a
fixed canvas (:func:`resize_regions`, :func:`maps_to_canvas`) for batches of images of several sizes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import jax
import jax.numpy as jnp

from iedp_jax.sd.attention import CROSS, SELF, maps_by_side, mean_map
from iedp_jax.sd.layers import resize_bilinear, resize_region

DEFAULT_EPS = 1e-12


def resize(x: jax.Array, out_hw: tuple[int, int]) -> jax.Array:
    """Bilinear resize of the last two axes: [..., h, w] -> [..., H, W]."""
    lead, hw = x.shape[:-2], x.shape[-2:]
    y = resize_bilinear(x.reshape((-1,) + hw)[..., None], out_hw)  # [N, H, W, 1]
    return y.reshape(lead + tuple(out_hw))


def resize_regions(x: jax.Array, hw: jax.Array, out_hw: tuple[int, int]) -> jax.Array:
    """Resizes the top-left ``hw[n]`` region of each canvas ``x[n]`` to ``out_hw``.

    x [N, Hc, Wc, ...] (any dtype), hw [N, 2] int -> float32 [N, *out_hw, ...]: the samples of
    resizing the unpadded image (reads clamp to the region, as ``F.interpolate``).
    """
    target = jnp.broadcast_to(jnp.asarray(out_hw, jnp.int32), hw.shape)
    return resize_region(x, hw, target, out_hw)


def _region(hw: jax.Array, canvas_hw: tuple[int, int]) -> jax.Array:
    """[N, Hc, Wc] bool: True inside each image's top-left ``hw`` region."""
    ys = jnp.arange(canvas_hw[0])[None, :, None]
    xs = jnp.arange(canvas_hw[1])[None, None, :]
    return (ys < hw[:, 0, None, None]) & (xs < hw[:, 1, None, None])


def maps_to_canvas(maps: jax.Array, hw: jax.Array, canvas_hw: tuple[int, int], eps: float = DEFAULT_EPS
                   ) -> jax.Array:
    """Maps -> each image's size inside a fixed canvas, min-max normalised there.

    Args:
      maps: [N, s, s] (any values).
      hw: [N, 2] int, each map's image size (H_i, W_i) <= canvas.
      canvas_hw: static (Hc, Wc).

    Returns:
      [N, Hc, Wc] float32: inside ``[:H_i, :W_i]`` exactly ``minmax(resize(maps, (H_i, W_i)))``,
      0 outside.
    """
    source = jnp.broadcast_to(jnp.asarray(maps.shape[-2:], jnp.int32), hw.shape)
    out = resize_region(maps[..., None], source, hw, canvas_hw)[..., 0]  # [N, Hc, Wc]
    inside = _region(hw, canvas_hw)
    lo = jnp.where(inside, out, jnp.inf).min(axis=(1, 2), keepdims=True)
    hi = jnp.where(inside, out, -jnp.inf).max(axis=(1, 2), keepdims=True)
    return jnp.where(inside, (out - lo) / jnp.maximum(hi - lo, eps), 0.0)


def minmax_normalize(x: jax.Array, ndim: int = 2, eps: float = DEFAULT_EPS) -> jax.Array:
    """``(x - min) / max(max - min, eps)`` over the last ``ndim`` axes (a constant map -> 0)."""
    axes = tuple(range(x.ndim - ndim, x.ndim))
    lo = x.min(axis=axes, keepdims=True)
    hi = x.max(axis=axes, keepdims=True)
    return (x - lo) / jnp.maximum(hi - lo, eps)


def aggregate_cross(maps: Mapping[str, jax.Array], token_weights: jax.Array,
                    resolutions: Mapping[int, float], out_side: int, eps: float = DEFAULT_EPS) -> jax.Array:
    """The class's cross-attention map: step 3 of DiffSegmenter.

    For each resolution (feature-map side) with weight w: the mean over every cross-attention
    layer of that side, the token-weighted sum over the context axis, reshape to
    ``[N, side, side]``, bilinear upsampling to ``out_side``, min-max normalisation per map; then
    the w-weighted sum over resolutions.

    Args:
      maps: ``{path: [N, side*side, L]}``; self-attention entries (paths ending ``attn1``) are
        ignored.
      token_weights: [N, L] (the class token's weight, or two halves for the "-ing" rule).
      resolutions: ``{side: weight}``, e.g. ``{8: 0.3, 16: 0.5, 32: 0.1, 64: 0.1}``.
      out_side: the output side (64 for a 512 input).

    Returns:
      [N, out_side, out_side] float32.

    Raises:
      ValueError: a requested side has no cross-attention map.
    """
    by_side = maps_by_side(maps, CROSS)
    total = None
    for side, weight in sorted(resolutions.items()):
        if side not in by_side:
            raise ValueError(f"no cross-attention map at {side}x{side} (have {sorted(by_side)}): "
                             "drop that resolution or capture it.")
        mean = mean_map(by_side[side])  # [N, Q, L]
        a = jnp.einsum("nql,nl->nq", mean, token_weights.astype(jnp.float32),
                       precision=jax.lax.Precision.HIGHEST)
        a = resize(a.reshape(a.shape[0], side, side), (out_side, out_side))
        term = weight * minmax_normalize(a, 2, eps)
        total = term if total is None else total + term
    if total is None:
        raise ValueError("aggregate_cross needs at least one resolution.")
    return total


def mean_self_attention(maps: Mapping[str, jax.Array], side: int, dtype=jnp.float32) -> jax.Array:
    """Mean of every self-attention map at ``side``: [N, side*side, side*side] in ``dtype``."""
    by_side = maps_by_side(maps, SELF)
    if side not in by_side:
        raise ValueError(f"no self-attention map at {side}x{side} (have {sorted(by_side)}).")
    return mean_map(by_side[side], dtype)


def refine(self_attn: jax.Array, cross: jax.Array) -> jax.Array:
    """Self-attention refinement ``M = S @ a``: step 4 (one batched matmul).

    Args:
      self_attn: S [N, Q, Q] (rows: queries), any float dtype.
      cross: a [N, side, side] with side*side = Q.

    Returns:
      [N, side, side] float32.
    """
    n, side = cross.shape[0], cross.shape[-1]
    a = cross.reshape(n, side * side, 1).astype(self_attn.dtype)
    m = jnp.matmul(self_attn, a, preferred_element_type=jnp.float32, precision=jax.lax.Precision.HIGHEST)
    return m.reshape(n, side, side)


def refined_maps(cross_maps: Mapping[str, jax.Array], self_attn: jax.Array, token_weights: jax.Array,
                 resolutions: Mapping[int, float], eps: float = DEFAULT_EPS) -> jax.Array:
    """Steps 3-4 at the refinement side: :func:`aggregate_cross` then :func:`refine`.

    Args:
      cross_maps: ``{path: [N, Q_s, L]}`` (self entries ignored).
      self_attn: S [N, Q, Q], the mean self-attention at the refinement side (Q = side*side).
      token_weights: [N, L].

    Returns:
      [N, side, side] float32 (not normalised).
    """
    side = math.isqrt(self_attn.shape[-1])
    return refine(self_attn, aggregate_cross(cross_maps, token_weights, resolutions, side, eps))


def class_maps_from_attention(cross_maps: Mapping[str, jax.Array], self_attn: jax.Array,
                              token_weights: jax.Array, resolutions: Mapping[int, float],
                              out_hw: tuple[int, int], eps: float = DEFAULT_EPS) -> jax.Array:
    """:func:`refined_maps` resized to ``out_hw`` and min-max normalised per map: [N, H, W] in [0, 1]."""
    m = resize(refined_maps(cross_maps, self_attn, token_weights, resolutions, eps), out_hw)
    return minmax_normalize(m, 2, eps)


def label_map(class_maps: jax.Array, valid: jax.Array, threshold: float | jax.Array) -> jax.Array:
    """Step 5: argmax over [background = constant threshold, class maps].

    Args:
      class_maps: [B, K, H, W], min-max normalised per class.
      valid: [B, K] bool; invalid (padding) classes can never win.
      threshold: the background score.

    Returns:
      [B, H, W] int32: 0 = background, k + 1 = class k. Ties go to the lower label (background
      wins a tie with the threshold).
    """
    scores = jnp.where(valid[:, :, None, None], class_maps.astype(jnp.float32), -jnp.inf)
    bg = jnp.full_like(scores[:, :1], jnp.asarray(threshold, jnp.float32))
    return jnp.argmax(jnp.concatenate([bg, scores], axis=1), axis=1).astype(jnp.int32)


__all__ = ["aggregate_cross", "class_maps_from_attention", "label_map", "maps_to_canvas", "mean_self_attention",
           "minmax_normalize", "refine", "refined_maps", "resize", "resize_regions"]
