"""Convolutional building blocks shared by the UNet and the VAE (diffusers parameter names, NHWC),
and the resizes with PyTorch semantics that heads, losses and DiffSegmenter share."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.linen import dtypes

Dtype = Any


def group_norm(groups: int, eps: float, dtype: Dtype, param_dtype: Dtype, name: str) -> nn.GroupNorm:
    """GroupNorm with PyTorch semantics: float32 statistics, two-pass variance."""
    return nn.GroupNorm(num_groups=groups, epsilon=eps, dtype=dtype, param_dtype=param_dtype,
                        use_fast_variance=False, name=name)


@jax.custom_vjp
def _tie(x: jax.Array, w: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(x, w)`` unchanged, but ``w`` cannot be used before ``x`` exists (an optimisation
    barrier in the forward pass only; cotangents pass straight through)."""
    return jax.lax.optimization_barrier((x, w))


_tie.defvjp(lambda x, w: (jax.lax.optimization_barrier((x, w)), None), lambda _, ct: ct)


def _promote_after_input(*args: Any, dtype: Dtype = None, inexact: bool = True) -> list[Any]:
    """Flax's ``promote_dtype`` (the cast of input, weight and bias to the compute dtype), with
    the weight tied to the input first.

    A layer computing below float32 casts its weight; the cast depends on nothing but a
    parameter, so XLA may run every layer's cast at the start and keep all the copies alive (and
    XLA:CPU, which has no bfloat16 convolution, a float32 copy of each as well): a copy of every
    SD 1.5 kernel at once, which made DiffSegmenter in bfloat16 larger than in float32 and
    doubled the bfloat16 train step's temporaries. Tied to the input, each cast runs when its
    layer does."""
    x, w, *rest = args
    x, w = _tie(x, w)
    return dtypes.promote_dtype(x, w, *rest, dtype=dtype, inexact=inexact)


def _low_precision(dtype: Dtype) -> bool:
    return dtype is not None and jnp.dtype(dtype) != jnp.float32


def _promote(dtype: Dtype):
    return _promote_after_input if _low_precision(dtype) else dtypes.promote_dtype


def dense(features: int, use_bias: bool = True, *, dtype: Dtype, param_dtype: Dtype, name: str) -> nn.Dense:
    """``nn.Dense`` (low-precision compute: the weight's cast waits for the input, see
    ``_promote_after_input``)."""
    return nn.Dense(features, use_bias=use_bias, dtype=dtype, param_dtype=param_dtype, name=name,
                    promote_dtype=_promote(dtype))


def conv(features: int, kernel: int, dtype: Dtype, param_dtype: Dtype, name: str,
         stride: int = 1, padding: Any = "SAME_TORCH", use_bias: bool = True) -> nn.Conv:
    """A 2-D convolution with PyTorch's symmetric ``kernel // 2`` padding unless told otherwise
    (low-precision compute: the kernel's cast waits for the input, see ``_promote_after_input``)."""
    if padding == "SAME_TORCH":
        padding = ((kernel // 2, kernel // 2), (kernel // 2, kernel // 2))
    return nn.Conv(features, (kernel, kernel), strides=(stride, stride), padding=padding,
                   use_bias=use_bias, dtype=dtype, param_dtype=param_dtype, name=name,
                   promote_dtype=_promote(dtype))


def _check_size(size: Sequence[int]) -> tuple[int, int]:
    if len(size) != 2 or any(int(s) != s or s < 1 for s in size):
        raise ValueError(f"size must be two positive integers (height, width), got {size!r}.")
    return int(size[0]), int(size[1])


def resize_bilinear(x: jax.Array, size: Sequence[int]) -> jax.Array:
    """Bilinear resize of ``x [B, h, w, C]`` to ``[B, H, W, C]``.

    Matches PyTorch ``F.interpolate(mode='bilinear', align_corners=False)`` (half-pixel centres,
    edge clamping, no antialiasing) for upsampling and downsampling alike, so heads and losses
    ported from mmseg/VPD resize the same way. A no-op when the size already matches.
    """
    if x.ndim != 4:
        raise ValueError(f"resize_bilinear expects a [B, h, w, C] array, got shape {x.shape}.")
    h, w = _check_size(size)
    if x.shape[1:3] == (h, w):
        return x
    return jax.image.resize(x, (x.shape[0], h, w, x.shape[3]), method="bilinear", antialias=False)


def _axis_coords(in_n: jax.Array, out_n: jax.Array, size: int):
    """PyTorch ``align_corners=False`` source coordinates for ``size`` output positions."""
    in_n = in_n.astype(jnp.int32)[:, None]  # [B, 1]
    scale = in_n.astype(jnp.float32) / jnp.maximum(out_n, 1).astype(jnp.float32)[:, None]
    src = jnp.maximum((jnp.arange(size, dtype=jnp.float32)[None, :] + 0.5) * scale - 0.5, 0.0)  # [B, S]
    i0 = jnp.minimum(jnp.floor(src).astype(jnp.int32), in_n - 1)
    i1 = jnp.where(i0 < in_n - 1, i0 + 1, i0)
    lam1 = src - i0.astype(jnp.float32)
    return i0, i1, 1.0 - lam1, lam1


def resize_region(x: jax.Array, in_hw: jax.Array, out_hw: jax.Array, out_size: Sequence[int]) -> jax.Array:
    """Bilinear resize (PyTorch ``align_corners=False``, no antialiasing, as
    :func:`resize_bilinear`) of the top-left ``in_hw[b]`` region of each
    ``x[b]`` (``[B, H, W, C]``) to ``out_hw[b]``, written at the top-left of a static
    ``[B, *out_size, C]`` output (values past ``out_hw`` are unspecified). Sizes are ``[B, 2]``
    int arrays, so one compiled function serves every size that fits."""
    ho, wo = _check_size(out_size)
    in_hw = jnp.asarray(in_hw)
    out_hw = jnp.asarray(out_hw)
    r0, r1, a0, a1 = _axis_coords(in_hw[:, 0], out_hw[:, 0], ho)  # [B, Ho]
    c0, c1, b0, b1 = _axis_coords(in_hw[:, 1], out_hw[:, 1], wo)  # [B, Wo]
    extra = (None,) * (x.ndim - 3)

    def one(xb, r0, r1, a0, a1, c0, c1, b0, b1):
        def cols(rows):  # [Ho, W, ...] -> [Ho, Wo, ...]
            return (b0[(None, slice(None)) + extra] * jnp.take(rows, c0, axis=1)
                    + b1[(None, slice(None)) + extra] * jnp.take(rows, c1, axis=1))

        top, bottom = cols(jnp.take(xb, r0, axis=0)), cols(jnp.take(xb, r1, axis=0))
        return a0[(slice(None), None) + extra] * top + a1[(slice(None), None) + extra] * bottom

    return jax.vmap(one)(x.astype(jnp.float32), r0, r1, a0, a1, c0, c1, b0, b1)


def resize_nearest(x: jax.Array, size: tuple[int, int]) -> jax.Array:
    """Nearest-neighbour resize with PyTorch's ``F.interpolate(mode='nearest', size=...)`` rule.

    Source index ``floor(dst * in / out)``; for an exact 2x this is ``dst // 2``.
    """
    _, h, w, _ = x.shape
    rows = (jnp.arange(size[0]) * h) // size[0]
    cols = (jnp.arange(size[1]) * w) // size[1]
    return x[:, rows][:, :, cols]


class ResnetBlock2D(nn.Module):
    """diffusers ``ResnetBlock2D`` (``resnet_time_scale_shift='default'``)."""

    out_channels: int
    groups: int = 32
    eps: float = 1e-5
    output_scale_factor: float = 1.0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, temb: jax.Array | None) -> jax.Array:
        # x: [B, H, W, Cin], temb: [B, T] or None
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        h = nn.silu(group_norm(self.groups, self.eps, name="norm1", **kw)(x))
        h = conv(self.out_channels, 3, name="conv1", **kw)(h)
        if temb is not None:
            t = dense(self.out_channels, name="time_emb_proj", **kw)(nn.silu(temb))
            h = h + t[:, None, None, :]
        h = nn.silu(group_norm(self.groups, self.eps, name="norm2", **kw)(h))
        h = conv(self.out_channels, 3, name="conv2", **kw)(h)
        if x.shape[-1] != self.out_channels:
            x = conv(self.out_channels, 1, name="conv_shortcut", padding=((0, 0), (0, 0)), **kw)(x)
        return (x + h) / self.output_scale_factor if self.output_scale_factor != 1.0 else x + h


class Downsample2D(nn.Module):
    """Stride-2 3x3 convolution; ``padding=0`` pads right/bottom by one first (the VAE encoder)."""

    out_channels: int
    padding: int = 1
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if self.padding == 0:
            x = jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))
        p = ((self.padding, self.padding), (self.padding, self.padding))
        return conv(self.out_channels, 3, stride=2, padding=p, name="conv",
                    dtype=self.dtype, param_dtype=self.param_dtype)(x)


class Upsample2D(nn.Module):
    """Nearest upsampling (2x, or to the skip connection's size) followed by a 3x3 convolution."""

    out_channels: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, size: tuple[int, int] | None = None) -> jax.Array:
        _, h, w, _ = x.shape
        x = resize_nearest(x, size or (2 * h, 2 * w))
        return conv(self.out_channels, 3, name="conv", dtype=self.dtype, param_dtype=self.param_dtype)(x)
