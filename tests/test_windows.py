"""Evaluation protocols against NumPy transcriptions of mmseg's ``slide_inference`` /
``aug_test`` and VPD's NYUv2 ``test.py``, with conv-free dummy predictors; and the
visualisation writers."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from iedp_jax.data import transforms
from iedp_jax.eval.windows import (
    depth_windows,
    eval_resize_hw,
    flip_width,
    pad_windows,
    segmentation_pass,
    slide_grid,
    slide_inference,
)
from iedp_jax.infra import visualize
from iedp_jax.sd.layers import resize_bilinear, resize_region
from tests.reference.protocols import (
    blocky_image,
    depth_dummy,
    np_aug_test,
    np_resize,
    np_slide_inference,
    np_softmax,
    np_vpd_depth,
    onehot_colour,
    pooled,
)


def canvas_batch(images, crop, stride, canvas, k=None):
    """Images padded into one canvas, with their windows (the evaluator's host-side work)."""
    imgs = np.zeros((len(images), *canvas, 3), np.uint8)
    for i, im in enumerate(images):
        imgs[i, : im.shape[0], : im.shape[1]] = im
    offsets, valid = pad_windows([slide_grid(im.shape[:2], crop, stride) for im in images], k)
    hw = np.array([im.shape[:2] for im in images], np.int32)
    return jnp.asarray(imgs), jnp.asarray(hw), jnp.asarray(offsets), jnp.asarray(valid)


# ----------------------------------------------------------------------------- host helpers


def test_slide_grid_is_mmseg_grid_with_clamped_last_window():
    assert slide_grid((512, 683), (512, 512), (341, 341)).tolist() == [[0, 0], [0, 171]]   # ADE 4:3
    assert slide_grid((512, 512), (512, 512), (341, 341)).tolist() == [[0, 0]]
    assert slide_grid((100, 160), (64, 64), (43, 43)).tolist() == [
        [0, 0], [0, 43], [0, 86], [0, 96], [36, 0], [36, 43], [36, 86], [36, 96]]
    assert slide_grid((40, 50), (64, 64), (43, 43)).tolist() == [[0, 0]]   # smaller than the crop
    # NYUv2: VPD's two 480-wide windows at x = 0 and 640 - 480 = 160 (stride 160, or the 2/3 default)
    assert slide_grid((480, 640), (480, 480), (160, 160)).tolist() == [[0, 0], [0, 160]]
    assert slide_grid((480, 640), (480, 480), (320, 320)).tolist() == [[0, 0], [0, 160]]
    offsets, valid = pad_windows([slide_grid((100, 160), 64, 43), slide_grid((64, 64), 64, 43)], 10)
    assert offsets.shape == (2, 10, 2) and valid.sum(1).tolist() == [8, 1]
    with pytest.raises(ValueError, match="max_windows"):
        pad_windows([slide_grid((100, 160), 64, 43)], 4)


def test_eval_resize_is_mmseg_test_resize():
    assert eval_resize_hw((480, 640), (2048, 512)) == (512, 683)
    assert eval_resize_hw((1000, 500), (2048, 512)) == (1024, 512)
    assert eval_resize_hw((300, 3000), (2048, 512)) == (205, 2048)       # long side capped
    assert eval_resize_hw((480, 640), (2048, 512), 1.5) == (768, 1024)   # (3072, 768)


# ----------------------------------------------------------------------------- device functions


def test_resize_region_matches_resize_bilinear_and_pytorch_reference():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(2, 20, 30, 3)).astype(np.float32))
    resize = jax.jit(resize_region, static_argnums=3)
    full = resize(x, jnp.array([[20, 30], [20, 30]]), jnp.array([[37, 11], [37, 11]]), (37, 11))
    np.testing.assert_allclose(full, jax.jit(resize_bilinear, static_argnums=1)(x, (37, 11)), rtol=1e-5, atol=1e-5)
    # regions of different sizes inside one static canvas, up- and down-sampling
    out = resize(x, jnp.array([[13, 30], [20, 17]]), jnp.array([[40, 9], [7, 25]]), (40, 25))
    x = np.asarray(x)
    np.testing.assert_allclose(out[0, :40, :9], np_resize(x[0, :13, :30], (40, 9)), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out[1, :7, :25], np_resize(x[1, :20, :17], (7, 25)), rtol=1e-5, atol=1e-5)
    # same size: the identity, bit for bit
    same = resize(jnp.asarray(x), jnp.array([[20, 30]] * 2), jnp.array([[20, 30]] * 2), (20, 30))
    np.testing.assert_array_equal(same, x)


def test_flip_width_mirrors_only_the_image_region():
    x = jnp.arange(2 * 1 * 5).reshape(2, 1, 5, 1)
    flip = jax.jit(flip_width)
    out = flip(x, jnp.array([3, 5]))
    assert out[0, 0, :, 0].tolist() == [2, 1, 0, 3, 4] and out[1, 0, :, 0].tolist() == [9, 8, 7, 6, 5]
    out = flip(x, jnp.array([3, 5]), jnp.array([False, True]))
    assert out[0, 0, :, 0].tolist() == [0, 1, 2, 3, 4] and out[1, 0, :, 0].tolist() == [9, 8, 7, 6, 5]


def test_one_window_equals_single_inference_exactly():
    rng = np.random.default_rng(1)
    image, _ = blocky_image(rng, 64, 64)
    images, hw, offsets, valid = canvas_batch([image], (64, 64), (43, 43), (64, 64))
    window_fn = lambda w: resize_bilinear(pooled(w), (64, 64))  # noqa: E731
    canvas = jax.jit(lambda *a: slide_inference(window_fn, *a, crop=(64, 64)))(images, offsets, valid)
    direct = jax.jit(window_fn)(images)
    np.testing.assert_array_equal(canvas, direct)
    probs = jax.jit(lambda *a: segmentation_pass(pooled, *a, flip=False, label_hw=hw, label_size=(64, 64),
                                                 crop=(64, 64)))(images, hw, offsets, valid)
    np.testing.assert_allclose(probs, jax.nn.softmax(direct, -1), rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(jnp.argmax(probs, -1), jnp.argmax(direct, -1))


def test_sliding_canvas_equals_mmseg_transcription():
    """Two images of different sizes in one padded canvas, windows padded to K = 10 with a mask;
    the 100x160 image has 2 x 4 windows, its last row and column clamped to the image end."""
    rng = np.random.default_rng(2)
    a, _ = blocky_image(rng, 100, 160)
    b, _ = blocky_image(rng, 64, 72)
    crop, stride = (64, 64), (43, 43)
    images, hw, offsets, valid = canvas_batch([a, b], crop, stride, (112, 176), k=10)
    window_fn = lambda w: resize_bilinear(pooled(w), crop)  # noqa: E731
    canvas = np.asarray(jax.jit(lambda *x: slide_inference(window_fn, *x, crop=crop))(images, offsets, valid))
    np.testing.assert_allclose(canvas[0, :100, :160], np_slide_inference(a, crop, stride, pooled), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(canvas[1, :64, :72], np_slide_inference(b, crop, stride, pooled), rtol=1e-5, atol=1e-5)
    assert (canvas[0, 100:] == 0).all() and (canvas[1, :, 72:] == 0).all()   # padding: no window
    # and at the label size (bilinear back to 75x130 and 50x50), softmax
    label_hw = jnp.array([[75, 130], [50, 50]])
    run = jax.jit(lambda *x: segmentation_pass(pooled, *x, flip=False, label_hw=label_hw, label_size=(80, 130),
                                               crop=crop))
    probs = np.asarray(run(images, hw, offsets, valid))
    ref = np_softmax(np_resize(np_slide_inference(a, crop, stride, pooled), (75, 130)))
    np.testing.assert_allclose(probs[0, :75, :130], ref, rtol=1e-5, atol=1e-5)


def _aug(images_by_scale, flip, crop, label_hw, label_size, predict=pooled):
    """Our multi-scale + flip: the mean of segmentation_pass over (scale, flip)."""
    f = jax.jit(lambda im, hw, off, val, fl: segmentation_pass(predict, im, hw, off, val, fl, label_hw,
                                                               label_size, crop))
    out = [f(*batch, jnp.bool_(fl)) for batch in images_by_scale for fl in ((False, True) if flip else (False,))]
    return np.asarray(sum(out) / len(out))


def test_multiscale_flip_equals_mmseg_aug_test_transcription():
    rng = np.random.default_rng(3)
    image, _ = blocky_image(rng, 60, 84)
    crop, stride, img_scale, ratios = (32, 32), (21, 21), (128, 32), (1.0, 1.25, 1.5)
    per_scale = []
    for r in ratios:
        resized = transforms.resize_image(image, eval_resize_hw(image.shape[:2], img_scale, r))
        per_scale.append(canvas_batch([resized], crop, stride, (resized.shape[0] + 8, resized.shape[1] + 16), k=12))
    ours = _aug(per_scale, True, crop, jnp.array([[60, 84]]), (64, 96))
    ref = np_aug_test(image, crop, stride, img_scale, ratios, True, pooled)
    np.testing.assert_allclose(ours[0, :60, :84], ref, rtol=1e-5, atol=1e-5)
    # the flipped passes matter here (8x8 pooling on an odd-width image is not flip-equivariant)
    no_flip = np_aug_test(image, crop, stride, img_scale, ratios, False, pooled)
    assert np.abs(no_flip - ref).max() > 1e-3


def test_multiscale_flip_with_flip_equivariant_dummy_equals_single_scale():
    rng = np.random.default_rng(4)
    image, label = blocky_image(rng, 64, 96)
    crop, stride, img_scale = (32, 32), (21, 21), (128, 32)
    label_hw = jnp.array([[64, 96]])

    def scale_batch(r):
        resized = transforms.resize_image(image, eval_resize_hw(image.shape[:2], img_scale, r))
        return canvas_batch([resized], crop, stride, resized.shape[:2])

    single = _aug([scale_batch(1.0)], False, crop, label_hw, (64, 96), onehot_colour)
    flipped = _aug([scale_batch(1.0)], True, crop, label_hw, (64, 96), onehot_colour)
    np.testing.assert_allclose(flipped, single, rtol=1e-5, atol=1e-6)        # flip changes nothing
    multi = _aug([scale_batch(r) for r in (1.0, 1.25, 1.5)], True, crop, label_hw, (64, 96), onehot_colour)
    assert (multi.argmax(-1) == single.argmax(-1)).mean() > 0.98               # only block edges may move
    assert (single.argmax(-1)[0] == label).mean() > 0.99


def test_depth_two_windows_and_flip_equal_vpd_transcription():
    rng = np.random.default_rng(5)
    image = rng.integers(0, 256, (2, 48, 64, 3), dtype=np.uint8)
    crop = (48, 48)
    offsets, valid = pad_windows([slide_grid((48, 64), crop, (16, 16))] * 2)
    assert offsets[0].tolist() == [[0, 0], [0, 16]]
    for flip in (True, False):
        ours = np.asarray(jax.jit(lambda im, o, v, f=flip: depth_windows(depth_dummy, im, o, v, crop, f))(
            jnp.asarray(image), jnp.asarray(offsets), jnp.asarray(valid)))
        for i in range(2):
            np.testing.assert_allclose(ours[i], np_vpd_depth(image[i], 48, 2, flip, depth_dummy), rtol=1e-6)
    # the real geometry: 480x640, windows at x = 0 and 160, overlap averaged
    big = rng.integers(0, 256, (1, 480, 640, 3), dtype=np.uint8)
    offsets, valid = pad_windows([slide_grid((480, 640), (480, 480), (160, 160))])
    ours = jax.jit(lambda im, o, v: depth_windows(depth_dummy, im, o, v, (480, 480), True))(
        jnp.asarray(big), jnp.asarray(offsets), jnp.asarray(valid))
    np.testing.assert_allclose(ours[0], np_vpd_depth(big[0], 480, 2, True, depth_dummy), rtol=1e-6)


# ----------------------------------------------------------------------------- visualize


def test_palette_overlay_and_segmentation_panel(tmp_path):
    assert visualize.palette(150).shape == (150, 3)
    assert visualize.ADE20K_PALETTE[0].tolist() == [120, 120, 120]
    assert visualize.ADE20K_PALETTE[149].tolist() == [92, 0, 255]
    assert len({tuple(c) for c in visualize.ADE20K_PALETTE}) >= 148
    assert visualize.palette(160).shape == (160, 3)
    image = np.full((20, 30, 3), 100, np.uint8)
    label = np.zeros((20, 30), np.uint8)
    label[:, 10:] = 2
    label[:5] = 255
    colours = visualize.palette(150)
    assert (visualize.colorize_labels(label, colours)[10, 20] == colours[2]).all()
    over = visualize.overlay_labels(image, label, colours, alpha=1.0)
    assert (over[10, 0] == colours[0]).all() and (over[10, 20] == colours[2]).all() and (over[0, 0] == 100).all()
    half = visualize.overlay_labels(image, label, colours, alpha=0.5)
    assert (half[10, 20] == np.rint(0.5 * 100 + 0.5 * colours[2].astype(float))).all()
    path = visualize.write_segmentation_panel(tmp_path / "a" / "seg.png", image, label, label, colours, alpha=1.0)
    with Image.open(path) as im:
        assert im.size == (3 * 30 + 2 * 4, 20) and im.mode == "RGB"
        arr = np.asarray(im)
    assert (arr[:, :30] == 100).all()                        # the image
    assert (arr[10, 34 + 20] == colours[2]).all()             # prediction panel in palette colours
    assert (arr[10, 68 + 0] == colours[0]).all()              # ground-truth panel
    assert (arr[:, 30:34] == 255).all()                       # white gap


def test_depth_colormap_and_panel(tmp_path):
    ramp = np.linspace(0, 1, 9, dtype=np.float32)
    np.testing.assert_array_equal(visualize.apply_colormap(ramp), visualize.VIRIDIS.astype(np.uint8))
    depth = np.tile(np.linspace(1, 5, 16, dtype=np.float32), (8, 1))
    depth[0, 0] = 0.0
    rgb = visualize.colorize_depth(depth)
    assert rgb.shape == (8, 16, 3) and (rgb[0, 0] == 0).all()
    assert (rgb[1, 0] == [68, 1, 84]).all() and (rgb[1, -1] == [253, 231, 37]).all()
    path = visualize.write_depth_panel(tmp_path / "d.png", np.zeros((8, 16, 3), np.uint8), depth, depth)
    with Image.open(path) as im:
        assert im.size == (3 * 16 + 8, 8)
