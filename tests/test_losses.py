"""Losses against PyTorch references, NumPy transcriptions and hand-computed values."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from iedp_jax.losses import cross_entropy, silog
from iedp_jax.sd.layers import resize_bilinear
from tests.helpers import rel_err

torch = pytest.importorskip("torch")
F = torch.nn.functional


@pytest.mark.parametrize("src,dst", [((4, 4), (8, 8)), ((8, 8), (15, 15)), ((5, 7), (16, 13)),
                                     ((15, 15), (8, 8)), ((16, 12), (8, 6)), ((4, 6), (4, 6))])
def test_resize_bilinear_matches_torch(src, dst):
    x = np.random.default_rng(0).normal(size=(2, *src, 3)).astype(np.float32)  # [B, h, w, C]
    ours = resize_bilinear(jnp.asarray(x), dst)
    ref = F.interpolate(torch.from_numpy(x).permute(0, 3, 1, 2), size=dst, mode="bilinear",
                        align_corners=False).permute(0, 2, 3, 1).numpy()
    assert ours.shape == (2, *dst, 3)
    assert rel_err(ours, ref) < 1e-6


def _torch_ce(logits, labels):
    lt = F.interpolate(torch.from_numpy(logits).permute(0, 3, 1, 2), size=labels.shape[1:],
                       mode="bilinear", align_corners=False)
    return F.cross_entropy(lt, torch.from_numpy(labels).long(), ignore_index=255).item()


@pytest.mark.parametrize("logit_size,label_size", [((4, 4), (16, 16)), ((8, 8), (8, 8)),
                                                   ((5, 6), (19, 23))])
def test_cross_entropy_matches_torch(logit_size, label_size):
    rng = np.random.default_rng(1)
    logits = (3 * rng.normal(size=(2, *logit_size, 5))).astype(np.float32)  # [B, h, w, C]
    labels = rng.integers(0, 5, size=(2, *label_size)).astype(np.int32)  # [B, H, W]
    labels[rng.random(labels.shape) < 0.3] = 255
    ours = float(jax.jit(cross_entropy)(jnp.asarray(logits), jnp.asarray(labels)))
    ref = _torch_ce(logits, labels)
    assert abs(ours - ref) / abs(ref) < 1e-5


def test_cross_entropy_all_ignored_is_zero_with_finite_grad():
    logits = jnp.asarray(np.random.default_rng(2).normal(size=(1, 4, 4, 3)), jnp.float32)
    labels = jnp.full((1, 8, 8), 255, jnp.int32)
    value, grad = jax.jit(jax.value_and_grad(cross_entropy))(logits, labels)
    assert float(value) == 0.0
    assert np.all(np.asarray(grad) == 0)


def test_cross_entropy_rejects_bad_shapes():
    with pytest.raises(ValueError, match="same B"):
        cross_entropy(jnp.zeros((2, 4, 4, 3)), jnp.zeros((1, 4, 4), jnp.int32))


def _silog_numpy(pred, gt, variance_focus=0.5, eps=1e-6):
    """Direct transcription of VPD's SiLogLoss (boolean indexing, pooled over the batch)."""
    valid = gt > eps
    d = np.log(gt[valid].astype(np.float64)) - np.log(pred[valid].astype(np.float64))
    return np.sqrt(np.mean(d ** 2) - variance_focus * np.mean(d) ** 2)


def test_silog_matches_numpy():
    rng = np.random.default_rng(3)
    gt = rng.uniform(0.5, 10, size=(2, 6, 7)).astype(np.float32)
    gt[rng.random(gt.shape) < 0.25] = 0.0  # invalid pixels
    pred = rng.uniform(0.5, 10, size=gt.shape).astype(np.float32)
    for vf in (0.5, 0.85):
        ours = float(silog(jnp.asarray(pred), jnp.asarray(gt), variance_focus=vf))
        assert abs(ours - _silog_numpy(pred, gt, vf)) / _silog_numpy(pred, gt, vf) < 1e-5


def test_silog_hand_computed():
    gt = jnp.asarray(np.random.default_rng(4).uniform(1, 5, size=(2, 3, 3)), jnp.float32)
    # pred = 2 gt -> d = -log 2 everywhere -> sqrt(log(2)^2 - 0.5 log(2)^2)
    np.testing.assert_allclose(float(jax.jit(silog)(2 * gt, gt)), np.sqrt(np.log(2) ** 2 * 0.5),
                               rtol=1e-6)
    # A constant d with variance_focus = 1 is fully scale-invariant: 0, with a finite gradient.
    value, grad = jax.jit(jax.value_and_grad(silog))(2 * gt, gt, 1.0)
    assert float(value) == 0.0 and np.all(np.isfinite(np.asarray(grad)))


def test_silog_no_valid_pixel_is_zero_with_finite_grad():
    pred = jnp.ones((1, 4, 4))
    value, grad = jax.jit(jax.value_and_grad(silog))(pred, jnp.zeros((1, 4, 4)))
    assert float(value) == 0.0
    assert np.all(np.asarray(grad) == 0)


def test_silog_gradient_matches_torch():
    rng = np.random.default_rng(5)
    gt = rng.uniform(0.5, 10, size=(2, 4, 5)).astype(np.float32)
    gt[0, 0, :3] = 0.0
    pred = rng.uniform(0.5, 10, size=gt.shape).astype(np.float32)
    grad = jax.jit(jax.grad(silog))(jnp.asarray(pred), jnp.asarray(gt))
    p = torch.from_numpy(pred.astype(np.float64)).requires_grad_()
    g = torch.from_numpy(gt.astype(np.float64))
    m = g > 1e-6
    d = torch.log(g[m]) - torch.log(p[m])
    torch.sqrt((d ** 2).mean() - 0.5 * d.mean() ** 2).backward()
    assert rel_err(grad, p.grad.numpy()) < 1e-5
