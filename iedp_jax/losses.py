"""Training losses: masked cross-entropy and SILog (NHWC).

Every loss returns a float32 scalar and stays finite (value and gradient) when a batch has no
valid pixel, so a crop made only of ignored pixels never poisons a training step with NaN.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from iedp_jax.infra.errors import ConfigError

CE_AVERAGES = ("valid", "all")


# Elements of one row block's [B, R, W, C] float32 logits (16 MiB): the resized logits of a
# 512x512 crop with 150 classes take 150 MiB per image, and their log-softmax and gradients as
# much again each, so the loss runs over row blocks instead, rematerialised.
LOSS_BLOCK = 2**22


def _resize_weights(n_in: int, n_out: int) -> jax.Array:
    """[n_out, n_in] bilinear interpolation weights of :func:`resize_bilinear` along one axis
    (PyTorch ``align_corners=False``, no antialiasing): the resize of the identity."""
    return jax.image.resize(jnp.eye(n_in, dtype=jnp.float32), (n_out, n_in), method="bilinear", antialias=False)


def cross_entropy(logits: jax.Array, labels: jax.Array, ignore_index: int = 255,
                  average: str = "valid") -> jax.Array:
    """Mean pixel cross-entropy of ``logits [B, h, w, C]`` against ``labels [B, H, W]`` (int).

    The logits are resized bilinearly (in float32) to the label size, as mmseg does. Pixels whose
    label is ``ignore_index`` (or otherwise outside ``[0, C)``) add nothing. ``average="valid"``
    divides by the valid pixels (PyTorch's ``ignore_index`` mean; with no valid pixel the loss is
    0 where PyTorch gives NaN); ``"all"`` divides by every pixel, as mmseg 0.x does
    (``avg_non_ignore=False``, VPD's setting).

    Memory: the resize is separable; the columns are resized at once (``[B, h, W, C]``), the rows
    block by block (``LOSS_BLOCK`` elements), each block's log-softmax summed and rematerialised
    in the backward pass, so the full-size ``[B, H, W, C]`` logits never exist.
    """
    if average not in CE_AVERAGES:
        raise ValueError(f"average must be one of {CE_AVERAGES}, got {average!r}.")
    if logits.ndim != 4 or labels.ndim != 3 or logits.shape[0] != labels.shape[0]:
        raise ValueError(f"cross_entropy expects logits [B, h, w, C] and labels [B, H, W] with the "
                         f"same B, got {logits.shape} and {labels.shape}.")
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise ValueError(f"labels must be an integer array, got dtype {labels.dtype}.")
    b, h, w, num_classes = logits.shape
    big_h, big_w = labels.shape[1:3]
    x = logits.astype(jnp.float32)
    if w != big_w:
        x = jnp.einsum("Ww,bhwc->bhWc", _resize_weights(w, big_w), x)  # [B, h, W, C]
    rows = max(1, min(big_h, LOSS_BLOCK // max(1, b * big_w * num_classes)))
    n = -(-big_h // rows)
    pad = n * rows - big_h
    valid = (labels != ignore_index) & (labels >= 0) & (labels < num_classes)  # [B, H, W]
    safe_labels = jnp.where(valid, labels, 0).astype(jnp.int32)
    blocks_valid = jnp.pad(valid, ((0, 0), (0, pad), (0, 0))).reshape(b, n, rows, big_w).swapaxes(0, 1)
    blocks_label = jnp.pad(safe_labels, ((0, 0), (0, pad), (0, 0))).reshape(b, n, rows, big_w).swapaxes(0, 1)
    if h != big_h:
        weights = jnp.pad(_resize_weights(h, big_h), ((0, pad), (0, 0))).reshape(n, rows, h)  # [n, R, h]
    else:
        weights = jnp.arange(n)  # block k takes rows k*R .. k*R+R-1 of x directly
        x = jnp.pad(x, ((0, 0), (0, pad), (0, 0), (0, 0)))

    @functools.partial(jax.checkpoint, prevent_cse=False)
    def block(args) -> jax.Array:
        wk, lab, ok = args  # [R, h] or the block index, [B, R, W], [B, R, W]
        if h != big_h:
            xr = jnp.einsum("rh,bhwc->brwc", wk, x)  # [B, R, W, C]
        else:
            xr = jax.lax.dynamic_slice_in_dim(x, wk * rows, rows, axis=1)
        logp = jax.nn.log_softmax(xr, axis=-1)
        nll = -jnp.take_along_axis(logp, lab[..., None], axis=-1)[..., 0]  # [B, R, W]
        return jnp.sum(jnp.where(ok, nll, 0.0))

    total = jnp.sum(jax.lax.map(block, (weights, blocks_label, blocks_valid)))
    count = jnp.sum(valid) if average == "valid" else valid.size
    return total / jnp.maximum(count, 1).astype(jnp.float32)


def silog(pred: jax.Array, gt: jax.Array, variance_focus: float = 0.5,
          eps: float = 1e-6, group: int = 0) -> jax.Array:
    """Scale-invariant log loss (VPD/BTS) of ``pred [B, H, W]`` against ``gt [B, H, W]`` depths.

    ``d = log gt - log pred`` over pixels with ``gt > eps``;
    ``loss = sqrt(mean(d^2) - variance_focus * mean(d)^2)`` (DESIGN 3.1, VPD's ``SiLogLoss``).
    ``group`` = 0 pools the whole batch; ``group`` = N splits it into consecutive groups of N
    images, takes the loss of each and averages them (VPD computes it per GPU, 3 images, and DDP
    averages the GPUs' gradients); N must divide B. A group (or batch) without a valid pixel, or
    whose radicand is not positive, gives 0 with a zero (finite) gradient.
    """
    if pred.shape != gt.shape or pred.ndim != 3:
        raise ValueError(f"silog expects pred and gt of the same [B, H, W] shape, got {pred.shape} "
                         f"and {gt.shape}.")
    b = pred.shape[0]
    g = int(group) or b
    if g < 0 or b % g:
        raise ConfigError(f"loss.silog_group={group} must divide the batch of {b} images per loss call "
                          "(train.batch_size / train.grad_accum_steps); set it to a divisor, or 0 for the whole batch.")
    pred = pred.astype(jnp.float32).reshape(b // g, g, -1)  # [G, N, H*W]
    gt = gt.astype(jnp.float32).reshape(b // g, g, -1)
    valid = gt > eps
    # Substitute 1 at invalid pixels before the log so that neither value nor gradient sees NaN.
    d = jnp.where(valid, jnp.log(jnp.where(valid, gt, 1.0)) - jnp.log(jnp.where(valid, pred, 1.0)),
                  0.0)  # [G, N, H*W]
    n = jnp.maximum(jnp.sum(valid, axis=(1, 2)), 1).astype(jnp.float32)  # [G]
    mean_d = jnp.sum(d, axis=(1, 2)) / n
    mean_d2 = jnp.sum(d * d, axis=(1, 2)) / n
    radicand = mean_d2 - variance_focus * mean_d ** 2  # [G]
    positive = radicand > 0
    return jnp.mean(jnp.where(positive, jnp.sqrt(jnp.where(positive, radicand, 1.0)), 0.0))
