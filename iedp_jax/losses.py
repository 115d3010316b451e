"""Training losses: masked cross-entropy and SILog (NHWC).

Every loss returns a float32 scalar and stays finite (value and gradient) when a batch has no
valid pixel, so a crop made only of ignored pixels never poisons a training step with NaN.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from iedp_jax.sd.layers import resize_bilinear

CE_AVERAGES = ("valid", "all")


def cross_entropy(logits: jax.Array, labels: jax.Array, ignore_index: int = 255,
                  average: str = "valid") -> jax.Array:
    """Mean pixel cross-entropy of ``logits [B, h, w, C]`` against ``labels [B, H, W]`` (int).

    The logits are resized bilinearly (in float32) to the label size, as mmseg does. Pixels whose
    label is ``ignore_index`` (or otherwise outside ``[0, C)``) add nothing. ``average="valid"``
    divides by the valid pixels (PyTorch's ``ignore_index`` mean; with no valid pixel the loss is
    0 where PyTorch gives NaN); ``"all"`` divides by every pixel, as mmseg 0.x does
    (``avg_non_ignore=False``, VPD's setting).
    """
    if average not in CE_AVERAGES:
        raise ValueError(f"average must be one of {CE_AVERAGES}, got {average!r}.")
    if logits.ndim != 4 or labels.ndim != 3 or logits.shape[0] != labels.shape[0]:
        raise ValueError(f"cross_entropy expects logits [B, h, w, C] and labels [B, H, W] with the "
                         f"same B, got {logits.shape} and {labels.shape}.")
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise ValueError(f"labels must be an integer array, got dtype {labels.dtype}.")
    num_classes = logits.shape[-1]
    logits = resize_bilinear(logits.astype(jnp.float32), labels.shape[1:3])  # [B, H, W, C]
    valid = (labels != ignore_index) & (labels >= 0) & (labels < num_classes)  # [B, H, W]
    safe_labels = jnp.where(valid, labels, 0).astype(jnp.int32)
    logp = jax.nn.log_softmax(logits, axis=-1)  # [B, H, W, C]
    nll = -jnp.take_along_axis(logp, safe_labels[..., None], axis=-1)[..., 0]  # [B, H, W]
    count = jnp.sum(valid) if average == "valid" else valid.size
    return jnp.sum(jnp.where(valid, nll, 0.0)) / jnp.maximum(count, 1).astype(jnp.float32)


def silog(pred: jax.Array, gt: jax.Array, variance_focus: float = 0.5,
          eps: float = 1e-6) -> jax.Array:
    """Scale-invariant log loss (VPD/BTS) of ``pred [B, H, W]`` against ``gt [B, H, W]`` depths.

    ``d = log gt - log pred`` over pixels with ``gt > eps`` (the whole batch pooled);
    ``loss = sqrt(mean(d^2) - variance_focus * mean(d)^2)`` (DESIGN 3.1, VPD's ``SiLogLoss``).
    Returns 0 with a zero (finite) gradient when no pixel is valid or the radicand is not positive.
    """
    if pred.shape != gt.shape or pred.ndim != 3:
        raise ValueError(f"silog expects pred and gt of the same [B, H, W] shape, got {pred.shape} "
                         f"and {gt.shape}.")
    pred = pred.astype(jnp.float32)
    gt = gt.astype(jnp.float32)
    valid = gt > eps  # [B, H, W]
    # Substitute 1 at invalid pixels before the log so that neither value nor gradient sees NaN.
    d = jnp.where(valid, jnp.log(jnp.where(valid, gt, 1.0)) - jnp.log(jnp.where(valid, pred, 1.0)),
                  0.0)  # [B, H, W]
    n = jnp.maximum(jnp.sum(valid), 1).astype(jnp.float32)
    mean_d = jnp.sum(d) / n
    mean_d2 = jnp.sum(d * d) / n
    radicand = mean_d2 - variance_focus * mean_d ** 2
    positive = radicand > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, radicand, 1.0)), 0.0)
