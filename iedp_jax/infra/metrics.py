"""Evaluation metrics: jittable per-batch accumulators and host-side finalisers.

The accumulators (``confusion_matrix``, ``depth_metric_sums``) return sums, so results over many
batches, devices or hosts combine by plain addition (``jax.tree.map(jnp.add, a, b)``, or a
``psum``/host all-reduce of the same tree); the finalisers (``segmentation_metrics``,
``depth_metrics``) turn the total into numbers on the host. IEDP evaluation and DiffSegmenter's
open-vocabulary evaluation share them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

DEPTH_METRICS = ("abs_rel", "sq_rel", "rmse", "rmse_log", "log10", "delta1", "delta2", "delta3")


# ----------------------------------------------------------------------------- segmentation


def confusion_matrix(pred: jax.Array, label: jax.Array, num_classes: int,
                     ignore_index: int = 255) -> jax.Array:
    """Pixel counts ``[C, C]`` int32, rows = ground-truth label, columns = prediction.

    ``pred`` and ``label`` are integer arrays of the same shape (any rank). Pixels labelled
    ``ignore_index`` or outside ``[0, C)`` are skipped, and so are predictions outside ``[0, C)``.
    Jittable (a ``segment_sum`` over ``label * C + pred``). int32 holds ~2e9 pixels per cell: add
    whole-dataset totals on the host in int64 if one cell could exceed that.
    """
    if pred.shape != label.shape:
        raise ValueError(f"pred and label must have the same shape, got {pred.shape} and "
                         f"{label.shape}.")
    if num_classes < 1:
        raise ValueError(f"num_classes must be positive, got {num_classes}.")
    pred = jnp.ravel(pred).astype(jnp.int32)  # [N]
    label = jnp.ravel(label).astype(jnp.int32)  # [N]
    valid = ((label != ignore_index) & (label >= 0) & (label < num_classes)
             & (pred >= 0) & (pred < num_classes))  # [N]
    index = jnp.where(valid, label * num_classes + pred, 0)  # [N]
    counts = jax.ops.segment_sum(valid.astype(jnp.int32), index,
                                 num_segments=num_classes * num_classes)  # [C * C]
    return counts.reshape(num_classes, num_classes)


def _nan_to_none(values: np.ndarray) -> list[float | None]:
    return [None if math.isnan(v) else float(v) for v in values.tolist()]


ABSENT_IOU = ("nan", "zero")


def segmentation_metrics(conf: np.ndarray,
                         class_names: Sequence[str] | None = None, absent_iou: str = "nan") -> dict:
    """mIoU, aAcc, mAcc and per-class IoU/Acc (fractions in [0, 1]) from a confusion matrix.

    Follows mmseg's ``total_area_to_metrics``: ``IoU = TP / (label area + pred area - TP)`` and
    ``Acc = TP / label area``; a class whose denominator is 0 (IoU: absent from both label and
    prediction; Acc: absent from the label) gets NaN and is left out of the mean. With
    ``absent_iou="zero"`` such a class's IoU is 0 and counts in the mIoU instead (DiffSegmenter's
    official ``TP / (T + P - TP + 1e-10)`` over all classes). Per-class values
    are a dict keyed by class name when names are given, else a list; NaN is written as None so the
    result is JSON-serialisable.
    """
    conf = np.asarray(conf, dtype=np.float64)
    if conf.ndim != 2 or conf.shape[0] != conf.shape[1]:
        raise ValueError(f"conf must be a square [C, C] matrix, got shape {conf.shape}.")
    if class_names is not None and len(class_names) != conf.shape[0]:
        raise ValueError(f"class_names has {len(class_names)} names but conf has "
                         f"{conf.shape[0]} classes.")
    total = conf.sum()
    if total <= 0:
        raise ValueError("conf counts no labelled pixel, so no metric is defined.")
    tp = np.diag(conf)  # [C]
    area_label = conf.sum(axis=1)  # [C]
    area_pred = conf.sum(axis=0)  # [C]
    union = area_label + area_pred - tp
    if absent_iou not in ABSENT_IOU:
        raise ValueError(f"absent_iou must be one of {ABSENT_IOU}, got {absent_iou!r}.")
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, tp / union, np.nan if absent_iou == "nan" else 0.0)
        acc = np.where(area_label > 0, tp / area_label, np.nan)
    iou_list, acc_list = _nan_to_none(iou), _nan_to_none(acc)
    per_class = ((lambda v: dict(zip(class_names, v))) if class_names is not None
                 else (lambda v: v))
    return {
        "mIoU": float(np.nanmean(iou)),
        "aAcc": float(tp.sum() / total),
        "mAcc": float(np.nanmean(acc)),
        "IoU": per_class(iou_list),
        "Acc": per_class(acc_list),
    }


# ----------------------------------------------------------------------------- depth


def depth_metric_sums(pred: jax.Array, gt: jax.Array, min_depth: float = 1e-3,
                      max_depth: float = 10.0, mask: jax.Array | None = None, clip: bool = True) -> dict:
    """Per-image depth metrics summed over the batch, plus ``count`` (float32 scalars).

    Valid pixels: ``min_depth < gt < max_depth`` (and ``mask``, e.g. the Eigen crop), as BTS and
    VPD. With ``clip`` (BTS; VPD does not clip) ``pred`` is clipped to ``[min_depth, max_depth]``;
    NaN becomes ``min_depth`` and a prediction is floored at ``min_depth`` either way (the logs
    need it). Each
    metric is computed per image over its valid pixels; images with no valid pixel add nothing
    and are not counted. Jittable; sums from several batches or hosts combine by a plain tree add
    (``jax.tree.map(jnp.add, a, b)``), and ``depth_metrics`` divides by the total ``count``.
    """
    if pred.shape != gt.shape or pred.ndim != 3:
        raise ValueError(f"pred and gt must have the same [B, H, W] shape, got {pred.shape} and "
                         f"{gt.shape}.")
    if mask is not None and mask.shape != gt.shape:
        raise ValueError(f"mask must have the shape of gt {gt.shape}, got {mask.shape}.")
    if not 0 < min_depth < max_depth:
        raise ValueError(f"need 0 < min_depth < max_depth, got {min_depth} and {max_depth}.")
    pred = pred.astype(jnp.float32)
    gt = gt.astype(jnp.float32)
    pred = jnp.clip(jnp.where(jnp.isnan(pred), min_depth, pred), min_depth, max_depth if clip else None)
    valid = (gt > min_depth) & (gt < max_depth)  # [B, H, W]
    if mask is not None:
        valid = valid & mask.astype(bool)
    gt = jnp.where(valid, gt, 1.0)  # safe values where invalid (no 0 * NaN)
    pred = jnp.where(valid, pred, 1.0)
    n = jnp.sum(valid, axis=(1, 2)).astype(jnp.float32)  # [B]
    has = n > 0  # [B]

    def mean(x):  # [B, H, W] -> [B], masked mean per image
        return jnp.sum(jnp.where(valid, x, 0.0), axis=(1, 2)) / jnp.maximum(n, 1.0)

    diff = pred - gt
    log_diff = jnp.log(pred) - jnp.log(gt)
    thresh = jnp.maximum(gt / pred, pred / gt)
    per_image = {
        "abs_rel": mean(jnp.abs(diff) / gt),
        "sq_rel": mean(diff ** 2 / gt),
        "rmse": jnp.sqrt(mean(diff ** 2)),
        "rmse_log": jnp.sqrt(mean(log_diff ** 2)),
        "log10": mean(jnp.abs(jnp.log10(pred) - jnp.log10(gt))),
        "delta1": mean((thresh < 1.25).astype(jnp.float32)),
        "delta2": mean((thresh < 1.25 ** 2).astype(jnp.float32)),
        "delta3": mean((thresh < 1.25 ** 3).astype(jnp.float32)),
    }  # each [B]
    sums = {k: jnp.sum(jnp.where(has, v, 0.0)) for k, v in per_image.items()}
    sums["count"] = jnp.sum(has).astype(jnp.float32)
    return sums


def depth_metrics(sums: Mapping[str, jax.Array | float]) -> dict[str, float]:
    """Means over images from (possibly accumulated) ``depth_metric_sums`` output."""
    missing = [k for k in (*DEPTH_METRICS, "count") if k not in sums]
    if missing:
        raise ValueError(f"sums lacks the keys {missing}; pass the output of depth_metric_sums.")
    count = float(np.asarray(sums["count"]))
    if count <= 0:
        raise ValueError("sums count no image with a valid depth pixel, so no metric is defined.")
    return {k: float(np.asarray(sums[k], dtype=np.float64)) / count for k in DEPTH_METRICS}
