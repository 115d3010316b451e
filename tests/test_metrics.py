"""Metrics against hand-computed values and a NumPy transcription of BTS's compute_errors."""

from __future__ import annotations

import functools
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from iedp_jax.infra.metrics import confusion_matrix, depth_metric_sums, depth_metrics, segmentation_metrics

# 4 classes; class 3 is absent from both label and prediction. 255 = ignore, 7 = out of range.
LABEL = np.array([[0, 0, 1, 1],
                  [0, 2, 2, 255],
                  [1, 1, 2, 7]], np.int32)
PRED = np.array([[0, 1, 1, 1],
                 [0, 2, 0, 2],
                 [1, 2, 2, 0]], np.int32)
# Valid pixels (label not 255/7): 10. Rows = label, cols = prediction.
CONF = np.array([[2, 1, 0, 0],   # label 0: (0,0)->0 (0,1)->1 (1,0)->0
                 [0, 3, 1, 0],   # label 1: (0,2)->1 (0,3)->1 (2,0)->1 (2,1)->2
                 [1, 0, 2, 0],   # label 2: (1,1)->2 (1,2)->0 (2,2)->2
                 [0, 0, 0, 0]])


def test_confusion_matrix_hand_computed():
    conf = confusion_matrix(jnp.asarray(PRED), jnp.asarray(LABEL), num_classes=4)
    assert conf.dtype == jnp.int32
    np.testing.assert_array_equal(np.asarray(conf), CONF)


def test_segmentation_metrics_hand_computed():
    m = segmentation_metrics(CONF, class_names=["a", "b", "c", "d"])
    iou = {"a": 2 / (3 + 3 - 2), "b": 3 / (4 + 4 - 3), "c": 2 / (3 + 3 - 2)}
    acc = {"a": 2 / 3, "b": 3 / 4, "c": 2 / 3}
    for k in iou:
        assert m["IoU"][k] == pytest.approx(iou[k]) and m["Acc"][k] == pytest.approx(acc[k])
    assert m["IoU"]["d"] is None and m["Acc"]["d"] is None  # absent from label and prediction
    assert m["mIoU"] == pytest.approx(sum(iou.values()) / 3)  # d left out of the mean
    assert m["mAcc"] == pytest.approx(sum(acc.values()) / 3)
    assert m["aAcc"] == pytest.approx(7 / 10)
    json.dumps(m)  # serialisable as is
    unnamed = segmentation_metrics(CONF)
    assert isinstance(unnamed["IoU"], list) and unnamed["IoU"][3] is None


def test_class_predicted_but_never_labelled_counts_as_zero_iou():
    conf = np.array([[3, 1], [0, 0]])  # class 1 only predicted
    m = segmentation_metrics(conf)
    assert m["IoU"] == [0.75, 0.0] and m["mIoU"] == pytest.approx(0.375)
    assert m["Acc"] == [0.75, None] and m["mAcc"] == pytest.approx(0.75)


def test_segmentation_metrics_rejects_bad_input():
    with pytest.raises(ValueError, match="square"):
        segmentation_metrics(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="class_names"):
        segmentation_metrics(CONF, class_names=["a"])
    with pytest.raises(ValueError, match="no labelled pixel"):
        segmentation_metrics(np.zeros((3, 3)))


def test_jitted_accumulation_over_batches_equals_one_pass():
    rng = np.random.default_rng(0)
    label = rng.integers(0, 6, size=(4, 9, 11)).astype(np.int32)
    label[rng.random(label.shape) < 0.2] = 255
    pred = rng.integers(0, 6, size=label.shape).astype(np.int32)
    step = jax.jit(confusion_matrix, static_argnames=("num_classes", "ignore_index"))
    total = step(pred[:2], label[:2], num_classes=6) + step(pred[2:], label[2:], num_classes=6)
    once = step(pred, label, num_classes=6)
    np.testing.assert_array_equal(np.asarray(total), np.asarray(once))
    assert int(once.sum()) == int((label != 255).sum())


# ----------------------------------------------------------------------------- depth


def _compute_errors(gt, pred):
    """BTS's compute_errors (eval.py), minus silog; gt and pred are the valid pixels."""
    thresh = np.maximum((gt / pred), (pred / gt))
    d1 = (thresh < 1.25).mean()
    d2 = (thresh < 1.25 ** 2).mean()
    d3 = (thresh < 1.25 ** 3).mean()
    rms = np.sqrt(((gt - pred) ** 2).mean())
    log_rms = np.sqrt(((np.log(gt) - np.log(pred)) ** 2).mean())
    abs_rel = np.mean(np.abs(gt - pred) / gt)
    sq_rel = np.mean(((gt - pred) ** 2) / gt)
    log10 = np.mean(np.abs(np.log10(pred) - np.log10(gt)))
    return dict(abs_rel=abs_rel, sq_rel=sq_rel, rmse=rms, rmse_log=log_rms, log10=log10,
                delta1=d1, delta2=d2, delta3=d3)


def test_depth_metrics_hand_computed_2x2():
    # gt: 0 (invalid, too small), 12 (invalid, too large), 2 and 4 valid.
    gt = jnp.asarray([[[0.0, 12.0], [2.0, 4.0]]])
    pred = jnp.asarray([[[5.0, 1.0], [2.4, 20.0]]])  # 20 is clipped to 10
    m = depth_metrics(jax.jit(depth_metric_sums)(pred, gt))
    # valid pairs (gt, pred) = (2, 2.4), (4, 10)
    assert m["abs_rel"] == pytest.approx((0.4 / 2 + 6 / 4) / 2, rel=1e-6)
    assert m["sq_rel"] == pytest.approx((0.16 / 2 + 36 / 4) / 2, rel=1e-6)
    assert m["rmse"] == pytest.approx(math.sqrt((0.16 + 36) / 2), rel=1e-6)
    assert m["rmse_log"] == pytest.approx(math.sqrt((math.log(1.2) ** 2 + math.log(2.5) ** 2) / 2),
                                          rel=1e-6)
    assert m["log10"] == pytest.approx((math.log10(1.2) + math.log10(2.5)) / 2, rel=1e-6)
    # ratios 1.2 and 2.5: delta1 = delta2 = 1/2 (2.5 > 1.5625), delta3 = 1/2 (2.5 > 1.953)
    assert (m["delta1"], m["delta2"], m["delta3"]) == (0.5, 0.5, 0.5)


@pytest.mark.parametrize("clip", [True, False])  # BTS clips the prediction, VPD does not
def test_depth_metrics_match_bts_per_image_mean(clip):
    rng = np.random.default_rng(0)
    gt = rng.uniform(0.0, 11.0, size=(4, 8, 9)).astype(np.float32)
    gt[1, :4] = 0.0
    gt[0, 5, 5] = 10.0  # exactly the maximum: invalid (BTS and VPD use gt < max)
    pred = rng.uniform(0.0, 12.0, size=gt.shape).astype(np.float32)
    mask = np.ones(gt.shape, bool)
    mask[:, :, :2] = False  # a crop, as the Eigen crop
    gt[2] = 0.0  # an image with no valid pixel: not counted
    sums_fn = jax.jit(functools.partial(depth_metric_sums, clip=clip))
    sums = sums_fn(jnp.asarray(pred), jnp.asarray(gt), mask=jnp.asarray(mask))
    assert float(sums["count"]) == 3.0
    ours = depth_metrics(sums)
    per_image = []
    for b in (0, 1, 3):
        p = np.clip(pred[b].astype(np.float64), 1e-3, 10.0 if clip else None)
        valid = (gt[b] > 1e-3) & (gt[b] < 10.0) & mask[b]
        per_image.append(_compute_errors(gt[b][valid].astype(np.float64), p[valid]))
    for k, v in ours.items():
        assert v == pytest.approx(np.mean([e[k] for e in per_image]), rel=1e-5), k
    # Sums over two batches add up to the sums over one.
    a = sums_fn(jnp.asarray(pred[:2]), jnp.asarray(gt[:2]), mask=jnp.asarray(mask[:2]))
    b = sums_fn(jnp.asarray(pred[2:]), jnp.asarray(gt[2:]), mask=jnp.asarray(mask[2:]))
    for k, v in depth_metrics(jax.tree.map(jnp.add, a, b)).items():
        assert v == pytest.approx(ours[k], rel=1e-6)


def test_depth_metrics_reject_empty_and_bad_shapes():
    with pytest.raises(ValueError, match="no image"):
        depth_metrics(depth_metric_sums(jnp.ones((1, 2, 2)), jnp.zeros((1, 2, 2))))
    with pytest.raises(ValueError, match="same"):
        depth_metric_sums(jnp.ones((1, 2, 2)), jnp.ones((1, 2, 3)))
