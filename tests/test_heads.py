"""Segmentation and depth heads: shapes (odd sizes too), range, dropout, learning, gradients."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

from iedp_jax.heads import DepthHead, SemanticFPNHead
from iedp_jax.losses import cross_entropy, silog

SEG = dict(num_classes=3, fpn_channels=16, head_channels=16, groups=4)
DEPTH = dict(max_depth=10.0, neck_channels=16, deconv_channels=8, conv_channels=8, groups=4)
CHANNELS = (8, 12, 12, 16)


def _features(sizes, batch=2, seed=0):
    rng = np.random.default_rng(seed)  # NumPy: no per-shape compilation of a jax generator
    return [jnp.asarray(rng.normal(size=(batch, s, s, c)), jnp.float32)
            for s, c in zip(sizes, CHANNELS)]


def _key(seed):
    # The "rbg" generator compiles ~5x faster than threefry on CPU, which dominates init here.
    return jax.random.key(seed, impl="rbg")


@pytest.mark.parametrize("sizes", [(15, 8, 4, 2), (16, 8, 4), (9, 5), (6,)])
def test_seg_head_shapes(sizes):
    feats = _features(sizes)
    head = SemanticFPNHead(**SEG)
    params = jax.eval_shape(functools.partial(head.init, train=False), _key(1), feats)
    logits = jax.eval_shape(functools.partial(head.apply, train=False), params, feats)
    assert logits.shape == (2, sizes[0], sizes[0], 3) and logits.dtype == jnp.float32


@pytest.mark.parametrize("sizes,out", [((15, 8, 4, 2), (120, 120)), ((16, 8, 4), (128, 96)),
                                       ((9, 5), (70, 72)), ((6,), (48, 48))])
def test_depth_head_shapes(sizes, out):
    feats = _features(sizes)
    head = DepthHead(**DEPTH)
    params = jax.eval_shape(functools.partial(head.init, out_size=out), _key(1), feats)
    depth = jax.eval_shape(functools.partial(head.apply, out_size=out), params, feats)
    assert depth.shape == (2, *out) and depth.dtype == jnp.float32


def test_dropout_only_in_train_mode():
    feats = _features((8, 4))
    head = SemanticFPNHead(**SEG, dropout=0.5)
    params = jax.jit(head.init, static_argnames="train")(_key(0), feats, train=False)
    apply = jax.jit(head.apply, static_argnames="train")
    eval_a = apply(params, feats, train=False)  # needs no dropout rng
    eval_b = apply(params, feats, train=False)
    np.testing.assert_array_equal(eval_a, eval_b)
    train_a = apply(params, feats, train=True, rngs={"dropout": _key(1)})
    train_b = apply(params, feats, train=True, rngs={"dropout": _key(2)})
    assert not np.allclose(train_a, eval_a) and not np.allclose(train_a, train_b)


def _assert_all_grads_nonzero(grads):
    flat = jax.tree_util.tree_flatten_with_path(grads)[0]
    zero = [jax.tree_util.keystr(path) for path, g in flat if not np.any(np.asarray(g) != 0)]
    assert not zero, f"parameters with an all-zero gradient: {zero}"


def test_seg_head_fits_a_fixed_label_map_with_gradients_everywhere():
    feats = _features((15, 8, 4, 2), seed=3)  # a 120 crop: odd sizes
    labels = jnp.asarray(np.random.default_rng(4).integers(0, 3, (2, 15, 15)))  # [B, H, W]
    head = SemanticFPNHead(**SEG)
    params = jax.jit(head.init, static_argnames="train")(_key(5), feats, train=False)
    # Adam on the flattened parameter vector: the same update, a much smaller graph to compile.
    flat, unravel = ravel_pytree(params)
    tx = optax.adam(1e-2)
    opt_state = tx.init(flat)

    @jax.jit
    def step(flat, opt_state, key):
        loss, grads = jax.value_and_grad(lambda f: cross_entropy(
            head.apply(unravel(f), feats, train=True, rngs={"dropout": key}), labels))(flat)
        updates, opt_state = tx.update(grads, opt_state, flat)
        return optax.apply_updates(flat, updates), opt_state, loss, grads

    flat, opt_state, first, grads = step(flat, opt_state, _key(100))
    _assert_all_grads_nonzero(unravel(grads))
    for i in range(1, 100):
        flat, opt_state, loss, _ = step(flat, opt_state, _key(100 + i))
    params = unravel(flat)
    logits = jax.jit(head.apply, static_argnames="train")(params, feats, train=False)
    assert logits.shape == (2, 15, 15, 3)
    accuracy = float(jnp.mean(jnp.argmax(logits, axis=-1) == labels))
    assert accuracy > 0.95, (accuracy, float(first), float(loss))
    assert float(loss) < 0.2 * float(first), (float(first), float(loss))


def test_depth_head_range_and_gradients_everywhere():
    feats = _features((15, 8, 4, 2))  # a 120 crop: odd sizes
    head = DepthHead(**DEPTH)
    params = jax.jit(head.init, static_argnums=2)(_key(0), feats, (120, 120))
    gt = jnp.asarray(np.random.default_rng(2).uniform(0.5, 9.5, (2, 120, 120)), jnp.float32)

    def loss_fn(p):
        depth = head.apply(p, feats, (120, 120))  # [B, H, W]
        return silog(depth, gt), depth

    grads, depth = jax.jit(jax.grad(loss_fn, has_aux=True))(params)
    depth = np.asarray(depth)
    assert depth.shape == (2, 120, 120) and depth.dtype == np.float32
    assert np.all(depth > 0) and np.all(depth < 10.0) and depth.std() > 0
    _assert_all_grads_nonzero(grads)


def test_heads_reject_bad_input():
    head = SemanticFPNHead(**SEG)
    with pytest.raises(ValueError, match="at least one"):
        head.init(_key(0), [], train=False)
    with pytest.raises(ValueError, match="same B"):
        head.init(_key(0), [jnp.zeros((2, 8, 8, 4)), jnp.zeros((1, 4, 4, 4))],
                  train=False)
    with pytest.raises(ValueError, match="divisible by groups"):
        SemanticFPNHead(num_classes=3, head_channels=10, groups=4).init(
            _key(0), _features((8, 4)), train=False)
