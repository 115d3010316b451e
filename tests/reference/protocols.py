"""NumPy transcriptions of the published evaluation protocols (mmseg 0.x ``slide_inference`` /
``aug_test`` as VPD runs them, VPD's NYUv2 shifted windows + flip), and the deterministic dummy
predictors and images the protocol tests feed them."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from iedp_jax.data import transforms
from iedp_jax.eval.windows import eval_resize_hw
from iedp_jax.model import IEDPConfig

C = 4
COLOURS = np.array([[200, 30, 30], [30, 200, 30], [30, 30, 200], [200, 200, 30]], np.float32)


# ----------------------------------------------------------------------------- dummies (JAX + NumPy)


def onehot_colour(x):
    """Per-pixel logits: minus the squared distance of the pixel to each class colour / 5000
    (a soft one-hot of the colour). Flip- and window-equivariant. [b, h, w, 3] -> [b, h, w, C]."""
    xp = jnp if isinstance(x, jax.Array) else np
    d = x.astype(xp.float32)[..., None, :] - COLOURS
    return -(d * d).sum(-1) / 5000.0


def pooled(x):
    """``onehot_colour`` average-pooled over 8x8 blocks: logits at 1/8 like ``IEDP.predict``."""
    f = onehot_colour(x)
    b, h, w, c = f.shape
    return f.reshape(b, h // 8, 8, w // 8, 8, c).mean(axis=(2, 4))


def depth_dummy(x):
    """Depth from the red channel plus a ramp across the window (so a flip changes it)."""
    xp = jnp if isinstance(x, jax.Array) else np
    w = x.shape[2]
    ramp = xp.arange(w, dtype=xp.float32)[None, None, :] / w
    return 0.5 + x[..., 0].astype(xp.float32) / 40.0 + ramp


# ----------------------------------------------------------------------------- NumPy references


def np_resize(x, size):
    """PyTorch ``F.interpolate(bilinear, align_corners=False)`` of ``x [h, w, C]`` (NumPy)."""
    h, w = x.shape[:2]
    ho, wo = size

    def coords(n_in, n_out):
        src = np.maximum((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0.0)
        i0 = np.floor(src).astype(int)
        i1 = np.where(i0 < n_in - 1, i0 + 1, i0)
        lam = src - i0
        return i0, i1, lam

    r0, r1, a = coords(h, ho)
    c0, c1, b = coords(w, wo)
    top = x[r0][:, c0] * (1 - b)[None, :, None] + x[r0][:, c1] * b[None, :, None]
    bot = x[r1][:, c0] * (1 - b)[None, :, None] + x[r1][:, c1] * b[None, :, None]
    return top * (1 - a)[:, None, None] + bot * a[:, None, None]


def np_slide_inference(img, crop, stride, predict):
    """mmseg 0.x ``slide_inference`` (VPD's copy), one image ``[H, W, 3]``, rescale off."""
    h_stride, w_stride = stride
    h_crop, w_crop = crop
    h_img, w_img = img.shape[:2]
    h_grids = max(h_img - h_crop + h_stride - 1, 0) // h_stride + 1
    w_grids = max(w_img - w_crop + w_stride - 1, 0) // w_stride + 1
    preds, count = None, np.zeros((h_img, w_img, 1))
    for h_idx in range(h_grids):
        for w_idx in range(w_grids):
            y1 = h_idx * h_stride
            x1 = w_idx * w_stride
            y2 = min(y1 + h_crop, h_img)
            x2 = min(x1 + w_crop, w_img)
            y1 = max(y2 - h_crop, 0)
            x1 = max(x2 - w_crop, 0)
            crop_img = img[y1:y2, x1:x2]
            logit = np_resize(predict(crop_img[None])[0].astype(np.float64), crop_img.shape[:2])
            if preds is None:
                preds = np.zeros((h_img, w_img, logit.shape[-1]))
            preds[y1:y2, x1:x2] += logit
            count[y1:y2, x1:x2] += 1
    assert (count == 0).sum() == 0
    return preds / count


def np_softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def np_aug_test(image, crop, stride, img_scale, ratios, flip, predict):
    """mmseg ``MultiScaleFlipAug`` + ``aug_test``: per (ratio, flip) resize, slide, resize to the
    original, softmax, un-flip; mean over passes. Returns probabilities [H, W, C]."""
    out = []
    for r in ratios:
        for f in ((False, True) if flip else (False,)):
            img = transforms.resize_image(image, eval_resize_hw(image.shape[:2], img_scale, r))
            if f:
                img = img[:, ::-1]
            logit = np_resize(np_slide_inference(img, crop, stride, predict), image.shape[:2])
            p = np_softmax(logit)
            out.append(p[:, ::-1] if f else p)
    return np.mean(out, axis=0)


def np_vpd_depth(image, crop_w, shift_size, flip, predict):
    """VPD ``depth/test.py`` with ``--shift_window_test --flip_test`` on one [H, W, 3] image."""
    h, w = image.shape[:2]
    interval = (w - crop_w) // (shift_size - 1)
    wins = np.stack([image[:, i * interval:i * interval + crop_w] for i in range(shift_size)])
    masks = np.zeros((h, w))
    for i in range(shift_size):
        masks[:, i * interval:i * interval + crop_w] += 1
    batch = np.concatenate([wins, wins[:, :, ::-1]]) if flip else wins
    pred = predict(batch).astype(np.float64)
    if flip:
        pred = (pred[:shift_size] + pred[shift_size:, :, ::-1]) / 2.0
    out = np.zeros((h, w))
    for i in range(shift_size):
        out[:, i * interval:i * interval + crop_w] += pred[i]
    return out / masks


def blocky_image(rng, h, w, block=16):
    tiles = rng.integers(0, C, (-(-h // block), -(-w // block)))
    label = np.kron(tiles, np.ones((block, block), np.int64))[:h, :w]
    return np.clip(COLOURS[label] + rng.normal(0, 8, (h, w, 3)), 0, 255).astype(np.uint8), label


@dataclasses.dataclass(frozen=True)
class DummyModel:
    """Stands in for ``IEDP``: ``predict(params, frozen, images, scenes)`` and ``config``."""

    config: IEDPConfig
    fn: Callable

    def predict(self, params, frozen, images, scenes=None):
        del scenes  # read only by VPD's depth context
        return self.fn(images) * params["scale"]


def seg150(x):
    """``pooled`` colour logits for classes 0-3, a low constant for the other 146."""
    f = pooled(x)
    xp = jnp if isinstance(f, jax.Array) else np
    return xp.concatenate([f, xp.full(f.shape[:3] + (146,), -30.0, f.dtype)], axis=-1)
